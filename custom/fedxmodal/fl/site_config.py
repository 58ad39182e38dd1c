"""Where a site finds its data: the site's OWN configuration, never a path written into the job.

A job is the same bytes at every site, so it cannot know where a hospital keeps its files. Each
site therefore says where its data is, through one of these (first hit wins):

1. ``FEDXMODAL_SITE_DIR_<SITE>`` -- environment variable naming the site folder (the folder that
   holds ``dataset.json``, see docs/data-contract.md). ``<SITE>`` is the site name upper-cased with
   every run of non-alphanumeric characters replaced by ``_``: ``ct-site`` -> ``FEDXMODAL_SITE_DIR_CT_SITE``.
2. ``FEDXMODAL_SITE_CONFIG`` -- environment variable naming a JSON file (format below).
3. ``<site workspace>/local/fedxmodal_site.json`` -- a JSON file in the site's NVFlare workspace
   ``local/`` folder (a provisioned site's private configuration; jobs never overwrite it; the
   simulator copies ``<simulator workspace>/local/`` into every simulated site's ``local/``).
4. ``FEDXMODAL_DATA_ROOT`` -- environment variable naming a folder with one sub-folder per site,
   ``<root>/<site-name>/`` (handy for the simulator, where all sites share one machine).

The JSON file holds either one site, ``{"data_dir": "/data/ct"}``, or several,
``{"sites": {"ct-site": {"data_dir": "/data/ct"}, "mr-site": {"data_dir": "/data/mr"}}}``.
A relative ``data_dir`` is relative to the JSON file. Any other keys of the site's entry are
returned in :attr:`SiteConfig.extra` (site-local knobs, e.g. ``num_threads``).

If nothing is configured, :func:`resolve_site_config` raises :class:`SiteNotConfiguredError`,
whose message names the site and lists every place that was looked at.
"""

from __future__ import annotations

import json
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional, Sequence

ENV_SITE_DIR_PREFIX = "FEDXMODAL_SITE_DIR_"
ENV_SITE_CONFIG = "FEDXMODAL_SITE_CONFIG"
ENV_DATA_ROOT = "FEDXMODAL_DATA_ROOT"
ENV_SITE_WORKSPACE = "FEDXMODAL_SITE_WORKSPACE"
SITE_CONFIG_FILENAME = "fedxmodal_site.json"
DATASET_FILENAME = "dataset.json"

__all__ = [
    "SiteConfig",
    "SiteNotConfiguredError",
    "env_var_for_site",
    "find_site_workspace",
    "normalise_site_name",
    "resolve_site_config",
    "resolve_site_data_dir",
]


class SiteNotConfiguredError(RuntimeError):
    """No (valid) data location is configured for a site."""


@dataclass(frozen=True)
class SiteConfig:
    """A site's local configuration: where its data is and where that came from."""

    site_name: str
    data_dir: Path
    source: str
    extra: dict = field(default_factory=dict)


def normalise_site_name(site_name: str) -> str:
    """``ct-site`` -> ``CT_SITE`` (upper case, runs of non-alphanumerics -> ``_``)."""
    return re.sub(r"[^A-Za-z0-9]+", "_", site_name).strip("_").upper()


def env_var_for_site(site_name: str) -> str:
    """The per-site environment variable, e.g. ``FEDXMODAL_SITE_DIR_CT_SITE``."""
    return ENV_SITE_DIR_PREFIX + normalise_site_name(site_name)


def _is_site_workspace(path: Path) -> bool:
    return (path / "local").is_dir() and (path / "startup").is_dir()


def find_site_workspace(start_dirs: Optional[Sequence[os.PathLike]] = None, environ=None) -> Optional[Path]:
    """The site's NVFlare workspace root (the folder holding ``local/`` and ``startup/``), or None.

    ``FEDXMODAL_SITE_WORKSPACE`` wins; otherwise the current directory, the running script
    (``sys.argv[0]``, which NVFlare sets to ``<workspace>/<job>/app_<site>/custom/<script>``) and
    ``start_dirs`` are searched upwards.
    """
    environ = os.environ if environ is None else environ
    if environ.get(ENV_SITE_WORKSPACE):
        return Path(environ[ENV_SITE_WORKSPACE]).expanduser()
    candidates = [Path(p) for p in (start_dirs or [])]
    candidates.append(Path.cwd())
    if sys.argv and sys.argv[0]:
        candidates.append(Path(sys.argv[0]).resolve().parent)
    for start in candidates:
        start = start.resolve()
        for path in [start, *start.parents][:6]:
            if _is_site_workspace(path):
                return path
    return None


def _entry_from_json(path: Path, site_name: str) -> Optional[dict]:
    """The site's entry of a fedxmodal site JSON file (None if the file has no entry for it)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise SiteNotConfiguredError(f"site '{site_name}': cannot read site config file {path}: {e}") from e
    if not isinstance(data, dict):
        raise SiteNotConfiguredError(f"site '{site_name}': {path} must hold a JSON object")
    if "sites" in data:
        sites = data["sites"]
        entry = sites.get(site_name)
        if entry is None:  # also accept the normalised spelling
            norm = normalise_site_name(site_name)
            entry = next((v for k, v in sites.items() if normalise_site_name(k) == norm), None)
        if entry is None:
            return None
        if isinstance(entry, str):
            entry = {"data_dir": entry}
    else:
        entry = data
    if not isinstance(entry, dict) or not entry.get("data_dir"):
        raise SiteNotConfiguredError(f"site '{site_name}': the entry in {path} has no \"data_dir\"")
    entry = dict(entry)
    data_dir = Path(os.path.expandvars(str(entry.pop("data_dir")))).expanduser()
    if not data_dir.is_absolute():
        data_dir = path.parent / data_dir
    entry["data_dir"] = data_dir
    return entry


def resolve_site_config(
    site_name: str,
    *,
    workspace_dir: Optional[os.PathLike] = None,
    environ: Optional[Mapping[str, str]] = None,
    require_file: Optional[str] = DATASET_FILENAME,
) -> SiteConfig:
    """Find ``site_name``'s data folder from the site's own configuration (see the module doc).

    Args:
        site_name: the NVFlare site name (``flare.get_site_name()``).
        workspace_dir: the site's NVFlare workspace root; found with :func:`find_site_workspace`
            when None.
        environ: environment to read (default ``os.environ``).
        require_file: a file the data folder must contain (default ``dataset.json``); None to skip.

    Raises:
        SiteNotConfiguredError: nothing is configured for the site, or the configured folder is
            missing or lacks ``require_file``. The message names the site and what was checked.
    """
    environ = os.environ if environ is None else environ
    checked = []
    found: Optional[tuple] = None  # (data_dir, source, extra)

    var = env_var_for_site(site_name)
    if environ.get(var):
        found = (Path(environ[var]).expanduser(), f"${var}", {})
    else:
        checked.append(f"${var} (not set)")

    if found is None:
        if environ.get(ENV_SITE_CONFIG):
            path = Path(environ[ENV_SITE_CONFIG]).expanduser()
            entry = _entry_from_json(path, site_name)
            if entry is not None:
                found = (entry.pop("data_dir"), f"${ENV_SITE_CONFIG}={path}", entry)
            else:
                checked.append(f"${ENV_SITE_CONFIG}={path} (no entry for '{site_name}' under \"sites\")")
        else:
            checked.append(f"${ENV_SITE_CONFIG} (not set)")

    if found is None:
        ws = Path(workspace_dir) if workspace_dir is not None else find_site_workspace(environ=environ)
        if ws is not None:
            path = ws / "local" / SITE_CONFIG_FILENAME
            if path.is_file():
                entry = _entry_from_json(path, site_name)
                if entry is not None:
                    found = (entry.pop("data_dir"), str(path), entry)
                else:
                    checked.append(f"{path} (no entry for '{site_name}' under \"sites\")")
            else:
                checked.append(f"{path} (no such file)")
        else:
            checked.append(f"<site workspace>/local/{SITE_CONFIG_FILENAME} (no site workspace found)")

    if found is None:
        if environ.get(ENV_DATA_ROOT):
            root = Path(environ[ENV_DATA_ROOT]).expanduser()
            found = (root / site_name, f"${ENV_DATA_ROOT}={root}", {})
        else:
            checked.append(f"${ENV_DATA_ROOT} (not set)")

    if found is None:
        raise SiteNotConfiguredError(
            f"No data is configured for site '{site_name}'. Configure it at the site (never in the job), "
            f"with one of: {var}=/path/to/site-folder; {ENV_DATA_ROOT}=/root holding '{site_name}/'; "
            f"{ENV_SITE_CONFIG}=/path/to/file.json; or <site workspace>/local/{SITE_CONFIG_FILENAME} "
            f'containing {{"data_dir": "/path/to/site-folder"}}. Checked: ' + "; ".join(checked)
        )

    data_dir, source, extra = found
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise SiteNotConfiguredError(
            f"Site '{site_name}': the data folder {data_dir} (from {source}) does not exist or is not a folder."
        )
    if require_file and not (data_dir / require_file).is_file():
        raise SiteNotConfiguredError(
            f"Site '{site_name}': the data folder {data_dir} (from {source}) has no {require_file}."
        )
    return SiteConfig(site_name=site_name, data_dir=data_dir.resolve(), source=source, extra=extra)


def resolve_site_data_dir(site_name: str, **kwargs) -> Path:
    """Shortcut for ``resolve_site_config(site_name, **kwargs).data_dir``."""
    return resolve_site_config(site_name, **kwargs).data_dir
