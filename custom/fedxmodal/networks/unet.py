"""The 2D segmentation network: MONAI's residual U-Net."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from monai.networks.nets import UNet

from .domain_norm import convert_to_multibranch


@dataclass(frozen=True)
class UNetConfig:
    """Default sized for 2-core CPU sites (~0.2 M parameters); GPU sites can widen it in the job,
    e.g. channels (32, 64, 128, 256, 512), strides (2, 2, 2, 2), num_res_units 2."""

    channels: tuple[int, ...] = (16, 32, 64, 128)
    strides: tuple[int, ...] = (2, 2, 2)
    num_res_units: int = 1
    norm: str = "batch"
    dropout: float = 0.0
    norm_branches: int = 1  # >1: every BatchNorm gets that many branches (DSBN, Dual-Norm)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict | None) -> "UNetConfig":
        d = dict(d or {})
        for k in ("channels", "strides"):
            if k in d:
                d[k] = tuple(d[k])
        return cls(**d)


def build_unet(n_structures: int, config: UNetConfig | None = None, in_channels: int = 1) -> UNet:
    """(B, in_channels, H, W) -> (B, n_structures + 1, H, W) logits; H, W divisible by 2**len(strides)."""
    c = config or UNetConfig()
    net = UNet(spatial_dims=2, in_channels=in_channels, out_channels=n_structures + 1,
               channels=c.channels, strides=c.strides, num_res_units=c.num_res_units,
               norm=c.norm, dropout=c.dropout)
    return convert_to_multibranch(net, c.norm_branches)


class SegmentationUNet(UNet):
    """``build_unet`` as a class with plain keyword arguments, so that an NVFlare server can build
    the initial global model from the job config (every argument kept as a same-named attribute,
    which NVFlare's exporter needs). Same state-dict keys as ``build_unet``'s network.
    ``init_seed`` fixes the initial weights (the server process is otherwise unseeded) without
    touching the caller's random state; ``None`` draws them from the global RNG."""

    def __init__(self, n_structures: int, channels=(16, 32, 64, 128), strides=(2, 2, 2), num_res_units: int = 1,
                 norm: str = "batch", dropout: float = 0.0, norm_branches: int = 1, init_seed: int | None = 0):
        with torch.random.fork_rng(devices=[]):
            if init_seed is not None:
                torch.manual_seed(init_seed)
            super().__init__(spatial_dims=2, in_channels=1, out_channels=n_structures + 1, channels=tuple(channels),
                             strides=tuple(strides), num_res_units=num_res_units, norm=norm, dropout=dropout)
            convert_to_multibranch(self, norm_branches)
        self.norm_branches = norm_branches
        self.init_seed = init_seed
        self.n_structures = n_structures
        self.channels = tuple(channels)
        self.strides = tuple(strides)
        self.num_res_units = num_res_units
        self.norm = norm
        self.dropout = dropout


# The job's model spec {"path", "args"}: the server builds the initial global model from it (the
# SegmentationUNet arguments) and the sites receive the same dict; this is the one translation to a
# UNetConfig.
_JOB_ONLY_ARGS = ("n_structures", "init_seed")


def config_from_job_model(model_spec: dict, n_structures: int | None = None) -> UNetConfig:
    """The :class:`UNetConfig` of a job's model spec; checks its output count against ``n_structures``."""
    args = dict((model_spec or {}).get("args") or {})
    declared = args.get("n_structures", n_structures)
    if n_structures is not None and declared != n_structures:
        raise ValueError(f"job model has {declared} outputs for {n_structures} structures")
    return UNetConfig.from_dict({k: v for k, v in args.items() if k not in _JOB_ONLY_ARGS})


# ---- the encoder path of MONAI's UNet (FedDA's feature taps) -------------------------------------
# MONAI builds ``net.model`` as nested ``Sequential(down, SkipConnection(sub), up)`` blocks; the
# innermost ``sub`` is the bottom layer (``UNet._get_bottom_layer``: channels[-2] -> channels[-1]
# at stride 1, on the coarsest grid). "The bottleneck" here is that bottom layer's output; the
# encoder is every block on the path to it (the down blocks, then the bottom layer).

def encoder_blocks(net) -> list:
    """The encoder's blocks of a MONAI ``UNet`` in forward order: [down_0, ..., down_{k-1}, bottom]."""
    from monai.networks.layers.simplelayers import SkipConnection

    blocks, seq = [], getattr(net, "model", None)
    while True:
        if not (isinstance(seq, torch.nn.Sequential) and len(seq) == 3 and isinstance(seq[1], SkipConnection)):
            raise ValueError("not a MONAI UNet block structure (Sequential(down, SkipConnection, up))")
        blocks.append(seq[0])
        sub = seq[1].submodule
        if isinstance(sub, torch.nn.Sequential) and len(sub) == 3 and isinstance(sub[1], SkipConnection):
            seq = sub
            continue
        blocks.append(sub)  # the bottom layer
        return blocks


def encoder_taps(net, aux: bool = False) -> list:
    """The tapped modules: the bottleneck (bottom layer) and, with ``aux``, the block before it
    (the deepest down block: one level shallower)."""
    blocks = encoder_blocks(net)
    return [blocks[-1]] + ([blocks[-2]] if aux and len(blocks) > 1 else [])


def encoder_parameter_names(net) -> set:
    """Names (as in ``net.named_parameters()``) of every parameter on the path to the bottleneck."""
    ids = {id(p) for block in encoder_blocks(net) for p in block.parameters()}
    return {name for name, p in net.named_parameters() if id(p) in ids}


def encoder_features(net, x: torch.Tensor, aux: bool = False) -> list:
    """Run only the encoder path: [bottleneck features] (+ [aux features]); the decoder is skipped."""
    blocks = encoder_blocks(net)
    outs = []
    for block in blocks:
        x = block(x)
        outs.append(x)
    return [outs[-1]] + ([outs[-2]] if aux and len(outs) > 1 else [])
