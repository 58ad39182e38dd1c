"""A conditional StyleGAN2-lite generator, scaled for CPU sites (64 px default, 128 px option).

The federated multimodal data factory (Galati et al., MICCAI 2024), phase 1: a StyleGAN2
generator conditioned on the site (client id), the slice's position in its volume (z-bin) and the
site's *domain key* (a float vector computed at the site, never shared). Conditioning follows the
paper's eq. (1) as the official code implements it::

    c = (1 - key_mix) * Linear(one_hot(site) ++ one_hot(zbin)) + key_mix * Linear(key)

with the key dropped per sample (``key_keep`` False: ``c`` = the site/z-bin embedding alone).
The mapping MLP reads ``normalize(z) ++ normalize(c)`` (both 2nd-moment normalised, as
StyleGAN2-ADA's conditional mapping) and gives ``w``; the synthesis network is StyleGAN2's skip
generator: a learned 4x4 constant, per resolution two modulated/demodulated 3x3 convolutions
(the first after a bilinear x2 upsampling), noise inputs with learned strength, and a modulated
1x1 ToGray per resolution whose outputs are upsampled and summed. Equalized learning rate
everywhere; the mapping's lr multiplier (0.01) lives inside its layers, so one Adam lr fits all.

Sizes with the defaults at 64 px: channels 256-128-64-32-32 (4..64 px), ``num_ws`` 10,
generator 1.93 M parameters; discriminator (:mod:`.stylegan_disc`) 2.37 M; :class:`~.gan.FactoryGAN`
(G + D + EMA-G) 6.24 M (6.34 M at 128 px).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["StyleGANConfig", "EqualLinear", "ConditionEmbedding", "StyleGenerator", "NOISE_MODES"]

NOISE_MODES = ("random", "const", "none")
SQRT2 = math.sqrt(2.0)


@dataclass(frozen=True)
class StyleGANConfig:
    """Shape of the conditional StyleGAN2-lite (generator and discriminator alike).

    Args:
        image_size: output side S, a power of 2 in [32, 256] (smaller only for tests: >= 8).
        z_dim, w_dim: latent and style widths.
        mapping_layers, mapping_lr_mult: depth of the mapping MLP and its lr multiplier.
        max_channels, min_channels: channels at 4x4, halved per resolution, clamped below.
        n_sites, n_zbins: one-hot sizes of the site id and of the slice position bin.
        key_dim: width of a site's domain key; cond_dim: width of the condition embedding.
        key_mix: share of the key embedding in the condition (official code: 0.2).
        key_drop: per-sample probability, in training, that the key is dropped.
        image_channels: output channels (1: grey slices).
    """

    image_size: int = 64
    z_dim: int = 256
    w_dim: int = 256
    mapping_layers: int = 4
    mapping_lr_mult: float = 0.01
    max_channels: int = 256
    min_channels: int = 32
    n_sites: int = 3
    key_dim: int = 64
    n_zbins: int = 16
    cond_dim: int = 256
    key_mix: float = 0.2
    key_drop: float = 0.5
    image_channels: int = 1

    def __post_init__(self):
        s = self.image_size
        if not isinstance(s, int) or s < 8 or s > 256 or s & (s - 1):
            raise ValueError(f"image_size must be a power of 2 in [32, 256] (>= 8 for tests), got {s!r}")
        for name in ("z_dim", "w_dim", "mapping_layers", "max_channels", "min_channels", "n_sites", "key_dim",
                     "n_zbins", "cond_dim", "image_channels"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if self.min_channels > self.max_channels:
            raise ValueError(f"min_channels ({self.min_channels}) > max_channels ({self.max_channels})")
        if not 0 < self.mapping_lr_mult <= 1:
            raise ValueError(f"mapping_lr_mult must be in (0, 1], got {self.mapping_lr_mult!r}")
        for name in ("key_mix", "key_drop"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not 0 <= v <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {v!r}")

    @property
    def resolutions(self) -> list[int]:
        """4, 8, ..., image_size."""
        return [2 ** i for i in range(2, int(math.log2(self.image_size)) + 1)]

    def channels(self, res: int) -> int:
        """Feature channels at resolution ``res`` (max at 4x4, halved per doubling, clamped)."""
        return max(self.min_channels, self.max_channels * 4 // res)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict | None) -> "StyleGANConfig":
        d = dict(d or {})
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown StyleGANConfig fields: {sorted(unknown)}")
        return cls(**d)


def normalize_2nd_moment(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Pixel norm over dim 1: x / sqrt(mean(x^2) + eps)."""
    return x * (x.square().mean(dim=1, keepdim=True) + eps).rsqrt()


class EqualLinear(nn.Module):
    """Linear layer with equalized learning rate: weights stored N(0, 1/lr_mult) and scaled by
    lr_mult / sqrt(in) at run time, so Adam's step is the same for every layer (times lr_mult).

    Args:
        activation: None or "lrelu" (leaky ReLU 0.2 times sqrt(2), StyleGAN's gain).
        bias_init: initial bias (1 for the style affines: styles start at 1).
    Shapes: (B, in_features) -> (B, out_features).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, bias_init: float = 0.0,
                 lr_mult: float = 1.0, activation: str | None = None):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_mult)
        self.bias = nn.Parameter(torch.full((out_features,), float(bias_init) / lr_mult)) if bias else None
        self.weight_gain = lr_mult / math.sqrt(in_features)
        self.lr_mult = lr_mult
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = None if self.bias is None else self.bias * self.lr_mult
        x = F.linear(x, self.weight * self.weight_gain, b)
        return F.leaky_relu(x, 0.2) * SQRT2 if self.activation == "lrelu" else x


class ConditionEmbedding(nn.Module):
    """The condition ``c`` of (site, z-bin, domain key) (module doc). G and D each own one.

    Shapes: site (B,) long in [0, n_sites); key (B, key_dim) float; zbin (B,) long in
    [0, n_zbins); key_keep None or (B,) bool -> c (B, cond_dim).
    """

    def __init__(self, cfg: StyleGANConfig):
        super().__init__()
        self.cfg = cfg
        self.label = EqualLinear(cfg.n_sites + cfg.n_zbins, cfg.cond_dim)
        self.key = EqualLinear(cfg.key_dim, cfg.cond_dim)

    def forward(self, site: torch.Tensor, key: torch.Tensor, zbin: torch.Tensor,
                key_keep: torch.Tensor | None = None) -> torch.Tensor:
        cfg = self.cfg
        b = site.shape[0]
        if site.shape != (b,) or zbin.shape != (b,) or key.shape != (b, cfg.key_dim):
            raise ValueError(f"condition shapes: site {tuple(site.shape)} and zbin {tuple(zbin.shape)} must be "
                             f"(B,), key {tuple(key.shape)} must be (B, {cfg.key_dim})")
        if key_keep is not None and key_keep.shape != (b,):
            raise ValueError(f"key_keep must be (B,) bool, got {tuple(key_keep.shape)}")
        # one_hot raises on negatives; the upper bound must be checked here (it would silently widen)
        if int(site.max()) >= cfg.n_sites or int(zbin.max()) >= cfg.n_zbins:
            raise ValueError(f"site must be < {cfg.n_sites} and zbin < {cfg.n_zbins}")
        onehot = torch.cat([F.one_hot(site.long(), cfg.n_sites), F.one_hot(zbin.long(), cfg.n_zbins)], 1)
        label = self.label(onehot.to(key.dtype))
        mixed = (1.0 - cfg.key_mix) * label + cfg.key_mix * self.key(key)
        if key_keep is None:
            return mixed
        return torch.where(key_keep.to(mixed.device).bool()[:, None], mixed, label)


class ModulatedConv2d(nn.Module):
    """StyleGAN2's modulated convolution, equalized lr, optionally demodulated and preceded by a
    bilinear x2 upsampling. Written as modulate input -> shared conv -> scale output (StyleGAN2's
    non-fused form): the same result as per-sample weights, and a plain batched conv on CPU.

    Shapes: x (B, in, H, W), w (B, w_dim) -> (B, out, H', W') (H' = 2H with ``upsample``).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, w_dim: int,
                 demodulate: bool = True, upsample: bool = False):
        super().__init__()
        self.affine = EqualLinear(w_dim, in_channels, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.weight_gain = 1.0 / math.sqrt(in_channels * kernel_size * kernel_size)
        self.demodulate, self.upsample, self.padding = demodulate, upsample, kernel_size // 2

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        styles = self.affine(w)  # (B, in)
        weight = self.weight * self.weight_gain
        if self.upsample:
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        x = F.conv2d(x * styles[:, :, None, None].to(x.dtype), weight.to(x.dtype), padding=self.padding)
        if self.demodulate:
            # 1 / ||w'_o|| with w'_oi = w_oi * s_i: sum_i s_i^2 * sum_k w_oik^2
            dcoefs = (styles.square() @ weight.square().sum(dim=(2, 3)).t() + 1e-8).rsqrt()  # (B, out)
            x = x * dcoefs[:, :, None, None].to(x.dtype)
        return x


class StyledLayer(nn.Module):
    """Modulated 3x3 conv + noise (learned strength) + bias + leaky ReLU * sqrt(2).

    ``noise_mode``: "random" (fresh N(0, 1) per call), "const" (this layer's fixed buffer) or "none".
    Shapes: (B, in, r', r'), (B, w_dim) -> (B, out, r, r).
    """

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int, upsample: bool = False):
        super().__init__()
        self.conv = ModulatedConv2d(in_channels, out_channels, 3, w_dim, upsample=upsample)
        self.noise_strength = nn.Parameter(torch.zeros(()))
        # fixed noise, the same in every process (seeded by the resolution) and not in the state
        # dict: a federation never ships an image-sized tensor
        self.register_buffer("noise_const", torch.randn(resolution, resolution,
                                                        generator=torch.Generator().manual_seed(resolution)),
                             persistent=False)
        self.bias = nn.Parameter(torch.zeros(out_channels))

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise_mode: str = "random") -> torch.Tensor:
        x = self.conv(x, w)
        if noise_mode == "random":
            x = x + torch.randn(x.shape[0], 1, x.shape[2], x.shape[3], device=x.device, dtype=x.dtype) * \
                self.noise_strength.to(x.dtype)
        elif noise_mode == "const":
            x = x + (self.noise_const * self.noise_strength).to(x.dtype)
        return F.leaky_relu(x + self.bias.to(x.dtype)[None, :, None, None], 0.2) * SQRT2


class ToGray(nn.Module):
    """Modulated 1x1 conv, no demodulation, plus bias: features -> image contribution."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int):
        super().__init__()
        self.conv = ModulatedConv2d(in_channels, out_channels, 1, w_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(out_channels))

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return self.conv(x, w) + self.bias.to(x.dtype)[None, :, None, None]


class Synthesis(nn.Module):
    """The skip-architecture synthesis network. ``ws[:, i]`` drives conv layer i; a resolution's
    ToGray reads the w after its last conv (shared with the next block's first conv, as StyleGAN2).

    Shapes: ws (B, num_ws, w_dim) -> image (B, image_channels, S, S) and, with
    ``return_features``, the feature map of every resolution [(B, C_r, r, r) for r = 4..S].
    """

    def __init__(self, cfg: StyleGANConfig):
        super().__init__()
        self.cfg = cfg
        res = cfg.resolutions
        self.const = nn.Parameter(torch.randn(cfg.channels(4), 4, 4))
        self.layers = nn.ModuleList([StyledLayer(cfg.channels(4), cfg.channels(4), cfg.w_dim, 4)])
        self.to_gray = nn.ModuleList([ToGray(cfg.channels(4), cfg.image_channels, cfg.w_dim)])
        for r in res[1:]:
            c_in, c_out = cfg.channels(r // 2), cfg.channels(r)
            self.layers.append(StyledLayer(c_in, c_out, cfg.w_dim, r, upsample=True))
            self.layers.append(StyledLayer(c_out, c_out, cfg.w_dim, r))
            self.to_gray.append(ToGray(c_out, cfg.image_channels, cfg.w_dim))
        self.num_ws = len(self.layers) + 1

    def forward(self, ws: torch.Tensor, noise_mode: str = "random", return_features: bool = False):
        x = self.const[None].expand(ws.shape[0], -1, -1, -1).to(ws.dtype)
        x = self.layers[0](x, ws[:, 0], noise_mode)
        img = self.to_gray[0](x, ws[:, 1])
        feats = [x]
        for b in range(1, len(self.to_gray)):
            i = 2 * b - 1
            x = self.layers[i](x, ws[:, i], noise_mode)
            x = self.layers[i + 1](x, ws[:, i + 1], noise_mode)
            img = F.interpolate(img, scale_factor=2, mode="bilinear", align_corners=False) + \
                self.to_gray[b](x, ws[:, i + 2])
            feats.append(x)
        return (img, feats) if return_features else img


class StyleGenerator(nn.Module):
    """Conditional StyleGAN2-lite generator F (module doc).

    ``w_avg`` (a buffer) tracks the mean w in training (decay 0.995) for truncation; it is the
    average over all conditions (truncation pulls towards a generic slice, not a site's mean).
    """

    w_avg_beta = 0.995

    def __init__(self, cfg: StyleGANConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = ConditionEmbedding(cfg)
        dims = [cfg.z_dim + cfg.cond_dim] + [cfg.w_dim] * cfg.mapping_layers
        self.mapping_net = nn.Sequential(*[EqualLinear(a, b, lr_mult=cfg.mapping_lr_mult, activation="lrelu")
                                           for a, b in zip(dims[:-1], dims[1:])])
        self.synthesis_net = Synthesis(cfg)
        self.register_buffer("w_avg", torch.zeros(cfg.w_dim))

    @property
    def num_ws(self) -> int:
        return self.synthesis_net.num_ws

    def condition_embedding(self, site, key, zbin, key_keep=None) -> torch.Tensor:
        """(B,), (B, key_dim), (B,), (B,) bool or None -> c (B, cond_dim)."""
        return self.embed(site, key, zbin, key_keep)

    def mapping(self, z: torch.Tensor, site, key, zbin, key_keep=None, truncation: float = 1.0) -> torch.Tensor:
        """z (B, z_dim) and the condition -> w (B, w_dim); updates ``w_avg`` in training."""
        if z.dim() != 2 or z.shape[1] != self.cfg.z_dim:
            raise ValueError(f"z must be (B, {self.cfg.z_dim}), got {tuple(z.shape)}")
        c = self.embed(site, key, zbin, key_keep)
        w = self.mapping_net(torch.cat([normalize_2nd_moment(z), normalize_2nd_moment(c)], 1))
        if self.training:
            with torch.no_grad():
                self.w_avg.copy_(w.detach().float().mean(0).lerp(self.w_avg, self.w_avg_beta))
        if truncation != 1.0:
            w = self.w_avg.to(w.dtype).lerp(w, truncation)
        return w

    def synthesis(self, ws: torch.Tensor, noise_mode: str = "random", return_features: bool = False):
        """ws (B, num_ws, w_dim) -> image (B, C, S, S) [, features per resolution (B, C_r, r, r)]."""
        if noise_mode not in NOISE_MODES:
            raise ValueError(f"noise_mode must be one of {NOISE_MODES}, got {noise_mode!r}")
        if ws.dim() != 3 or ws.shape[1:] != (self.num_ws, self.cfg.w_dim):
            raise ValueError(f"ws must be (B, {self.num_ws}, {self.cfg.w_dim}), got {tuple(ws.shape)}")
        return self.synthesis_net(ws, noise_mode, return_features)

    def forward(self, z: torch.Tensor, site, key, zbin, key_keep=None, truncation: float = 1.0,
                mix_prob: float = 0.0, noise_mode: str = "random", return_ws: bool = False):
        """Generate slices for a condition.

        Args:
            z: (B, z_dim) latents. site, zbin: (B,) long; key: (B, key_dim); key_keep: (B,) bool.
            truncation: psi, w -> w_avg + psi (w - w_avg).
            mix_prob: probability (per call) of style mixing: a second z under the same
                condition drives the layers from a random crossover index in [1, num_ws).
            noise_mode: "random" | "const" | "none".
            return_ws: also return ws (B, num_ws, w_dim).
        Returns:
            image (B, image_channels, S, S) (linear output, not clamped) [, ws].
        """
        w = self.mapping(z, site, key, zbin, key_keep, truncation)
        ws = w[:, None].repeat(1, self.num_ws, 1)
        if mix_prob > 0 and float(torch.rand(())) < mix_prob:
            cut = int(torch.randint(1, self.num_ws, ()))
            w2 = self.mapping(torch.randn_like(z), site, key, zbin, key_keep, truncation)
            ws = torch.cat([ws[:, :cut], w2[:, None].expand(-1, self.num_ws - cut, -1)], 1)
        img = self.synthesis(ws, noise_mode)
        return (img, ws) if return_ws else img
