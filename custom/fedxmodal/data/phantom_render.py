"""Geometry primitives and CT / MR intensity rendering for the procedural phantom.

Anatomy is described in patient world coordinates (mm, nibabel's RAS+: +x = patient Right,
+y = Anterior, +z = Superior) and rasterised on a site's voxel grid into a *tissue map*
(uint8 ids of :data:`TISSUES`) and a *label map*; :func:`render_ct` and :func:`render_mr` turn
the tissue map into intensities.  Everything is vectorised numpy, evaluated only inside each
shape's bounding box.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

# name, CT HU (native), CT enhancement at full contrast, CT texture (HU),
# MR T2-like (fat/fluid bright, flow voids), MR bright-blood (bSSFP-like), MR texture (relative)
_TISSUE_TABLE = [
    ("air", -1000, 0, 0, 0, 0, 0.0),
    ("lung", -860, 0, 30, 15, 25, 0.3),
    ("fat", -100, 0, 10, 700, 750, 0.05),
    ("skin", 25, 0, 8, 300, 280, 0.05),
    ("muscle", 50, 8, 8, 170, 190, 0.06),
    ("bowel", 25, 35, 15, 380, 420, 0.15),
    ("gas", -950, 0, 20, 5, 5, 0.0),
    ("fluid", 8, 0, 5, 900, 820, 0.03),
    ("liver", 60, 40, 7, 230, 320, 0.06),
    ("liver_vessel", 45, 130, 8, 90, 700, 0.05),
    ("gallbladder", 12, 0, 5, 960, 800, 0.03),
    ("spleen", 50, 45, 7, 480, 380, 0.05),
    ("kidney_cortex", 35, 115, 8, 520, 450, 0.05),
    ("kidney_medulla", 30, 65, 8, 650, 500, 0.05),
    ("pancreas", 42, 50, 10, 320, 350, 0.08),
    ("blood", 40, 250, 6, 50, 900, 0.03),
    ("myocardium", 45, 60, 6, 200, 250, 0.05),
    ("bone_cortex", 850, 0, 80, 20, 25, 0.2),
    ("marrow", 200, 0, 40, 420, 480, 0.1),
    ("disc", 85, 0, 8, 560, 450, 0.05),
    ("csf", 10, 0, 4, 950, 800, 0.03),
    ("cord", 35, 0, 5, 330, 300, 0.05),
    ("stomach_wall", 40, 40, 8, 260, 300, 0.05),
]
TISSUES = {row[0]: i for i, row in enumerate(_TISSUE_TABLE)}
_PROPS = np.array([row[1:] for row in _TISSUE_TABLE], np.float32)
PROPERTY_COLUMNS = ("ct_hu", "ct_enhancement", "ct_texture", "mr_t2", "mr_ssfp", "mr_texture")


def tissue_property(column: str) -> np.ndarray:
    """A copy of one column of the tissue table (index = tissue id), e.g. ``"ct_hu"``."""
    return _PROPS[:, PROPERTY_COLUMNS.index(column)].copy()


@dataclass(frozen=True)
class Grid:
    """A site's voxel grid, centred on the patient (x, y) and on ``z_centre`` (mm)."""

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    z_centre: float = 0.0

    def axes(self) -> list[np.ndarray]:
        centre = (0.0, 0.0, self.z_centre)
        return [(np.arange(n) - (n - 1) / 2) * s + c for n, s, c in zip(self.shape, self.spacing, centre)]

    def affine(self, lps: bool = False) -> np.ndarray:
        """RAS-stored affine (``lps=False``) or the affine of the x/y-flipped (LPS-stored) array."""
        x, y, z = self.axes()
        aff = np.diag([*self.spacing, 1.0])
        aff[:3, 3] = x[0], y[0], z[0]
        if lps:
            aff[0, 0], aff[1, 1] = -self.spacing[0], -self.spacing[1]
            aff[0, 3], aff[1, 3] = x[-1], y[-1]
        return aff


class Canvas:
    """Tissue + label maps on a grid, painted in drawing order (later shapes override)."""

    def __init__(self, grid: Grid):
        self.grid = grid
        self.x, self.y, self.z = (a.astype(np.float32) for a in grid.axes())
        self.X, self.Y, self.Z = self.x[:, None, None], self.y[None, :, None], self.z[None, None, :]
        self.tissue = np.zeros(grid.shape, np.uint8)
        self.label = np.zeros(grid.shape, np.uint8)
        self.coarse: np.ndarray | None = None  # smooth random field (unit sd) shared with the texture

    def box(self, lo, hi):
        """Index slices of the voxels whose centres lie in the world box [lo, hi] and their coordinates."""
        sl = []
        for ax, a, b in zip((self.x, self.y, self.z), lo, hi):
            i0, i1 = int(np.searchsorted(ax, a)), int(np.searchsorted(ax, b, side="right"))
            if i1 <= i0:
                return None, None
            sl.append(slice(i0, i1))
        sl = tuple(sl)
        return sl, (self.X[sl[0]], self.Y[:, sl[1]], self.Z[:, :, sl[2]])

    def paint(self, sl, mask, tissue, label: int = 0, within=None):
        if sl is None:
            return
        view_t, view_l = self.tissue[sl], self.label[sl]
        mask = np.broadcast_to(mask, view_t.shape)
        if within is not None:
            mask = mask & within[sl]
        view_t[mask] = tissue[mask] if np.ndim(tissue) else tissue
        view_l[mask] = label


def rot(z: float = 0.0, y: float = 0.0, x: float = 0.0) -> np.ndarray:
    """Local -> world rotation matrix Rz @ Ry @ Rx (angles in degrees)."""
    cz, sz, cy, sy, cx, sx = (f(np.radians(a)) for a in (z, y, x) for f in (np.cos, np.sin))
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    return rz @ ry @ rx


def random_warp(rng: np.random.Generator, size: float, n: int = 3, rel: float = 0.1) -> list:
    """A smooth random displacement field: ``n`` plane waves of wavelength ~2 x ``size``."""
    waves = []
    for _ in range(n):
        d = rng.normal(size=3)
        k = d / np.linalg.norm(d) * 2 * np.pi / (rng.uniform(1.5, 3.0) * size)
        waves.append((k, rng.uniform(0, 2 * np.pi), rng.normal(size=3) * rel * size))
    return waves


def local_coords(cv: Canvas, centre, radius: float, rotation=None, warp=()):
    """Deformed local coordinates q = warp(R^T (p - centre)) of the voxels within ``radius``."""
    c = np.asarray(centre, np.float64)
    radius += sum(float(np.abs(w[2]).sum()) for w in warp)
    sl, xyz = cv.box(c - radius, c + radius)
    if sl is None:
        return None, None
    r = np.eye(3) if rotation is None else np.asarray(rotation)
    d = [xyz[i] - np.float32(c[i]) for i in range(3)]
    q = [sum(np.float32(r[j, i]) * d[j] for j in range(3)) for i in range(3)]
    for k, phase, amp in warp:
        s = np.sin(np.float32(k[0]) * q[0] + np.float32(k[1]) * q[1] + np.float32(k[2]) * q[2] + np.float32(phase))
        q = [q[i] + np.float32(amp[i]) * s for i in range(3)]
    return sl, q


def superq(q, axes, centre=(0.0, 0.0, 0.0), expo: float = 2.0) -> np.ndarray:
    """Normalised superellipsoid radius of local coordinates ``q`` (< 1 inside)."""
    acc = 0.0
    for qi, a, c in zip(q, axes, centre):
        t = (qi - np.float32(c)) * np.float32(1.0 / a)
        acc = acc + (t * t if expo == 2 else np.abs(t) ** np.float32(expo))
    return np.sqrt(acc) if expo == 2 else acc ** np.float32(1.0 / expo)


def _catmull_rom(pts: np.ndarray, radii: np.ndarray, samples: int):
    p = np.vstack([2 * pts[0] - pts[1], pts, 2 * pts[-1] - pts[-2]])
    out = [pts[0]]
    for i in range(1, len(p) - 2):
        for t in np.linspace(0, 1, samples + 1)[1:]:
            t2, t3 = t * t, t * t * t
            a0, a1, a2, a3 = p[i - 1], p[i], p[i + 1], p[i + 2]
            out.append(0.5 * (2 * a1 + (a2 - a0) * t + (2 * a0 - 5 * a1 + 4 * a2 - a3) * t2
                              + (3 * a1 - a0 - 3 * a2 + a3) * t3))
    s = np.linspace(0, len(pts) - 1, len(out))
    return np.array(out), np.interp(s, np.arange(len(pts)), radii)


def tube(cv: Canvas, points, radii, samples: int = 6):
    """A tube of varying radius around a smooth curve through ``points``: (slices, d/r) with d/r < 1 inside."""
    pts, rad = np.asarray(points, np.float64), np.asarray(radii, np.float64)
    if len(pts) > 2:
        pts, rad = _catmull_rom(pts, rad, samples)
    sl, (X, Y, Z) = cv.box(pts.min(0) - rad.max(), pts.max(0) + rad.max())
    if sl is None:
        return None, None
    best = np.full(tuple(s.stop - s.start for s in sl), np.inf, np.float32)
    for a, b, ra, rb in zip(pts[:-1], pts[1:], rad[:-1], rad[1:]):
        ab = (b - a).astype(np.float32)
        dx, dy, dz = X - np.float32(a[0]), Y - np.float32(a[1]), Z - np.float32(a[2])
        t = np.clip((dx * ab[0] + dy * ab[1] + dz * ab[2]) / max(float(ab @ ab), 1e-6), 0, 1)
        d2 = (dx - t * ab[0]) ** 2 + (dy - t * ab[1]) ** 2 + (dz - t * ab[2]) ** 2
        np.minimum(best, np.sqrt(d2) / (np.float32(ra) + t * np.float32(rb - ra)), out=best)
    return sl, best


def smooth_noise(rng: np.random.Generator, shape, sigma) -> np.ndarray:
    """Gaussian-filtered white noise rescaled to unit standard deviation (float32)."""
    f = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sigma, mode="wrap", truncate=3.0)
    return f / max(float(f.std()), 1e-6)


def texture(rng, shape, coarse=None) -> np.ndarray:
    """Relative texture field: fine smooth noise + the subject's ``coarse`` field (drawn if None)."""
    if coarse is None:
        coarse = smooth_noise(rng, shape, (3.0, 3.0, 1.0))
    return 0.7 * smooth_noise(rng, shape, (0.8, 0.8, 0.4)) + 0.7 * coarse


def render_ct(tissue: np.ndarray, rng: np.random.Generator, contrast: float, coarse=None) -> np.ndarray:
    """CT in Hounsfield units (int16): per-tissue HU (+ ``contrast`` x enhancement, subject offsets),
    texture, partial-volume blur and Gaussian noise (sigma 10-20 HU)."""
    hu = _PROPS[:, 0] + np.float32(contrast) * _PROPS[:, 1] + rng.normal(0, 5, len(_PROPS)).astype(np.float32)
    hu[0] = -1000
    img = hu[tissue] + _PROPS[:, 2][tissue] * texture(rng, tissue.shape, coarse)
    img = ndimage.gaussian_filter(img, (0.6, 0.6, 0.3))
    img += np.float32(rng.uniform(10, 20)) * rng.standard_normal(img.shape, dtype=np.float32)
    return np.clip(np.rint(img), -1024, 3071).astype(np.int16)


def bias_field(rng: np.random.Generator, shape, amplitude: float) -> np.ndarray:
    """Smooth multiplicative field exp(quadratic polynomial), log-range +-``amplitude``."""
    u, v, w = (np.linspace(-1, 1, n, dtype=np.float32) for n in shape)
    u, v, w = u[:, None, None], v[None, :, None], w[None, None, :]
    terms = (u, v, w, u * u, v * v, w * w, u * v, u * w, v * w)
    log = sum(np.float32(c) * t for c, t in zip(rng.normal(size=len(terms)), terms))
    log = log - log.mean()
    return np.exp(log * np.float32(amplitude / max(float(np.abs(log).max()), 1e-6)))


def render_mr(tissue: np.ndarray, rng: np.random.Generator, sequence: str = "t2", coarse=None) -> np.ndarray:
    """MR magnitude image (int16, arbitrary units >= 0): a non-monotonic tissue mapping relative to CT
    (``"t2"`` T2-like, ``"ssfp"`` bright-blood), texture, a smooth bias field (+-20-30 %), a random
    global gain and Rician noise."""
    col = {"t2": 3, "ssfp": 4}[sequence]
    level = _PROPS[:, col] * rng.uniform(0.9, 1.1, len(_PROPS)).astype(np.float32)
    img = level[tissue] * (1 + _PROPS[:, 5][tissue] * texture(rng, tissue.shape, coarse))
    img = ndimage.gaussian_filter(img, (0.6, 0.6, 0.3))
    gain = np.float32(rng.uniform(0.6, 1.6))
    img *= bias_field(rng, tissue.shape, rng.uniform(0.18, 0.28)) * gain
    sd = np.float32(rng.uniform(0.015, 0.035) * 700) * gain
    re = img + sd * rng.standard_normal(img.shape, dtype=np.float32)
    im = sd * rng.standard_normal(img.shape, dtype=np.float32)
    return np.clip(np.rint(np.sqrt(re * re + im * im)), 0, 32767).astype(np.int16)
