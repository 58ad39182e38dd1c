"""Converters from public data sets to site folders split by modality (docs/data-contract.md).

Each returns ``{site_name: site_dir}`` of the site folders it wrote:

* :func:`convert_amos` -- AMOS22 -> ``amos-ct``, ``amos-mr`` (references or symlinks the NIfTI files)
* :func:`convert_chaos` -- CHAOS DICOM + PNG -> ``chaos-ct``, ``chaos-mr`` (writes NIfTI)
* :func:`convert_totalseg` -- TotalSegmentator layout -> ``totalseg-ct`` / ``totalseg-mr``
"""

from .amos import convert_amos
from .chaos import convert_chaos
from .totalseg import convert_totalseg

__all__ = ["convert_amos", "convert_chaos", "convert_totalseg"]
