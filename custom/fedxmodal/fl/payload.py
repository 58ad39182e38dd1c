"""What a value sent by a site is, without reading its content: array or not, shape, dtype kind,
size in bytes, scalar or not, a short description for a log line. The output guard
(:mod:`fedxmodal.fl.guard`) and the guarded TensorBoard stream (:mod:`fedxmodal.fl.analytics`)
judge a site's results with these."""

from __future__ import annotations

import numbers
from typing import Mapping, Optional, Sequence, Tuple

import numpy as np

__all__ = ["NUMERIC_KINDS", "describe_value", "dtype_kind", "is_array", "is_scalar", "nbytes", "payload_bytes",
           "shape_matches", "shape_of", "small_plain"]

NUMERIC_KINDS = "fiub"


def is_array(v) -> bool:
    return isinstance(v, np.ndarray) or (hasattr(v, "shape") and hasattr(v, "dtype") and hasattr(v, "numel"))


def shape_of(v) -> Tuple[int, ...]:
    return tuple(int(d) for d in v.shape)


def dtype_kind(v) -> str:
    if isinstance(v, np.ndarray):
        return v.dtype.kind
    name = str(v.dtype).replace("torch.", "")
    if name == "bool":
        return "b"
    if name.startswith("float") or name.startswith("bfloat") or name in ("half", "double"):
        return "f"
    if name.startswith("complex"):
        return "c"
    if name.startswith("uint"):
        return "u"
    if name.startswith("int") or name == "long":
        return "i"
    return "O"


def nbytes(v) -> int:
    if isinstance(v, np.ndarray):
        return int(v.nbytes)
    return int(v.numel() * v.element_size())


def describe_value(v) -> str:
    """A short description of a value for a log line: type, dtype and shape -- never its content."""
    if is_array(v):
        return f"{str(v.dtype).replace('torch.', '')} array of shape {shape_of(v)}"
    if isinstance(v, Mapping):
        return f"mapping with {len(v)} entries"
    if isinstance(v, (list, tuple)):
        return f"{type(v).__name__} of length {len(v)}"
    if isinstance(v, (str, bytes)):
        return f"{type(v).__name__} of length {len(v)}"
    return type(v).__name__


def payload_bytes(obj) -> int:
    """Bytes of all arrays (and byte strings) inside ``obj`` (nested dicts/lists): the payload size."""
    if is_array(obj):
        return nbytes(obj)
    if isinstance(obj, (bytes, bytearray)):
        return len(obj)
    if isinstance(obj, Mapping):
        return sum(payload_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(payload_bytes(v) for v in obj)
    return 0


def is_scalar(v) -> bool:
    if isinstance(v, bool):
        return True
    if isinstance(v, numbers.Number) and not isinstance(v, complex):
        return True
    if isinstance(v, np.generic):
        return v.dtype.kind in NUMERIC_KINDS
    if is_array(v):
        return int(np.prod(shape_of(v))) == 1 and len(shape_of(v)) <= 1 and dtype_kind(v) in NUMERIC_KINDS
    return False


def small_plain(v, depth: int = 0) -> bool:
    """Scalars, short strings, None, and small dicts/lists of them (bookkeeping meta)."""
    if v is None or is_scalar(v):
        return True
    if isinstance(v, str):
        return len(v) <= 256
    if depth >= 2:
        return False
    if isinstance(v, Mapping):
        return len(v) <= 64 and all(isinstance(k, str) and small_plain(x, depth + 1) for k, x in v.items())
    if isinstance(v, (list, tuple)):
        return len(v) <= 64 and all(small_plain(x, depth + 1) for x in v)
    return False


def shape_matches(declared: Sequence[Optional[int]], actual: Tuple[int, ...]) -> bool:
    return len(declared) == len(actual) and all(d is None or int(d) == a for d, a in zip(declared, actual))
