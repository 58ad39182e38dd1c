"""fedxmodal: federated cross-modality (CT/MR) segmentation for NVIDIA FLARE.

Organised by concern, the way MONAI is: ``data`` (site contract, I/O, preprocessing, phantom,
converters), ``transforms`` (augmentations), ``networks``, ``losses``, ``metrics``, ``engine``
(the one training loop), ``fl`` (NVFlare site and server components) and ``apps`` (CLI commands).
"""

__version__ = "0.1.0"
