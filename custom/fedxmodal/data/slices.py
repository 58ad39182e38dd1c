"""A site's preprocessed slices, held in memory once per run (never re-read per epoch)."""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from .contract import SiteDataset
from .errors import DataError
from .preprocess import PreparedVolume, PreprocessConfig, VolumePreprocessor

class SiteSlices:
    """Loads, checks and preprocesses a site's cases lazily per split, then keeps them.

    ``volumes(split)`` -> list of ``PreparedVolume``; ``slices(split)`` -> (images (N,1,S,S),
    labels (N,S,S) uint8) concatenated over the split's volumes.
    """

    def __init__(self, site: SiteDataset | str, structures, config: PreprocessConfig | None = None,
                 progress: bool = True):
        self.site = site if isinstance(site, SiteDataset) else SiteDataset.load(site)
        self.structures = tuple(structures)
        self.mapper = self.site.label_mapper(self.structures)
        # slabs of one volume share its intensity statistics, cached beside the site's other caches
        self.preprocessor = VolumePreprocessor(self.site.modality, config,
                                               stats_cache=self.site.root / ".fedxmodal_cache" / "intensity")
        self.progress = progress
        self._volumes: dict[str, list[PreparedVolume]] = {}

    @property
    def name(self) -> str:
        return self.site.name

    @property
    def modality(self) -> str:
        return self.site.modality

    def volumes(self, split: str) -> list[PreparedVolume]:
        if split not in self._volumes:
            cases = self.site.split(split)
            if not cases:
                raise DataError(self.site.json_path, f"the '{split}' split is empty")
            it = tqdm(cases, desc=f"{self.name}: preparing {split}", unit="vol", leave=False,
                      disable=not self.progress)
            self._volumes[split] = [self.preprocessor.prepare(c, self.mapper) for c in it]
        return self._volumes[split]

    def slices(self, split: str, foreground_only: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """All labelled slices of a split; ``foreground_only`` keeps slices with any structure
        (the papers train on slices that contain labels). The training split must be fully
        labelled (``require_labels``); unlabelled test cases are skipped."""
        if split == "training":
            self.require_labels(split)
        images, labels = [], []
        for vol in self.volumes(split):
            if vol.label is None:
                continue
            keep = vol.foreground_slices if foreground_only else torch.arange(vol.image.shape[0])
            images.append(vol.image[keep])
            labels.append(vol.label[keep])
        if not images or sum(len(x) for x in images) == 0:
            raise DataError(self.site.json_path, f"no labelled slices in the '{split}' split")
        return torch.cat(images), torch.cat(labels)

    def require_labels(self, split: str = "training") -> None:
        """Raise ``DataError`` naming the site and its unlabelled cases if any case of ``split`` has
        no label (supervised training; checked before any volume is loaded)."""
        missing = [c.case_id for c in self.site.unlabelled(split)]
        if missing:
            shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            raise DataError(self.site.json_path,
                            f"site '{self.name}': {len(missing)} '{split}' case(s) have no label ({shown}); "
                            "supervised training needs a label for every training case (unlabelled "
                            "cases are for the self-supervised one-shot methods, README)")
