"""Two more imaging domains of the phantom: a T1-weighted-like MR (``mr-t1-site``) and a
portal-venous contrast-enhanced CT (``cect-site``), rendered from the same tissue ids
(:data:`phantom_render.TISSUES`) as ``ct-site`` and ``mr-site``, so anatomy and labels stay
consistent across the four domains; only intensities, grids and stored orientations differ.

Mean intensity per tissue and domain (before per-subject jitter, texture, bias field and noise;
ct-site draws a contrast fraction c ~ U(0, 1) per subject, the column shows c = 0 .. 1; MR in
arbitrary units):

================  ==============  =========  ===========  ==============
tissue            ct-site (HU)    cect (HU)  mr-site T2   mr-t1-site T1
================  ==============  =========  ===========  ==============
air               -1000           -1000      0            0
lung              -860            -845       15           20
fat               -100            -100       700          900
skin              25              35         300          380
muscle            50 .. 58        62         170          260
bowel             25 .. 60        65         380          280
gas               -950            -950       5            5
fluid             8               8          900          90
liver             60 .. 100       118        230          560
liver_vessel      45 .. 175       185        90           130
gallbladder       12              12         960          150
spleen            50 .. 95        115        480          380
kidney_cortex     35 .. 150       185        520          430
kidney_medulla    30 .. 95        145        650          240
pancreas          42 .. 92        97         320          600
blood             40 .. 290       180        50           110
myocardium        45 .. 105       115        200          320
bone_cortex       850             850        20           20
marrow            200             210        420          720
disc              85              85         560          240
csf               10              10         950          70
cord              35              35         330          360
stomach_wall      40 .. 80        95         260          320
================  ==============  =========  ===========  ==============

Why plausible. T1: fat has the shortest T1 and is the brightest tissue, free water (fluid, bile,
CSF, the urine-rich renal medulla) has a long T1 and is dark, hepatocytes shorten T1 so the liver
is brighter than the spleen (the reverse of T2), the pancreas is the brightest parenchyma, fatty
marrow is bright and flowing blood dark (spin echo). CECT: in the portal-venous phase (~70 s) the
liver enhances by ~50-60 HU through the portal vein, the spleen and the renal cortex (with the
medulla catching up) enhance strongly, vessels reach 150-200 HU, while fat, air, bone, bile, CSF and
free fluid take up no iodine. The mr-t1-site has a stronger bias field (+-30-42 %, body-array
shading) and less noise than mr-site; the cect-site less noise than ct-site (iterative
reconstruction) and its own contrast timing (x U(0.85, 1.15)).

Stored orientations are nibabel axis codes of the array as written: ``RAS`` (ct-site), ``LPS``
(mr-site), ``LAS`` (mr-t1-site, x flipped) and ``RAI`` (cect-site, slices stored from head to feet).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .phantom_render import TISSUES, Grid, bias_field, texture, tissue_property

_T1 = {"air": 0, "lung": 20, "fat": 900, "skin": 380, "muscle": 260, "bowel": 280, "gas": 5, "fluid": 90,
       "liver": 560, "liver_vessel": 130, "gallbladder": 150, "spleen": 380, "kidney_cortex": 430,
       "kidney_medulla": 240, "pancreas": 600, "blood": 110, "myocardium": 320, "bone_cortex": 20, "marrow": 720,
       "disc": 240, "csf": 70, "cord": 360, "stomach_wall": 320}
# portal-venous enhancement (HU added to the native CT value of phantom_render)
_PV_ENHANCEMENT = {"air": 0, "lung": 15, "fat": 0, "skin": 10, "muscle": 12, "bowel": 40, "gas": 0, "fluid": 0,
                   "liver": 58, "liver_vessel": 140, "gallbladder": 0, "spleen": 65, "kidney_cortex": 150,
                   "kidney_medulla": 115, "pancreas": 55, "blood": 140, "myocardium": 70, "bone_cortex": 0,
                   "marrow": 10, "disc": 0, "csf": 0, "cord": 0, "stomach_wall": 55}


def _by_id(table: dict) -> np.ndarray:
    out = np.zeros(len(TISSUES), np.float32)
    for name, i in TISSUES.items():
        out[i] = table[name]
    return out


T1_LEVEL, PV_ENHANCEMENT = _by_id(_T1), _by_id(_PV_ENHANCEMENT)


def render_mr_t1(tissue: np.ndarray, rng: np.random.Generator, coarse=None) -> np.ndarray:
    """T1-weighted-like MR magnitude (int16 >= 0): T1 levels (+-8 % per subject and tissue), texture,
    blur, a strong bias field (+-30-42 %), a random gain and Rician noise (0.8-2 % of fat)."""
    level = T1_LEVEL * rng.uniform(0.92, 1.08, len(T1_LEVEL)).astype(np.float32)
    img = level[tissue] * (1 + tissue_property("mr_texture")[tissue] * texture(rng, tissue.shape, coarse))
    img = ndimage.gaussian_filter(img, (0.7, 0.7, 0.3))
    gain = np.float32(rng.uniform(0.7, 1.4))
    img *= bias_field(rng, tissue.shape, rng.uniform(0.30, 0.42)) * gain
    sd = np.float32(rng.uniform(0.008, 0.02) * 900) * gain
    re = img + sd * rng.standard_normal(img.shape, dtype=np.float32)
    im = sd * rng.standard_normal(img.shape, dtype=np.float32)
    return np.clip(np.rint(np.sqrt(re * re + im * im)), 0, 32767).astype(np.int16)


def render_cect(tissue: np.ndarray, rng: np.random.Generator, coarse=None) -> np.ndarray:
    """Portal-venous contrast CT in HU (int16): native HU + timing x enhancement (timing ~ U(0.85, 1.15)),
    per-subject tissue offsets, texture, blur and Gaussian noise (sigma 8-14 HU)."""
    timing = np.float32(rng.uniform(0.85, 1.15))
    hu = tissue_property("ct_hu") + timing * PV_ENHANCEMENT + rng.normal(0, 5, len(TISSUES)).astype(np.float32)
    hu[TISSUES["air"]] = -1000
    img = hu[tissue] + tissue_property("ct_texture")[tissue] * texture(rng, tissue.shape, coarse)
    img = ndimage.gaussian_filter(img, (0.5, 0.5, 0.35))
    img += np.float32(rng.uniform(8, 14)) * rng.standard_normal(img.shape, dtype=np.float32)
    return np.clip(np.rint(img), -1024, 3071).astype(np.int16)


RENDERERS = {"t1": render_mr_t1, "cect": render_cect}

# site folder -> modality, file prefix, rng stream code, grid, stored orientation, renderer ("ct" and "mr":
# phantom_render.render_ct / render_mr; the others: RENDERERS)
SITES = {
    "ct-site": dict(modality="CT", prefix="ct", code=1, grid=Grid((160, 160, 40), (2.4, 2.4, 5.0), -12.5),
                    orientation="RAS", domain="ct"),
    "mr-site": dict(modality="MR", prefix="mr", code=2, grid=Grid((144, 144, 34), (2.7, 2.7, 6.0), -12.0),
                    orientation="LPS", domain="mr"),
    "mr-t1-site": dict(modality="MR", prefix="mrt1", code=3, grid=Grid((150, 150, 36), (2.6, 2.6, 5.5), -13.0),
                       orientation="LAS", domain="t1"),
    "cect-site": dict(modality="CT", prefix="cect", code=4, grid=Grid((168, 168, 46), (2.3, 2.3, 4.4), -11.0),
                      orientation="RAI", domain="cect"),
}
DEFAULT_SITES = ("ct-site", "mr-site")  # write_phantom_federation's default (the FedGIN demo)
FACTORY_SITES = ("ct-site", "mr-site", "mr-t1-site")  # the data factory's federated phase-1 sites
LATE_SITES = ("cect-site",)  # joins only phase 2 (local adaptation)


def check_sites(sites) -> tuple[str, ...]:
    """``sites`` (a name or names of :data:`SITES`) as a tuple without repeats; ValueError naming the valid ones."""
    names = (sites,) if isinstance(sites, str) else tuple(dict.fromkeys(sites))
    unknown = [s for s in names if s not in SITES]
    if unknown or not names:
        raise ValueError(f"unknown phantom site(s) {unknown}; valid sites: {', '.join(SITES)}")
    return names


def _flips(code: str) -> tuple[int, ...]:
    if len(code) != 3 or any(c not in pair for c, pair in zip(code, ("RL", "AP", "SI"))):
        raise ValueError(f"stored orientation {code!r}: expected axis codes such as RAS, LPS, LAS, RAI")
    return tuple(i for i, c in enumerate(code) if c != "RAS"[i])


def stored_affine(grid: Grid, code: str) -> np.ndarray:
    """Affine of ``grid``'s array stored in orientation ``code`` (axes flipped where it differs from RAS)."""
    flips = _flips(code)
    if flips in ((), (0, 1)):
        return grid.affine(lps=bool(flips))  # ct-site / mr-site: exactly as before
    aff = grid.affine()
    for ax in flips:
        aff[:3, 3] += aff[:3, ax] * (grid.shape[ax] - 1)
        aff[:3, ax] *= -1
    return aff


def to_stored(array: np.ndarray, code: str) -> np.ndarray:
    """A RAS-ordered array in orientation ``code`` (a view when nothing flips)."""
    flips = _flips(code)
    return np.ascontiguousarray(np.flip(array, flips)) if flips else array
