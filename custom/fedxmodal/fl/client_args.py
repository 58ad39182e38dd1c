"""The knobs of a job as a site script's arguments: the job builder writes them with
:func:`format_client_args`, the script reads them back with :func:`parse_client_args`.

Host side (job building) and site side (the scripts) share this module; it imports nothing of
NVFlare or torch.
"""

from __future__ import annotations

import json
import sys
from typing import Any, Mapping, Optional, Sequence

__all__ = ["format_client_args", "parse_client_args"]


def format_client_args(args: Mapping[str, Any]) -> str:
    """``{"local_epochs": 1, "structures": ["liver"]}`` -> ``--local_epochs=1 --structures='["liver"]'``.

    Values are compact JSON. NVFlare splits in-process script arguments on whitespace (quotes
    kept) and external-process ones POSIX-style (quotes removed); the single quotes around values
    containing ``"`` survive both and :func:`parse_client_args` strips them. Strings with
    whitespace or single quotes cannot be passed.
    """
    parts = []
    for key, value in args.items():
        if not isinstance(key, str) or not key.replace("_", "").replace("-", "").isalnum():
            raise ValueError(f"invalid client arg name: {key!r}")
        text = json.dumps(value, separators=(",", ":"), sort_keys=True)
        if isinstance(value, str) and not any(c in value for c in "\"\\"):
            text = value  # plain strings unquoted: --modality=CT
        if any(c.isspace() for c in text) or "'" in text:
            raise ValueError(f"client arg {key}={text}: values may not contain whitespace or single quotes")
        if '"' in text or "\\" in text:
            text = f"'{text}'"
        parts.append(f"--{key}={text}")
    return " ".join(parts)


def _decode_value(text: str) -> Any:
    if len(text) >= 2 and text[0] == text[-1] == "'":
        text = text[1:-1]
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_client_args(argv: Optional[Sequence[str]] = None, defaults: Optional[Mapping[str, Any]] = None) -> dict:
    """Read the ``--key=value`` (or ``--key value``) arguments into a dict; values JSON-decoded.

    ``argv`` defaults to ``sys.argv[1:]``. Keys keep their spelling (``--local_epochs`` ->
    ``"local_epochs"``). ``defaults`` fill keys that are absent.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    out = dict(defaults or {})
    i = 0
    while i < len(argv):
        token = argv[i]
        if not token.startswith("--"):
            raise ValueError(f"unexpected client argument {token!r} (expected --key=value)")
        if "=" in token:
            key, text = token[2:].split("=", 1)
        elif i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            key, text = token[2:], argv[i + 1]
            i += 1
        else:
            key, text = token[2:], "true"
        out[key] = _decode_value(text)
        i += 1
    return out
