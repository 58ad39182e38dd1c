"""FedCoWPro (seed 003): federated self-supervised one-shot segmentation, and its baselines
SSL-ALPNet and CoWPro, as plain PyTorch/MONAI pieces (no NVFlare, no engine):

- ``superpixels``: per-site felzenszwalb pseudo-labels, cached in the site's folder, PNG preview;
- ``episodes``: support/query episodes from one superpixel under two independent augmentations;
- ``network``: a from-scratch GroupNorm encoder and the raw-intensity feature baseline;
- ``prototypes``: ALP and CoWPro prototype classifiers;
- ``losses``: CE + alignment (+ Dice + edge Dice), ``METHODS`` = ssl_alpnet / cowpro / fedcowpro;
- ``train``: one training step and a tiny seeded loop;
- ``oneshot``: SSL-ALPNet's one-shot evaluation protocol, setting 2, quadrant priors.
"""

from .episodes import EpisodeConfig, EpisodeSampler
from .losses import METHODS, LossConfig, episode_losses, method_settings
from .network import FewShotEncoder, IntensityFeatures
from .oneshot import evaluate_oneshot, evaluate_query, prototype_predictor, setting2_keep
from .prototypes import PrototypeConfig, batch_logits, few_shot_logits
from .superpixels import SuperpixelConfig, render_superpixel_preview, site_superpixels, superpixels_volume
from .train import make_optimizer, train_episodes, train_step

__all__ = [
    "EpisodeConfig", "EpisodeSampler", "METHODS", "LossConfig", "episode_losses", "method_settings",
    "FewShotEncoder", "IntensityFeatures", "evaluate_oneshot", "evaluate_query", "prototype_predictor",
    "setting2_keep", "PrototypeConfig", "batch_logits", "few_shot_logits", "SuperpixelConfig",
    "render_superpixel_preview", "site_superpixels", "superpixels_volume", "make_optimizer",
    "train_episodes", "train_step",
]
