"""The phantom's anatomy: random abdomen and heart subjects drawn as tissue and label maps on a
site's grid (:class:`~.phantom_render.Canvas`), before any rendering. :mod:`.phantom` turns a
subject into a CT or MR site case. World coordinates are nibabel's RAS+ (+x = patient Right,
+y = Anterior, +z = Superior)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .phantom_render import TISSUES as T
from .phantom_render import (Canvas, Grid, local_coords, random_warp, rot, smooth_noise, superq, tube)

ABDOMEN_STRUCTURES = ("liver", "kidney_right", "kidney_left", "spleen", "pancreas", "gallbladder")
_ID = {name: i + 1 for i, name in enumerate(ABDOMEN_STRUCTURES)}  # internal ids = CT numbering


# ----------------------------------------------------------------------------------- trunk
def _trunk(cv: Canvas, rng, a, b, fat, wall, ant_extra, post_extra, rib_floor):
    """Body outline (superellipse with angular wobble, flatter back, slow change along z), skin,
    subcutaneous fat, muscle wall (thicker posteriorly) and ribs; returns landmarks and the cavity mask.
    ``rib_floor``: (arc, z) of the lowest rib edge vs mm of arc from the posterior midline."""
    cx, cy = rng.normal(0, 5, 2)
    dx, dy = cv.X[:, :, 0] - np.float32(cx), cv.Y[:, :, 0] - np.float32(cy)
    th = np.arctan2(dy, dx)
    wob = np.ones_like(th)
    for k in (2, 3, 4):
        wob += np.float32(rng.normal(0, 0.02)) * np.cos(k * th + np.float32(rng.uniform(0, 2 * np.pi)))
    n = np.float32(rng.uniform(2.1, 2.6))
    b_post = b * rng.uniform(0.82, 0.92)
    zs = 1 + np.float32(rng.uniform(-0.08, 0.08)) * (cv.z - cv.z.mean()) / 100
    s = np.sin(th)
    tf = fat * (1 + 0.3 * np.cos(th - np.float32(rng.uniform(0, 2 * np.pi)))) * (1 + 0.4 * np.clip(s, 0, None))
    tf = tf * (1 - 0.5 * np.clip(-s, 0, None) ** 4)  # thinner fat over the spine
    tm = wall * (1 + ant_extra * np.clip(s, 0, None) ** 2 + post_extra * np.clip(-s, 0, None) ** 3)
    # superellipse boundary radius along each voxel's direction; depths are measured radially
    r_pt = np.hypot(dx, dy)
    b_th = np.where(dy < 0, b_post, b) * wob
    r_b = 1 / (np.abs(np.cos(th) / (a * wob)) ** n + np.abs(np.sin(th) / b_th) ** n) ** (1 / n)

    def inside(depth):
        return r_pt[..., None] < r_b[..., None] * zs - np.asarray(depth, np.float32)[..., None]

    everywhere = (slice(None),) * 3
    cv.paint(everywhere, inside(0.0), T["skin"])
    cv.paint(everywhere, inside(2.0), T["fat"])
    cv.paint(everywhere, inside(tf), T["muscle"])
    cavity = inside(tf + tm)
    cv.paint(everywhere, cavity, T["fat"])
    # ribs: bands in the inner muscle wall, descending anteriorly, none over the anterior midline
    arc = np.abs(np.angle(np.exp(1j * (th + np.pi / 2)))) * 100  # mm of arc from the posterior midline
    pitch, slope = rng.uniform(24, 30), rng.uniform(0.3, 0.45)
    u = cv.Z + np.float32(slope) * arc[..., None]
    ribs = inside(tf + tm - 8) & ~cavity & (np.mod(u - np.float32(rng.uniform(0, pitch)), pitch) < 9)
    ribs &= (arc < 270)[..., None] & (cv.Z > np.interp(arc, *rib_floor).astype(np.float32)[..., None])
    cv.paint(everywhere, ribs, T["bone_cortex"])
    front = cy + b - fat * 1.4 - wall * (1 + ant_extra)
    return dict(cx=cx, cy=cy, back=cy - b_post, front=front, half_width=a - fat - wall, cavity=cavity)


def _spine(cv: Canvas, rng, cx, y_vb, ax, ay, lumbar: bool):
    """Vertebral bodies (cortex + marrow) with discs, canal + cord, arch, spinous/transverse processes."""
    pitch, disc_h, phase = rng.uniform(28, 34), rng.uniform(7, 10), rng.uniform(0, 34)
    sl, (X, Y, Z) = cv.box((cx - 60, y_vb - 80, -1e9), (cx + 60, y_vb + ay + 2, 1e9))
    u = np.mod(Z - np.float32(phase), np.float32(pitch))
    disc = u < disc_h
    r_vb = ((X - np.float32(cx)) / ax) ** 2 + ((Y - np.float32(y_vb)) / ay) ** 2
    cv.paint(sl, (r_vb < 1) & disc, T["disc"])
    cv.paint(sl, (r_vb < 1) & ~disc, T["bone_cortex"])
    cv.paint(sl, (r_vb < (1 - 3.0 / ay) ** 2) & ~disc, T["marrow"])
    canal_y = y_vb - ay - 9
    rc = np.hypot(X - np.float32(cx), Y - np.float32(canal_y))
    body = (u >= disc_h) & (u < pitch - 2)
    arch = (rc >= 8.5) & (rc < 15) & (Y < canal_y + 4) & body
    spin_len = rng.uniform(18, 26)
    spinous = (np.abs(X - np.float32(cx)) < 4) & (Y < canal_y - 10) & (Y > canal_y - 10 - spin_len) & body
    tp_len = rng.uniform(38, 48) if lumbar else rng.uniform(28, 34)
    transverse = (np.abs(Y - np.float32(canal_y + 2)) < 3.5) & (np.abs(X - np.float32(cx)) < tp_len)
    transverse = transverse & (u > disc_h + 6) & (u < pitch - 8)
    cv.paint(sl, arch | spinous | transverse, T["bone_cortex"])
    cv.paint(sl, rc < 8.5, T["csf"])
    cv.paint(sl, rc < 5.0, T["cord"])
    return canal_y


def _diaphragm(cv: Canvas, rng, cx, y_vb, z_right, z_left):
    """(X, Y, Z) mask of the voxels below the diaphragm: two domes (right higher), deep posterior recesses."""
    x, y = cv.X[:, :, 0], cv.Y[:, :, 0]
    yc = y_vb + rng.uniform(50, 70)
    dy = y - np.float32(yc)
    dy2 = np.where(dy < 0, (dy / 75) ** 2, 0.25 * (dy / 80) ** 2) * 25
    domes = [z - 30 * ((x - np.float32(cx + sgn * rng.uniform(45, 60))) / 70) ** 2 - dy2
             for z, sgn in ((z_right, 1), (z_left, -1))]
    height = np.maximum(*domes)
    return cv.Z < height[..., None]


def _tubes(f1, f2, eps):
    """Vessel-like curves: where the zero sets of two smooth random fields intersect."""
    return (np.abs(f1) < eps) & (np.abs(f2) < 2 * eps)


def _organ(cv, rng, centre, axes, rotation, tissue, label, within, expo=2.0, rel=0.1):
    """Paint a randomly warped superellipsoid; returns (slices, local coords, normalised radius)."""
    axes = np.asarray(axes, np.float64)
    warp = random_warp(rng, float(axes.mean()), 3, rel)
    sl, q = local_coords(cv, centre, float(axes.max()) * 1.05, rotation, warp)
    if sl is None:
        return None, None, None
    f = superq(q, axes, expo=expo)
    cv.paint(sl, f < 1, tissue, label, within)
    return sl, q, f


# --------------------------------------------------------------------------------- abdomen
def make_abdomen_subject(rng: np.random.Generator, grid: Grid) -> Canvas:
    """One random abdomen: tissue map + label map (internal ids = CT-site numbering) on ``grid``."""
    cv = Canvas(grid)
    a, b, fat = rng.uniform(140, 168), rng.uniform(100, 122), rng.uniform(8, 26)
    z_dome = rng.uniform(62, 72)
    ribs = ([0, 150, 270], [z_dome - 80, z_dome - 115, z_dome - 60])  # costal margin: low laterally
    tr = _trunk(cv, rng, a, b, fat, rng.uniform(9, 14), 0.3, 2.0, rib_floor=ribs)
    cx, cav, front, hw = tr["cx"], tr["cavity"], tr["front"], tr["half_width"]
    y_vb = tr["back"] + rng.uniform(62, 74)
    vb_ax, vb_ay = rng.uniform(19, 24), rng.uniform(14, 18)
    below = _diaphragm(cv, rng, cx, y_vb, z_dome, z_dome - rng.uniform(5, 15))
    abd = cav & below
    every = (slice(None),) * 3
    cv.coarse = coarse = smooth_noise(rng, grid.shape, (4.0, 4.0, 1.5))
    fine = smooth_noise(rng, grid.shape, (1.5, 1.5, 0.6))
    # bowel loops (with gas) in the anterior peritoneal cavity, retroperitoneal fat behind
    bowel = abd & (cv.Y > np.float32(y_vb - 5)) & (np.abs(coarse) < 0.7)
    cv.paint(every, bowel, T["bowel"])
    cv.paint(every, bowel & (fine > 1.9), T["gas"])
    # thorax above the diaphragm: lungs (with vessels) and the heart apex
    thorax = cav & ~below
    cv.paint(every, thorax, T["lung"])
    cv.paint(every, thorax & _tubes(fine, coarse, 0.12), T["blood"])
    hx, hy = cx - rng.uniform(15, 35), front - rng.uniform(40, 55)
    sl, m = cv.box((hx - 70, hy - 50, -1e9), (hx + 70, hy + 50, 1e9))
    cv.paint(sl, ((m[0] - np.float32(hx)) / 65) ** 2 + ((m[1] - np.float32(hy)) / 45) ** 2 < 1, T["myocardium"],
             within=thorax)
    cv.paint(sl, ((m[0] - np.float32(hx)) / 35) ** 2 + ((m[1] - np.float32(hy)) / 22) ** 2 < 1, T["blood"],
             within=thorax)
    # psoas muscles, widening inferiorly from the kidney level
    z_kr = z_dome - rng.uniform(98, 108)
    for sgn in (1, -1):
        r = np.clip(6 + 16 * (z_kr + 20 - cv.Z) / 90, 0, 22)
        xc = cx + sgn * (vb_ax + 6)
        sl, m = cv.box((xc - 60, y_vb - 30, -1e9), (xc + 60, y_vb + 30, 1e9))
        rz = r[:, :, sl[2]]
        cv.paint(sl, np.hypot(m[0] - np.float32(xc) - sgn * rz, m[1] - np.float32(y_vb + 2)) < rz, T["muscle"],
                 within=abd)
    # stomach (left upper quadrant, anterior): wall, fluid, gas anteriorly
    st_c = (cx - rng.uniform(35, 55), front - rng.uniform(30, 45), z_dome - rng.uniform(40, 55))
    st_ax, st_rot = (rng.uniform(28, 40), rng.uniform(24, 32), rng.uniform(35, 50)), rot(z=rng.uniform(-30, 30))
    sl, q, f = _organ(cv, rng, st_c, st_ax, st_rot, T["stomach_wall"], 0, abd)
    if sl is not None:
        cv.paint(sl, f < 0.85, T["fluid"], within=abd)
        cv.paint(sl, (f < 0.85) & (cv.Y[:, sl[1]] > np.float32(st_c[1] + rng.uniform(0, 12))), T["gas"], within=abd)
    # liver: right lobe + left lobe across the midline, below the right dome
    liv_c = (cx + rng.uniform(50, 62), y_vb + rng.uniform(42, 52), z_dome - rng.uniform(55, 68))
    liv_ax = (rng.uniform(62, 75), rng.uniform(70, 84), rng.uniform(58, 70))
    _organ(cv, rng, liv_c, liv_ax, rot(z=rng.uniform(-10, 10)), T["liver"], _ID["liver"], abd, rng.uniform(2.0, 2.6))
    ll_c = (cx - rng.uniform(0, 20), front - rng.uniform(28, 40), z_dome - rng.uniform(30, 42))
    ll_ax = (rng.uniform(45, 62), rng.uniform(28, 38), rng.uniform(24, 32))
    _organ(cv, rng, ll_c, ll_ax, rot(z=rng.uniform(-15, 5)), T["liver"], _ID["liver"], abd)
    cv.tissue[(cv.tissue == T["liver"]) & _tubes(fine, coarse, 0.25)] = T["liver_vessel"]
    # gallbladder: small, at the inferior-anterior edge of the liver
    gb_c = (liv_c[0] - rng.uniform(15, 30), front - rng.uniform(30, 45), liv_c[2] - rng.uniform(30, 45))
    gb_ax = (rng.uniform(13, 18), rng.uniform(14, 19), rng.uniform(28, 40))
    _organ(cv, rng, gb_c, gb_ax, rot(x=rng.uniform(-45, -20), z=rng.uniform(-20, 20)), T["gallbladder"],
           _ID["gallbladder"], abd, rel=0.05)
    # spleen: posterior-left, along the wall, below the left dome
    sp_c = (cx - hw + rng.uniform(35, 45), y_vb - rng.uniform(-5, 8), z_dome - rng.uniform(55, 68))
    sp_ax = (rng.uniform(20, 27), rng.uniform(48, 62), rng.uniform(40, 52))
    _organ(cv, rng, sp_c, sp_ax, rot(z=rng.uniform(28, 45), x=rng.uniform(-15, 0)), T["spleen"], _ID["spleen"], abd)
    # pancreas: head right of midline (near the duodenum), body anterior to aorta, tail to the splenic hilum
    z_p = z_dome - rng.uniform(85, 100)
    ctrl = np.array([(28, 40, -12), (8, 50, -2), (-25, 48, 6), (-58, 32, 14), (-80, 18, 18)], np.float64)
    ctrl = ctrl + rng.normal(0, 4, ctrl.shape) + np.array([cx, y_vb, z_p])
    rad = np.array([15, 10, 10, 9, 7]) * rng.uniform(0.85, 1.15)
    sl, d = tube(cv, ctrl, rad)
    cv.paint(sl, d < 1, T["pancreas"], _ID["pancreas"], abd)
    # kidneys: posterior, either side of the spine, hilum anteromedial, upper pole medial; right one lower
    for sgn, name in ((1, "kidney_right"), (-1, "kidney_left")):
        z_k = z_kr if sgn == 1 else z_kr + rng.uniform(8, 18)
        k_c = (cx + sgn * rng.uniform(55, 68), y_vb - rng.uniform(2, 12), z_k)
        k_ax = (rng.uniform(26, 32), rng.uniform(22, 27), rng.uniform(45, 54))
        k_rot = rot(z=-sgn * rng.uniform(20, 35), y=-sgn * rng.uniform(8, 15))
        sl, q, f = _organ(cv, rng, k_c, k_ax, k_rot, T["kidney_cortex"], _ID[name], abd, rel=0.06)
        if sl is None:
            continue
        hil = -sgn * q[0]  # local coordinate towards the hilum (medial)
        sinus = superq((hil, q[1], q[2]), (0.5 * k_ax[0], 0.45 * k_ax[1], 0.55 * k_ax[2]), (0.5 * k_ax[0], 0, 0))
        kid = (f < 1) & abd[sl]
        cv.paint(sl, kid & (f < 0.78) & (sinus > 1.3), T["kidney_medulla"], _ID[name])
        hilum = (hil > 0.3 * k_ax[0]) & (np.abs(q[2]) < 0.3 * k_ax[2]) & (np.abs(q[1]) < 0.4 * k_ax[1])
        cv.paint(sl, kid & ((sinus < 1) | hilum), T["fat"], 0)
    # great vessels: aorta (left-anterior of the spine), IVC (right)
    sl, d = tube(cv, [(cx - 14, y_vb + vb_ay + 11, -1e3), (cx - 14, y_vb + vb_ay + 11, 1e3)], [rng.uniform(9, 12)] * 2)
    cv.paint(sl, d < 1, T["blood"], 0, cav)
    xi, yi, rx, ry = cx + rng.uniform(20, 26), y_vb + vb_ay + 6, rng.uniform(10, 13), rng.uniform(7, 10)
    sl, m = cv.box((xi - rx, yi - ry, -1e9), (xi + rx, yi + ry, 1e9))
    cv.paint(sl, ((m[0] - np.float32(xi)) / rx) ** 2 + ((m[1] - np.float32(yi)) / ry) ** 2 < 1, T["blood"], 0, cav)
    _spine(cv, rng, cx, y_vb, vb_ax, vb_ay, lumbar=True)
    return cv


# ----------------------------------------------------------------------------------- heart
def make_heart_subject(rng: np.random.Generator, grid: Grid) -> Canvas:
    """One random chest: whole heart (label 1) with chambers, great vessels, lungs, ribs, sternum, spine."""
    cv = Canvas(grid)
    a, b = rng.uniform(145, 172), rng.uniform(100, 120)
    z_h = rng.uniform(-25, -5)
    z_dome = z_h - rng.uniform(40, 55)
    ribs = ([0, 270], [z_dome - 60, z_dome - 60])
    tr = _trunk(cv, rng, a, b, rng.uniform(5, 18), rng.uniform(10, 15), 1.2, 2.0, rib_floor=ribs)
    cx, cav, front = tr["cx"], tr["cavity"], tr["front"]
    y_vb = tr["back"] + rng.uniform(55, 68)
    vb_ax, vb_ay = rng.uniform(16, 20), rng.uniform(13, 16)
    below = _diaphragm(cv, rng, cx, y_vb, z_dome, z_dome - rng.uniform(5, 15))
    every = (slice(None),) * 3
    fine = smooth_noise(rng, grid.shape, (1.5, 1.5, 0.6))
    cv.coarse = coarse = smooth_noise(rng, grid.shape, (4.0, 4.0, 1.5))
    thorax, abd = cav & ~below, cav & below
    cv.paint(every, thorax, T["lung"])
    cv.paint(every, thorax & _tubes(fine, coarse, 0.12), T["blood"])
    cv.paint(every, abd & (cv.X > np.float32(cx - 15)), T["liver"])
    cv.paint(every, abd & (cv.X <= np.float32(cx - 15)), T["bowel"])
    cv.paint(every, abd & (cv.X <= np.float32(cx - 60)) & (cv.Y < np.float32(y_vb + 20)), T["spleen"])
    # mediastinal fat: posterior (around oesophagus / descending aorta) and superior-anterior
    for (xc, yc, rx, ry, z0) in ((cx, y_vb + vb_ay + 18, 28, 24, -1e9), (cx, front - 32, 42, 36, z_h + 30)):
        sl, m = cv.box((xc - rx, yc - ry, z0), (xc + rx, yc + ry, 1e9))
        cv.paint(sl, ((m[0] - np.float32(xc)) / rx) ** 2 + ((m[1] - np.float32(yc)) / ry) ** 2 < 1, T["fat"],
                 within=thorax)
    # heart frame: e3 = long axis base -> apex (left, anterior, inferior), e1 towards the RV (right-anterior)
    s = rng.uniform(1.1, 1.25)
    e3 = np.array([-0.5, 0.45, -0.65]) + rng.normal(0, 0.08, 3)
    e3 /= np.linalg.norm(e3)
    v = np.array([1.0, 0.5, 0.0])
    e1 = v - (v @ e3) * e3
    e1 /= np.linalg.norm(e1)
    R = np.stack([e1, np.cross(e3, e1), e3], axis=1)
    hc = np.array([cx - rng.uniform(20, 35), (y_vb + front) / 2 + rng.uniform(0, 12), z_h])
    world = lambda p: hc + R @ (np.asarray(p, float) * s)  # noqa: E731
    # great vessels (unlabelled blood): aorta root -> ascending -> arch -> descending; pulmonary trunk; SVC
    asc0 = world((0, 0, -45))
    vessels = [
        ([asc0, (asc0[0] + 10, front - 50, z_h + 45), (cx + 8, front - 55, z_h + 85), (cx - 12, y_vb + 40, z_h + 100),
          (cx - vb_ax - 10, y_vb + 0.6 * vb_ay, z_h + 85), (cx - vb_ax - 10, y_vb + 0.6 * vb_ay, z_dome - 80)],
         [13, 15, 14, 12, 12, 11]),
        ([world((25, 5, -40)), (cx - 10, front - 45, z_h + 40), (cx - 5, y_vb + 55, z_h + 55),
          (cx - 55, y_vb + 45, z_h + 50)], [12, 13, 11, 9]),
        ([(cx - 5, y_vb + 55, z_h + 55), (cx + 45, y_vb + 50, z_h + 52)], [10, 9]),
        ([(cx + 28, front - 60, 1e3), (cx + 28, front - 60, z_h + 60), world((20, -8, -65))], [10, 10, 10]),
        ([world((20, -8, -40)), (cx + 25, y_vb + 30, z_dome - 80)], [12, 12]),
    ]
    for pts, rad in vessels:
        sl, d = tube(cv, np.array(pts, float), rng.uniform(0.9, 1.1) * np.array(rad, float))
        cv.paint(sl, d < 1, T["blood"], 0, cav)
    # chambers in the (deformed) heart frame; later ones override earlier ones
    sl, q = local_coords(cv, hc, 90 * s, R, random_warp(rng, 50 * s, 3, 0.06))
    ht = np.zeros(q[0].shape, np.uint8)
    my, bl = T["myocardium"], T["blood"]
    chambers = [((22, 0, 0), (24, 38, 46), my), ((22, 0, 0), (20, 34, 42), bl),  # RV wall, cavity
                ((-10, 0, 12), (32, 31, 52), my), ((-10, 0, 6), (21, 20, 40), bl),  # LV myocardium, cavity
                ((20, -8, -45), (27, 27, 29), my), ((20, -8, -45), (24, 24, 26), bl),  # RA
                ((-12, -12, -52), (29, 25, 23), my), ((-12, -12, -52), (26, 22, 20), bl)]  # LA
    for c, ax, tis in chambers:
        jit = rng.uniform(0.9, 1.1, 3)
        ht[superq(q, np.array(ax) * s * jit, np.array(c) * s) < 1] = tis
    heart = (ht > 0) & cav[sl]
    peri = ndimage.binary_dilation(heart, np.ones((3, 3, 1), bool), iterations=2) & ~heart
    cv.paint(sl, peri, T["fat"], 0, cav)
    cv.paint(sl, heart, ht, 1)
    # sternum in the anterior wall
    sx = rng.uniform(12, 16)
    sl, m = cv.box((cx - sx, front + 1, z_dome - 20), (cx + sx, front + 11, 1e9))
    cv.paint(sl, np.ones(1, bool), T["bone_cortex"], 0)
    sl, m = cv.box((cx - sx + 2, front + 3, z_dome - 18), (cx + sx - 2, front + 9, 1e9))
    cv.paint(sl, np.ones(1, bool), T["marrow"], 0)
    _spine(cv, rng, cx, y_vb, vb_ax, vb_ay, lumbar=False)
    return cv
