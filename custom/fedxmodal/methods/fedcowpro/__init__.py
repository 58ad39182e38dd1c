"""FedCoWPro (arXiv 2503.23507): federated self-supervised one-shot segmentation, and its baselines
SSL-ALPNet and CoWPro -- three registered methods over one code path (``method.PrototypeMethod``):

- ``superpixels``: per-site felzenszwalb pseudo-labels, cached in the site's folder, PNG preview;
- ``episodes``: support/query episodes from one superpixel under two independent augmentations;
- ``network``: a from-scratch GroupNorm encoder and the raw-intensity feature baseline;
- ``prototypes``: ALP and CoWPro prototype classifiers;
- ``losses``: CE + alignment (+ Dice + edge Dice), ``LOSS_VARIANTS`` = ssl_alpnet / cowpro / fedcowpro;
- ``train``: one training step and a tiny loop over the engine's ``EpisodicTrainer``;
- ``oneshot``: SSL-ALPNet's one-shot evaluation protocol, setting 2, quadrant priors;
- ``method``: the trainer's and the site's part (episodes from a site, loss, one-shot, segment).

Federated, they are plain FedAvg (no site or server parts of their own): the generic site script
the one site script (``fedxmodal.fl.site``, ``EpisodicSiteRunner``) trains them; only the encoder's weights and aggregate metrics leave
a site, never the superpixels.
"""

from .episodes import EpisodeConfig, EpisodeSampler
from .losses import LOSS_VARIANTS, LossConfig, episode_losses, method_settings
from .method import PrototypeMethod
from .network import FewShotEncoder, IntensityFeatures
from .oneshot import evaluate_oneshot, evaluate_query, prototype_predictor, segment_volume, setting2_keep
from .prototypes import PrototypeConfig, batch_logits, few_shot_logits
from .superpixels import SuperpixelConfig, render_superpixel_preview, site_superpixels, superpixels_volume
from .train import train_episodes, train_step


class SSLALPNetMethod(PrototypeMethod):
    """SSL-ALPNet (Ouyang et al., ECCV 2020): ALP prototypes, CE + prototype alignment."""

    name = "ssl_alpnet"
    label = "SSL-ALPNet (ALP, CE + alignment)"


class CoWProMethod(PrototypeMethod):
    """CoWPro (Manna et al., ICPR 2024): correlation-weighted prototypes, CE + alignment (the
    FedCoWPro paper's FedAvg baseline)."""

    name = "cowpro"
    label = "CoWPro (CE + alignment)"


class FedCoWProMethod(PrototypeMethod):
    """FedCoWPro (arXiv 2503.23507): CoWPro prototypes, CE + alignment + soft Dice + Sobel edge Dice."""

    name = "fedcowpro"
    label = "FedCoWPro (CoWPro + Dice + edge Dice)"


__all__ = [
    "CoWProMethod", "EpisodeConfig", "EpisodeSampler", "FedCoWProMethod", "LOSS_VARIANTS", "LossConfig",
    "PrototypeMethod", "SSLALPNetMethod", "episode_losses", "method_settings", "FewShotEncoder", "IntensityFeatures",
    "evaluate_oneshot", "evaluate_query", "prototype_predictor", "segment_volume", "setting2_keep",
    "PrototypeConfig", "batch_logits", "few_shot_logits", "SuperpixelConfig", "render_superpixel_preview",
    "site_superpixels", "superpixels_volume", "train_episodes", "train_step",
]
