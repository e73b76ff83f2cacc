"""Detector offset of electron (HAADF/ADF) tilt series: the vacuum level, found on reading.

Real STEM detectors add a constant to every pixel: the FEI HAADF.mrc in ../shared/data runs from
-31908 upward (int16), other files start at 513 (uint16). Reconstruction needs vacuum = 0, so the
reader subtracts the vacuum level once (``TiltSource``/``read_tilt_series`` ``offset="auto"``).

The vacuum of a dark-field image is its darkest population: a narrow peak at the low end of the
histogram (detector noise around the offset), with the specimen spread above it. The estimate:

1. a coarse histogram of a fixed sample of the series (every image if small, else evenly spaced
   images and a pixel stride), 0.05-99.95 percentile range; the vacuum candidate is the first
   local maximum from the low end that holds at least ``PEAK_FRACTION`` of the tallest bin;
2. refined three times: the median of the values within ``+-3 s`` of the level, where ``s`` is
   the root-mean-square deviation of the values just below the level (the vacuum's left flank,
   which no specimen reaches), floored at a tiny fraction of the data range;
3. accepted only when it is a real peak: at least ``PROMINENCE`` times as many values lie within
   ``+-s/2`` of the level as within ``+-s/2`` of ``level + 3 s`` (a Gaussian vacuum peak alone
   gives e^4.5 = 90x, flat data 1x), and at least ``MIN_VALUES`` values were sampled. Otherwise no vacuum was found and nothing is subtracted.

A level within half the vacuum noise of 0 (``|level| <= s / 2``) is already 0 to within what can
be measured: it is recorded but not subtracted, so series that are already offset-free (the
project's synthetic series, whose vacuum is exactly 0) are read unchanged.

This is a dark-field rule (vacuum darkest). Bright-field data, or a field of view with no vacuum,
should be read with ``offset=None`` (CLI ``--offset none``) or an explicit value.
"""
from __future__ import annotations

import numpy as np

PEAK_FRACTION = 0.1      # a vacuum peak holds at least this fraction of the tallest histogram bin
PROMINENCE = 2.0         # ... and is this many times denser than the data 3 noise widths above it
MIN_VALUES = 1000        # fewer sampled values than this: no estimate
SAMPLE_VALUES = 4_000_000  # the sample the estimate is made on holds about this many values
MAX_SAMPLE_IMAGES = 16


def sample_indices(n_images: int, n_rows: int, n_cols: int):
    """The (image indices, row step, column step) of the fixed sample the estimate is made on."""
    k = min(n_images, MAX_SAMPLE_IMAGES)
    images = np.unique(np.linspace(0, n_images - 1, k).round().astype(int))
    per_image = max(1, SAMPLE_VALUES // max(1, images.size))
    step = max(1, int(np.ceil(np.sqrt(n_rows * n_cols / per_image))))
    return images, step, step


def vacuum_level(sample) -> dict:
    """Estimate the vacuum level of dark-field data from ``sample`` (any shape, real numbers).

    Returns a dict: ``level`` (the offset to subtract, same units as the data, 0.0 when none is
    applied), ``estimate`` (the vacuum level found, or None), ``noise`` (vacuum noise ``s``),
    ``vacuum_fraction`` (share of sampled values within ``+-3 s`` of the level), ``applied``
    (bool) and ``how`` (one line saying what was found).
    """
    x = np.asarray(sample, dtype=np.float64).ravel()
    x = x[np.isfinite(x)]
    none = {"level": 0.0, "estimate": None, "noise": None, "vacuum_fraction": None, "applied": False}
    if x.size < MIN_VALUES:
        return {**none, "how": f"auto: too few values ({x.size}) to find a vacuum level; none subtracted"}
    lo, hi = np.percentile(x, [0.05, 99.95])
    if hi <= lo:  # (almost) constant data: the constant is the vacuum level
        return _decide(x, float(np.median(x)), 0.0, 1.0, "constant data")
    bins = int(np.clip(np.sqrt(x.size) / 2, 16, 1024))
    counts, edges = np.histogram(x, bins=bins, range=(lo, hi))
    smooth = np.convolve(counts, np.ones(3) / 3, mode="same")
    tall = smooth.max()
    left = np.concatenate([[-1.0], smooth[:-1]])
    right = np.concatenate([smooth[1:], [-1.0]])
    peak = int(np.argmax((smooth >= PEAK_FRACTION * tall) & (smooth >= left) & (smooth >= right)))
    width = edges[1] - edges[0]
    level = 0.5 * (edges[peak] + edges[peak + 1])
    floor = 1e-6 * max(hi - lo, np.finfo(np.float64).tiny)
    s = width
    for _ in range(3):
        win = x[np.abs(x - level) <= 3 * s]
        if win.size == 0:
            break
        level = float(np.median(win))
        below = x[(x < level) & (x >= level - 3 * s)]
        s = float(np.sqrt(np.mean((below - level) ** 2))) if below.size else 0.0
        s = max(s, floor)
    centre = np.count_nonzero(np.abs(x - level) <= s / 2)
    flank = np.count_nonzero(np.abs(x - (level + 3 * s)) <= s / 2)
    prominence = centre / max(flank, 1)
    if prominence < PROMINENCE:
        return {**none, "how": f"auto: no vacuum peak found (the candidate at {level:.6g} is only "
                                f"{prominence:.2g}x denser than 3 noise widths above it, need "
                                f"{PROMINENCE:g}x); none subtracted"}
    fraction = np.count_nonzero(np.abs(x - level) <= 3 * s) / x.size
    return _decide(x, level, s, fraction, f"vacuum peak {prominence:.3g}x denser than 3 noise widths above it")


def _decide(x, level: float, s: float, fraction: float, what: str) -> dict:
    applied = abs(level) > s / 2
    how = (f"auto: {what}; vacuum level {level:.6g} +- {s:.3g} (noise), {100 * fraction:.1f}% of "
           f"sampled pixels; " + ("subtracted" if applied else "within half the noise of 0: not subtracted"))
    return {"level": level if applied else 0.0, "estimate": level, "noise": s,
            "vacuum_fraction": float(fraction), "applied": applied, "how": how}
