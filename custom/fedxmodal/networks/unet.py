"""The 2D segmentation network: MONAI's residual U-Net."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from monai.networks.nets import UNet


@dataclass(frozen=True)
class UNetConfig:
    channels: tuple[int, ...] = (16, 32, 64, 128, 256)
    strides: tuple[int, ...] = (2, 2, 2, 2)
    num_res_units: int = 2
    norm: str = "batch"
    dropout: float = 0.0

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
    return UNet(spatial_dims=2, in_channels=in_channels, out_channels=n_structures + 1,
                channels=c.channels, strides=c.strides, num_res_units=c.num_res_units,
                norm=c.norm, dropout=c.dropout)
