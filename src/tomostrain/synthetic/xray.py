"""X-ray test objects and detector faults with known truth (ring removal and centre finding).

``xray_phantom`` returns rows of ``phantoms.ellipse_sinogram`` (density, semi-axes a, b,
centre x0, z0, angle) in voxels about the slice centre, so sinograms are exact line integrals;
``gain_errors`` draws the per-pixel gain errors the flats do not see (rings) and partly
defective pixels.
"""
from __future__ import annotations

import numpy as np

from ..errors import InputError
from .phantoms import SHEPP_LOGAN

XRAY_PHANTOMS = ("shepp", "ellipses", "sparse", "porous", "offcentre")


def xray_phantom(kind: str, n: int, seed: int = 0) -> np.ndarray:
    """Ellipse rows of one of ``XRAY_PHANTOMS`` for an ``n``-pixel slice.

    shepp: Shepp-Logan at 70 % of the field; ellipses: a hard-edged body with 6 random
    inclusions; sparse: 25 small particles (1-4 % of the width) scattered in air; porous: a
    dense disk over 84 % of the field with 39 pores (air); offcentre: three bodies away from the
    rotation axis (the slice centre).
    """
    if kind not in XRAY_PHANTOMS:
        raise InputError(f"phantom must be one of {XRAY_PHANTOMS}, got {kind!r}")
    rng = np.random.default_rng(seed)
    if kind == "shepp":
        ell = SHEPP_LOGAN.copy()
        ell[:, 1:5] *= n / 2 * 0.7
        return ell
    if kind == "ellipses":
        rows = [[1.0, 0.38 * n, 0.30 * n, 0, 0, rng.uniform(0, 180)]]
        for _ in range(6):
            r = rng.uniform(0.03, 0.1) * n
            c = rng.uniform(-0.18, 0.18, 2) * n
            rows.append([rng.uniform(0.2, 0.8), r, r * rng.uniform(0.5, 1.5), c[0], c[1], rng.uniform(0, 180)])
        return np.array(rows)
    if kind == "offcentre":
        s = rng.uniform(0.9, 1.1)
        return np.array([[1.0, 0.18 * n * s, 0.12 * n, 0.22 * n, -0.1 * n, rng.uniform(0, 180)],
                         [0.5, 0.05 * n, 0.05 * n, 0.2 * n, -0.1 * n, 0],
                         [0.8, 0.06 * n, 0.03 * n, -0.3 * n, 0.2 * n, rng.uniform(0, 180)]])
    if kind == "sparse":
        rows, tries = [], 0
        while len(rows) < 25 and tries < 5000:
            tries += 1
            r = rng.uniform(0.01, 0.04) * n
            c = rng.uniform(-0.4, 0.4, 2) * n
            if np.hypot(*c) + r < 0.45 * n and all(np.hypot(c[0] - q[3], c[1] - q[4]) > r + q[1] + 1 for q in rows):
                rows.append([rng.uniform(0.5, 2.0), r, r, c[0], c[1], 0])
        return np.array(rows)
    big = 0.42 * n  # porous
    rows, tries = [[1.5, big, big * 0.95, 0, 0, 0]], 0
    while len(rows) < 40 and tries < 5000:
        tries += 1
        r = rng.uniform(0.01, 0.05) * n
        c = rng.uniform(-big, big, 2)
        if np.hypot(*c) + r < 0.9 * big and all(np.hypot(c[0] - q[3], c[1] - q[4]) > r + q[1] + 1 for q in rows[1:]):
            rows.append([-1.5, r, r, c[0], c[1], 0])
    return np.array(rows)


def gain_errors(n_angles: int, n_cols: int, seed: int = 0, strength: float = 0.05, fraction: float = 0.1,
                partial: float = 0.0) -> np.ndarray:
    """(n_angles, 1, n_cols) multiplicative detector errors the flats miss.

    ``fraction`` of the pixels carry a gain error of ``strength`` (relative std); with
    ``partial`` a further fraction of the pixels respond at 50-90 %: every other one of them
    over the whole scan, the rest only from a random angle in the first half on (a pixel that
    fails during the scan: half rings).
    """
    rng = np.random.default_rng(seed)
    gain = 1 + strength * rng.normal(size=(1, 1, n_cols)) * (rng.random((1, 1, n_cols)) < fraction)
    g = np.broadcast_to(gain, (n_angles, 1, n_cols)).copy()
    if partial > 0:
        cols = rng.choice(n_cols, max(1, int(partial * n_cols)), replace=False)
        for i, c in enumerate(cols):
            start = 0 if i % 2 == 0 else int(rng.integers(0, max(1, n_angles // 2)))
            g[start:, 0, c] *= rng.uniform(0.5, 0.9)
    return g
