"""X-ray projection preprocessing: flat/dark, zingers, rings/stripes, Paganin, 360->180, centre.

Every function takes a stack ``(n_angles, n_rows, n_cols)`` (DESIGN.md §3; the sinogram of row
``y`` is ``data[:, y, :]``) and returns a new float32 array on the input's device: NumPy in,
NumPy out; CuPy in, CuPy out. Inputs are never modified.

Where algotom (Vo's well-kept CPU reference) has the function, the NumPy path calls it
sinogram by sinogram (``remove_stripe_based_sorting``, ``..._fitting``, ``..._wavelet_fft``,
``remove_zinger``, ``find_center_vo``, ``convert_sinogram_360_to_180``); the CuPy path runs the
same algorithm batched over all sinograms at once with ``xp`` (cupy, cupyx.scipy), written in
the ``_*_xp`` functions of this module, which the tests also run on NumPy against algotom.
The one exception: the wavelet decomposition of ``wavelet`` ring removal runs on the host
through PyWavelets (there is no device DWT here); its Fourier damping runs on the device.

Order of use (``preprocess_xray`` chains them): zingers on the raw counts, flat/dark, beam
normalisation, ring removal on the transmission sinograms (as algotom applies them), Paganin
on the transmission, ``-log``, 360 -> 180, centre on the attenuation sinograms.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np

from ..errors import GeometryError, InputError
from ..gpu_core import backend
from ..gpu_core.filters import ndimage_for

#: smallest transmission kept by the flat/dark correction and before ``-log``
FLOOR = 1e-6
RING_METHODS = ("sort", "sort_offset", "fit", "wavelet", "normalize", "all")
CENTER_METHODS = ("vo", "phase")
#: planck constant x speed of light, keV m: wavelength (m) = HC_KEV_M / energy (keV)
HC_KEV_M = 1.239841984e-9


def _stack(data, what="projections"):
    xp = backend.xp_of(data)
    arr = xp.asarray(data)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3 or arr.size == 0:
        raise InputError(f"{what} must be a non-empty (n_angles, n_rows, n_cols) stack, got shape {arr.shape}")
    if arr.dtype.kind not in "uif":
        raise InputError(f"{what} must be real numbers, got dtype {arr.dtype}")
    return xp, arr.astype(xp.float32, copy=True)


def _is_numpy(xp) -> bool:
    return xp is np


# ------------------------------------------------------------------------------- flat / dark
def flat_dark_correct(projections, flats, darks=None, flats_after=None, floor=FLOOR):
    """Transmission ``(raw - dark) / (flat_i - dark)``, clipped to at least ``floor``.

    projections : (n, rows, cols) raw counts
    flats : (m, rows, cols) flat (white) fields taken before the scan (or the only flats)
    darks : (k, rows, cols) dark fields, or None for none
    flats_after : (m2, rows, cols) flats taken after the scan, or None. With both, projection
        ``i`` of ``n`` uses ``(1 - w) mean(flats) + w mean(flats_after)``, ``w = i / (n - 1)``:
        the beam and detector drift linearly in time (acquisition index) between them.
    """
    xp, raw = _stack(projections)
    shape = raw.shape[1:]

    def mean_of(fields, name):
        f = xp.asarray(fields, dtype=xp.float32)
        f = f[None] if f.ndim == 2 else f
        if f.ndim != 3 or f.shape[1:] != shape or f.shape[0] == 0:
            raise InputError(f"{name} must be (n, {shape[0]}, {shape[1]}) to match the projections, got {f.shape}")
        return f.mean(axis=0)

    dark = xp.float32(0) if darks is None else mean_of(darks, "darks")
    before = mean_of(flats, "flats") - dark
    n = raw.shape[0]
    if flats_after is None:
        den = xp.maximum(before, xp.float32(floor))[None]
    else:
        after = mean_of(flats_after, "flats_after") - dark
        w = xp.asarray(np.linspace(0.0, 1.0, n) if n > 1 else np.zeros(1), dtype=xp.float32)[:, None, None]
        den = xp.maximum((1 - w) * before[None] + w * after[None], xp.float32(floor))
    return xp.maximum((raw - dark) / den, xp.float32(floor)).astype(xp.float32)


def normalize_beam(transmission, background=16):
    """Divide each projection by its mean transmission in a background (air) region.

    background : int ``w`` -> the ``w`` outermost columns on both sides of the detector; or a
        boolean mask ``(rows, cols)`` of air pixels. Corrects beam-intensity changes between
        projections (top-up, source drift) that the flats cannot know about.
    """
    xp, t = _stack(transmission, "transmission")
    n_cols = t.shape[2]
    if isinstance(background, (int, np.integer)):
        w = int(background)
        if not 1 <= w <= n_cols // 2:
            raise InputError(f"background width must be 1..{n_cols // 2} columns, got {w}")
        mask = np.zeros(t.shape[1:], bool)
        mask[:, :w] = mask[:, -w:] = True
    else:
        mask = np.asarray(backend.to_host(background), bool)
        if mask.shape != t.shape[1:] or not mask.any():
            raise InputError(f"background mask must be a non-empty {t.shape[1:]} boolean array, got {mask.shape}")
    m = xp.asarray(mask)
    level = (t * m).sum(axis=(1, 2)) / float(mask.sum())
    if bool((level <= 0).any()):
        raise InputError("the background region has zero transmission in some projection; choose air pixels")
    return (t / level[:, None, None]).astype(xp.float32)


# ----------------------------------------------------------------------------------- zingers
def remove_zingers(images, threshold=0.1, size=2):
    """Replace outliers (zingers: bright single-pixel hits) by their neighbourhood mean.

    A pixel is a zinger where ``value / mean_of_neighbours - 1 > threshold``; the neighbours are
    the pixels ``(i, j)`` with ``i, j`` in ``-size..size`` step ``size`` (centre excluded,
    periodic edges), as algotom's ``remove_zinger``. Works on raw counts or transmission
    (positive data), image by image along axis 0.
    """
    xp, img = _stack(images, "images")
    if threshold <= 0 or int(size) < 1:
        raise InputError(f"need threshold > 0 and size >= 1, got {threshold}, {size}")
    if _is_numpy(xp):
        from algotom.prep.removal import remove_zinger

        return np.stack([remove_zinger(im, threshold, size=int(size)) for im in img]).astype(np.float32)
    return _remove_zingers_xp(img, threshold, int(size))


def _remove_zingers_xp(img, threshold, size):
    xp = backend.xp_of(img)
    acc = xp.zeros_like(img)
    count = 0
    for i in range(-size, size + 1, size):
        for j in range(-size, size + 1, size):
            if i or j:
                acc += xp.roll(img, (i, j), axis=(1, 2))
                count += 1
    mean = acc / count
    mean = xp.where(mean == 0, xp.float32(1), mean)
    bad = img / mean - 1 > threshold
    return xp.where(bad, mean, img).astype(xp.float32)


# ------------------------------------------------------------------------------------- rings
def remove_rings(transmission, method="sort", size=None, order=2, sigma=10, level=None, wavelet="db9",
                 damping=1.0, iterations=1):
    """Ring (stripe) removal on every sinogram ``transmission[:, y, :]``.

    method :
        ``"sort"`` Vo's sorting-based filter: sort each column along the angles, median-filter
        across columns (``size`` columns, default ``max(5, n_cols // 50) | 1``... odd), unsort;
        ``"fit"`` Vo's fitting-based filter: polynomial (``order``) fit along the angles
        (Savitzky-Golay over the whole sinogram), Gaussian low-pass (``sigma``) of the fit, and
        the sinogram rescaled by filtered / fit (for low-contrast, full stripes);
        ``"wavelet"`` Münch's wavelet-Fourier filter: ``level`` levels of a ``wavelet`` DWT, the
        vertical detail bands damped in Fourier along the angle axis (Gaussian of width
        ``damping``);
        ``"normalize"`` Vo's normalisation-based filter: each column's mean over the angles is
        moved to its Gaussian-smoothed (``sigma`` columns) value by a constant per column (the
        gentlest: only the angle-independent part of a stripe changes);
        ``"sort_offset"`` the sorting filter's correction reduced to one gain per column (the
        median over the angles of its ``-log`` correction; ``iterations`` passes; ``_rings_sort_offset``);
        ``"all"`` fit then sort.
    Apply it to flat/dark-corrected transmission (before ``-log``), as algotom does.
    """
    if method not in RING_METHODS:
        raise InputError(f"ring method must be one of {RING_METHODS}, got {method!r}")
    xp, t = _stack(transmission, "transmission")
    n_angles, _, n_cols = t.shape
    if size is None:
        size = max(5, n_cols // 50)
    size = int(size) | 1
    if method == "all":
        return remove_rings(remove_rings(t, "fit", order=order, sigma=sigma), "sort", size=size)
    if method == "sort_offset":
        return _rings_sort_offset(t, size, iterations=iterations)
    if n_angles < 3:
        raise InputError(f"ring removal needs at least 3 projections, got {n_angles}")
    sinos = xp.ascontiguousarray(t.transpose(1, 0, 2))  # (rows, angles, cols)
    if _is_numpy(xp):
        from algotom.prep import removal

        if method == "sort":
            out = [removal.remove_stripe_based_sorting(s, size=size) for s in sinos]
        elif method == "fit":
            out = [removal.remove_stripe_based_fitting(s, order=order, sigma=sigma) for s in sinos]
        elif method == "normalize":
            out = [removal.remove_stripe_based_normalization(s, sigma=sigma, sort=False) for s in sinos]
        else:
            out = [removal.remove_stripe_based_wavelet_fft(s, level=_wavelet_level(s.shape, level), size=damping,
                                                           wavelet_name=wavelet) for s in sinos]
        out = np.stack(out)
    elif method == "sort":
        out = _rings_sort_xp(sinos, size)
    elif method == "fit":
        out = _rings_fit_xp(sinos, order, sigma)
    elif method == "normalize":
        out = _rings_normalize_xp(sinos, sigma)
    else:
        out = _rings_wavelet_xp(sinos, _wavelet_level(sinos.shape[1:], level), damping, wavelet)
    return xp.ascontiguousarray(xp.asarray(out, dtype=xp.float32).transpose(1, 0, 2))


def _wavelet_level(shape, level):
    top = int(min(math.floor(math.log2(shape[0] / 16.0)), math.floor(math.log2(shape[1] / 16.0))))
    top = max(top, 1)
    return top if level is None else max(1, min(int(level), top))


def _rings_sort_xp(sinos, size):
    """Sorting-based filter on (rows, angles, cols) sinograms, batched (algotom's algorithm)."""
    xp = backend.xp_of(sinos)
    ndi = ndimage_for(xp)
    index = xp.argsort(sinos, axis=1, kind="stable")
    ordered = xp.take_along_axis(sinos, index, axis=1)
    smooth = ndi.median_filter(ordered, size=(1, 1, size), mode="reflect")
    inverse = xp.argsort(index, axis=1)  # undo the sort (no put_along_axis needed on the device)
    return xp.take_along_axis(smooth, inverse, axis=1)


def _rings_normalize_xp(sinos, sigma):
    """Normalisation-based filter on (rows, angles, cols) sinograms (algotom's, unsorted)."""
    xp = backend.xp_of(sinos)
    ndi = ndimage_for(xp)
    mean = sinos.mean(axis=1)
    return sinos + (ndi.gaussian_filter1d(mean, sigma, axis=-1) - mean)[:, None, :]


def _savgol_xp(xp):
    if _is_numpy(xp):
        from scipy.signal import savgol_filter
    else:
        from cupyx.scipy.signal import savgol_filter
    return savgol_filter


def _fft_gaussian_lowpass(sinos, sigma_x, sigma_y, pad):
    """algotom's ``apply_gaussian_filter`` batched: pad (angles: mean, cols: edge), centred
    Gaussian window in 2-D Fourier space, crop."""
    xp = backend.xp_of(sinos)
    mat = xp.pad(sinos, ((0, 0), (0, 0), (pad, pad)), mode="edge")
    mat = xp.pad(mat, ((0, 0), (pad, pad), (0, 0)), mode="mean")
    _, nrow, ncol = mat.shape
    y = xp.arange(nrow) - (nrow - 1) / 2.0
    x = xp.arange(ncol) - (ncol - 1) / 2.0
    window = xp.exp(-(x[None, :] ** 2 / (2 * sigma_x ** 2) + y[:, None] ** 2 / (2 * sigma_y ** 2)))
    sign = xp.asarray((-1.0) ** (np.arange(nrow)[:, None] + np.arange(ncol)[None, :]))
    filt = xp.fft.ifft2(xp.fft.fft2(mat * sign, axes=(1, 2)) * window, axes=(1, 2)).real * sign
    return filt[:, pad:nrow - pad, pad:ncol - pad]


def _rings_fit_xp(sinos, order, sigma):
    """Fitting-based filter on (rows, angles, cols) sinograms, batched (algotom's algorithm)."""
    xp = backend.xp_of(sinos)
    _, nrow, ncol = sinos.shape
    pad = min(150, int(0.1 * nrow))
    sigmay = int(np.clip(min(60, int(0.1 * ncol)), 10, None))
    length = nrow if nrow % 2 == 1 else nrow - 1
    fit = _savgol_xp(xp)(sinos.astype(xp.float64), length, order, axis=1, mode="mirror")
    filt = _fft_gaussian_lowpass(fit, sigma, sigmay, pad)
    scale = xp.abs(fit).mean(axis=(1, 2), keepdims=True) / xp.abs(filt).mean(axis=(1, 2), keepdims=True)
    return sinos / fit * (filt * scale)


def _rings_wavelet_xp(sinos, level, damping, wavelet):
    """Wavelet-Fourier filter (Münch et al. 2009) on (rows, angles, cols) sinograms: the DWT on
    the host (PyWavelets), the Fourier damping of the vertical detail bands on the device."""
    import pywt

    xp = backend.xp_of(sinos)
    host = backend.to_host(sinos).astype(np.float64)
    _, nrow, ncol = host.shape
    pad = min(150, int(0.1 * min(nrow, ncol)))
    host = np.pad(host, ((0, 0), (pad, pad), (0, 0)), mode="mean")
    host = np.pad(host, ((0, 0), (0, 0), (pad, pad)), mode="edge")
    coeffs = pywt.wavedec2(host, wavelet, level=level, axes=(1, 2))
    coeffs = [coeffs[0]] + [list(c) for c in coeffs[1:]]
    for c in coeffs[1:]:
        band = xp.asarray(c[1])
        height = band.shape[1]
        k = xp.arange(height) - (math.ceil(height / 2.0) - 1.0)
        window = (1.0 - xp.exp(-k ** 2 / (2 * damping ** 2)))[:, None]
        spec = xp.fft.fftshift(xp.fft.fft2(band, axes=(1, 2)), axes=(1, 2)) * window
        c[1] = backend.to_host(xp.fft.ifft2(xp.fft.ifftshift(spec, axes=(1, 2)), axes=(1, 2)).real)
    out = pywt.waverec2(coeffs, wavelet, axes=(1, 2))[:, pad:nrow + pad, pad:ncol + pad]
    return xp.asarray(out)


def _rings_sort_offset(t, size, snr=20.0, iterations=1):
    """Method "sort_offset" on (angles, rows, cols) transmission: Vo's sorting filter proposes a
    correction for every pixel; a gain error the flats miss is one factor per detector pixel at
    every angle, so only the median over the angles of the proposed ``-log`` correction is
    applied, per column. The median ignores the angles where the filter's cross-column median
    clips a steep or curved stretch of the sorted sinogram (its damage to the object), which is
    most of what is left after the plain filter on small detectors and hard edges.
    ``iterations`` passes (``remove_rings(..., iterations=k)``; default 1): each runs the filter
    on the data corrected by the gains found so far and adds the median of its correction (the
    cross-column median of one pass is pulled by the uncorrected neighbours of a stripe). 3
    passes reach >= 10x in 23 of the 60 cells of ``benchmarks.bench_xray.ring_variants`` against
    19 for one, but 7 against 7 of 48 hold-out cells (``ring_holdout``: other seeds, sizes, a
    blob phantom, 1 % gain errors on every pixel, gains drifting in time), and lower on the
    blob phantom, so one pass stays the default (docs/design.md).
    Columns whose proposed correction is not one constant (a pixel that fails part-way through
    the scan, or fluctuates: those whose 75th percentile over the angles of ``|correction -
    median|`` stands ``snr`` robust deviations above that of the other columns of their
    sinogram) are replaced at every angle by linear interpolation between the nearest good
    columns (Vo's treatment of dead stripes; the sorting filter alone leaves 40 % of a step
    that starts mid-scan)."""
    xp = backend.xp_of(t)
    floor = xp.float32(FLOOR)
    gain = xp.zeros((1,) + t.shape[1:], xp.float32)  # -log of the gain found so far, per column
    for _ in range(max(1, int(iterations))):
        tc = (t * xp.exp(gain)).astype(xp.float32)
        filtered = remove_rings(tc, "sort", size=size)
        corr = xp.log(xp.maximum(filtered, floor)) - xp.log(xp.maximum(tc, floor))
        offset = xp.median(corr, axis=0, keepdims=True)
        gain = gain + offset
    spread = xp.percentile(xp.abs(corr - offset), 75, axis=0)  # (rows, cols) of the last pass
    level = xp.median(spread, axis=1, keepdims=True)
    scale = 1.4826 * xp.median(xp.abs(spread - level), axis=1, keepdims=True)
    varying = spread > level + snr * xp.maximum(scale, 1e-12)  # (rows, cols)
    varying[:, 0] = varying[:, -1] = False  # edge columns have neighbours on one side only
    out = (t * xp.exp(gain)).astype(xp.float32)
    n_cols = t.shape[2]
    cols = xp.arange(n_cols)
    for r in np.flatnonzero(backend.to_host(varying.any(axis=1))):  # sinograms with such columns only
        bad = varying[int(r)]
        if int(bad.sum()) > n_cols // 3:
            continue
        good = cols[~bad]
        miss = cols[bad]
        hi = xp.clip(xp.searchsorted(good, miss), 1, good.size - 1)
        lo = hi - 1
        w = ((miss - good[lo]) / (good[hi] - good[lo])).astype(xp.float32)[None, :]
        sino = out[:, int(r), :]
        out[:, int(r), miss] = (1 - w) * sino[:, good[lo]] + w * sino[:, good[hi]]
    return out


def ring_amplitude(image, reference, center=None, mask=None):
    """RMS (over radius) of the azimuthal mean of ``image - reference`` about ``center``
    ``(z, x)`` (default the slice centre): rings are circles, so their amplitude survives the
    azimuthal average while noise and streaks average out. ``image`` (n, n) or (rows, n, n)
    slices (the rows are averaged), host or device; radii inside ``mask`` (default the
    reconstruction circle) count."""
    diff = backend.to_host(image).astype(np.float64) - backend.to_host(reference).astype(np.float64)
    if diff.ndim == 3:
        diff = diff.mean(axis=0)
    n = diff.shape[-1]
    cz, cx = ((n - 1) / 2.0, (n - 1) / 2.0) if center is None else center
    z, x = np.indices(diff.shape)
    r = np.hypot(z - cz, x - cx)
    keep = r < 0.95 * n / 2 if mask is None else np.asarray(mask, bool)
    radius = np.round(r[keep]).astype(int)
    total = np.bincount(radius, diff[keep])
    count = np.bincount(radius)
    prof = total[count > 0] / count[count > 0]
    return float(np.sqrt(np.mean(prof[1:] ** 2)))


# ----------------------------------------------------------------------------------- Paganin
def paganin(transmission, energy_kev, distance_m, pixel_size_m, delta_beta, pad=True):
    """Paganin (2002) single-distance phase retrieval of each projection.

    transmission : (n, rows, cols) flat-field corrected intensity ``I / I0`` at distance ``z``
    energy_kev, distance_m, pixel_size_m : X-ray energy (keV), sample-detector distance (m),
        detector pixel size at the sample (m)
    delta_beta : delta / beta of the (homogeneous) material
    Returns the retrieved contact transmission ``exp(-mu T)``: the low-pass
    ``F^-1[ F[I / I0] / (1 + pi lambda z (delta/beta) |f|^2) ]`` (f in cycles/m), so ``-log``
    of it is ``mu T`` (mu = 4 pi beta / lambda) and ``T = -log(out) / mu`` the projected thickness.
    ``pad``: edge-pad to twice the size (next power of two) against wrap-around.
    """
    for name, value in (("energy_kev", energy_kev), ("distance_m", distance_m), ("pixel_size_m", pixel_size_m),
                        ("delta_beta", delta_beta)):
        if not (np.isfinite(value) and value > 0):
            raise InputError(f"Paganin needs a positive {name}, got {value!r}")
    xp, t = _stack(transmission, "transmission")
    _, ny, nx = t.shape
    wavelength = HC_KEV_M / float(energy_kev)
    py = 1 << int(math.ceil(math.log2(2 * ny))) if pad else ny
    px = 1 << int(math.ceil(math.log2(2 * nx))) if pad else nx
    oy, ox = (py - ny) // 2, (px - nx) // 2
    padded = xp.pad(t, ((0, 0), (oy, py - ny - oy), (ox, px - nx - ox)), mode="edge") if pad else t
    fy = xp.fft.fftfreq(py, d=float(pixel_size_m))[:, None]
    fx = xp.fft.rfftfreq(px, d=float(pixel_size_m))[None, :]
    filt = 1.0 / (1.0 + np.pi * wavelength * float(distance_m) * float(delta_beta) * (fy ** 2 + fx ** 2))
    out = xp.fft.irfft2(xp.fft.rfft2(padded, axes=(1, 2)) * filt, s=(py, px), axes=(1, 2))
    return xp.maximum(out[:, oy:oy + ny, ox:ox + nx], xp.float32(FLOOR)).astype(xp.float32)


def attenuation_coefficient(energy_kev, beta):
    """Linear attenuation coefficient ``mu = 4 pi beta / lambda`` (1/m) at ``energy_kev``."""
    return 4.0 * np.pi * float(beta) / (HC_KEV_M / float(energy_kev))


# ----------------------------------------------------------------------------------- 360->180
def sinogram_360_to_180(attenuation, center):
    """Fold a 360-degree scan with an off-centre axis into a 180-degree scan of a wider field.

    attenuation : (n_angles, rows, cols) ``-log`` data over [0, 360) degrees, evenly spaced
    center : rotation-axis column (pixels); near one edge (half-acquisition / offset scan)
    Returns ``(data_180, new_center)``: data ``(n_angles // 2 + 1, rows, 2 cols - overlap)``
    with the second half-turn mirrored and blended linearly over the overlap, as algotom's
    ``convert_sinogram_360_to_180`` (which the NumPy path calls per sinogram).
    """
    xp, a = _stack(attenuation, "attenuation")
    n_cols = a.shape[2]
    if not 0 <= float(center) <= n_cols - 1:
        raise GeometryError(f"center={center} is outside the detector [0, {n_cols - 1}]")
    if _is_numpy(xp):
        from algotom.prep.conversion import convert_sinogram_360_to_180

        out = [convert_sinogram_360_to_180(a[:, y, :], float(center)) for y in range(a.shape[1])]
        return np.ascontiguousarray(np.stack([o[0] for o in out], axis=1), dtype=np.float32), float(out[0][1])
    return _fold_360_xp(a, float(center))


def _fold_360_xp(a, center):
    """Batched 360->180 (integer overlap, linear blend, per-sinogram mean-level match, as algotom
    with a whole-pixel overlap; a sub-pixel overlap is shifted first with linear interpolation)."""
    xp = backend.xp_of(a)
    n, _, ncol = a.shape
    nrow = n // 2 + 1
    top = a[:nrow]
    bot = a[-nrow:, :, ::-1]
    if center <= (ncol - 1) / 2:
        overlap, side = 2 * center + 1, 0
    else:
        overlap, side = 2 * (ncol - center) - 1, 1
    ov = int(round(overlap + 1e-3))
    sub = overlap - ov
    if sub:
        top = _shift_cols(top, sub if side == 1 else -sub)
        bot = _shift_cols(bot, -sub if side == 1 else sub)
    down = xp.asarray(np.linspace(1.0, 0.0, ov), dtype=xp.float32)
    w1 = xp.ones(ncol, xp.float32)
    w2 = xp.ones(ncol, xp.float32)
    width = 2 * ncol - ov
    out = xp.zeros((nrow, a.shape[1], width), xp.float32)
    if side == 1:
        w1[ncol - ov:] = down
        w2[:ov] = 1 - down
        bot = bot * (top[..., -ov:].mean(axis=(0, 2), keepdims=True) / bot[..., :ov].mean(axis=(0, 2), keepdims=True))
        out[..., :ncol] = top * w1
        out[..., ncol - ov:] += bot * w2
    else:
        w2[ncol - ov:] = down
        w1[:ov] = 1 - down
        bot = bot * (top[..., :ov].mean(axis=(0, 2), keepdims=True) / bot[..., -ov:].mean(axis=(0, 2), keepdims=True))
        out[..., :ncol] = bot * w2
        out[..., ncol - ov:] += top * w1
    return out, float(ncol - ov / 2.0 - 0.5)


def _shift_cols(a, d):
    """Shift along the columns by ``d`` pixels (linear interpolation, nearest at the edges)."""
    xp = backend.xp_of(a)
    ncol = a.shape[-1]
    src = xp.clip(xp.arange(ncol) - d, 0, ncol - 1)
    i0 = xp.floor(src).astype(xp.int64)
    i1 = xp.minimum(i0 + 1, ncol - 1)
    f = (src - i0).astype(xp.float32)
    return a[..., i0] * (1 - f) + a[..., i1] * f


# ------------------------------------------------------------------------------------ centre
def find_center(attenuation, angles_deg, method="vo", rows=None, search=None):
    """Rotation-axis column (pixels) of a 0-180 degree scan.

    attenuation : (n_angles, rows, cols) ``-log`` (or any linear) projections
    method : ``"vo"`` Vo's Fourier-metric search on the sinogram (the NumPy path calls
        algotom's ``find_center_vo``; the device path evaluates every candidate in one batch);
        ``"phase"`` phase correlation of the 0 and 180 degree views (one is mirrored), which needs
        a projection 180 degrees (within half a step) from the first
    rows : detector rows whose sinograms are used (default 5 rows around the middle third);
        the result is their median
    search : ``(start, stop)`` columns for ``vo`` (default ``n_cols/2 +- n_cols/8``)
    """
    if method not in CENTER_METHODS:
        raise InputError(f"center method must be one of {CENTER_METHODS}, got {method!r}")
    xp, a = _stack(attenuation, "attenuation")
    angles = np.asarray(backend.to_host(angles_deg), np.float64).ravel()
    n, n_rows, n_cols = a.shape
    if angles.size != n:
        raise GeometryError(f"{angles.size} angles for {n} projections")
    order = np.argsort(angles, kind="stable")
    if np.any(order != np.arange(n)):
        a, angles = a[xp.asarray(order)], angles[order]
    if method == "phase":
        return _center_phase(a, angles)
    if rows is None:
        rows = np.unique(np.linspace(n_rows * 0.35, n_rows * 0.65, min(5, n_rows)).round().astype(int))
    start, stop = search if search is not None else (n_cols / 2 - n_cols / 8, n_cols / 2 + n_cols / 8)
    if _is_numpy(xp):
        from algotom.prep.calculation import find_center_vo

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            found = [find_center_vo(a[:, int(r), :], start=start, stop=stop) for r in rows]
        return float(np.median(found))
    return float(np.median([_center_vo_xp(a[:, int(r), :], start, stop) for r in rows]))


def refine_center(attenuation, angles_deg, center, span=0.4, step=0.1, iterations=10, rows=None):
    """Sub-pixel refinement of a rotation-axis column by data consistency.

    A constant detector shift is no motion of the object over 0-180 degrees, so a wrong axis
    leaves a residual that no volume can fit: ``||b - A x_k||^2`` after ``iterations`` CGLS
    steps is smallest at the true axis. It is evaluated at ``center + [-span, span]`` in
    ``step`` pixels (the window moves once if the least residual lies at its end) and the
    minimum is located by a parabola through the least sample and its neighbours.
    ``rows``: the detector rows used (default: all up to 8 rows, else 5 around the middle third).
    Vo's search (``find_center``) works in 0.25-px steps and was 0.1-0.25 px off on 7 of 16 TXM
    variants; refined, 6 of those came within 0.06 px (``docs/design.md``, XANES notes).
    """
    from .iterative import cgls

    xp, a = _stack(attenuation, "attenuation")
    angles = np.asarray(backend.to_host(angles_deg), np.float64).ravel()
    n_rows = a.shape[1]
    if rows is None:
        rows = (np.arange(n_rows) if n_rows <= 8 else
                np.unique(np.linspace(n_rows * 0.35, n_rows * 0.65, 5).round().astype(int)))
    a = xp.ascontiguousarray(a[:, xp.asarray(np.asarray(rows, int))])
    n_cols = a.shape[2]

    def residual(c):
        out = []
        cgls(a, angles, center=float(c), iterations=int(iterations), callback=lambda k, v, r: out.append(r))
        return out[-1] ** 2

    c0 = float(center)
    offsets = np.arange(-span, span + step / 2, step)
    for _ in range(2):
        cands = np.clip(c0 + offsets, 0.0, n_cols - 1.0)
        res = np.array([residual(c) for c in cands])
        k = int(np.argmin(res))
        if 0 < k < res.size - 1:
            den = res[k - 1] - 2 * res[k] + res[k + 1]
            shift = 0.5 * step * (res[k - 1] - res[k + 1]) / den if den > 0 else 0.0
            return float(cands[k] + np.clip(shift, -step, step))
        c0 = float(cands[k])  # at the window's end: move the window there once
    return c0


def find_center_360(attenuation, angles_deg):
    """Rotation-axis column of a 360-degree scan whose axis may sit near a detector edge (half
    acquisition): algotom's ``find_center_360`` on the middle sinogram, on the host for both
    paths (one sinogram comes back from the device; correlating the 0 and 180 degree views
    fails when they overlap in a few columns only: 11 px off on a 48-px offset scan)."""
    xp, a = _stack(attenuation, "attenuation")
    from algotom.prep.calculation import find_center_360 as _algotom_360

    sino = backend.to_host(a[:, a.shape[1] // 2, :])
    width = max(8, a.shape[2] // 10)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(_algotom_360(sino, width, ncore=1)[0])


def _row_shifts(rows, refs, window=None):
    """Per row ``d`` with ``rows(x + d) ~ refs(x)``: cross-correlation of the tapered (Tukey, or
    ``(rows_window, refs_window)``), zero-padded rows (attenuation: air is 0), parabolic sub-pixel
    peak (a whitened phase correlation has a one-pixel-sharp peak that a parabola locates with up
    to 0.5 px bias: measured 0.45 px on a 64-px phantom, against <= 0.1 px for the plain
    correlation)."""
    from ..gpu_core.registration import peak_lag, tukey

    xp = backend.xp_of(rows)
    n = rows.shape[-1]
    m = 2 * n
    wa, wb = (tukey(n, xp), tukey(n, xp)) if window is None else window
    fa = xp.fft.rfft(rows * wa, m)
    fb = xp.fft.rfft(refs * wb, m)
    cross = fa * xp.conj(fb)
    corr = xp.fft.irfft(cross, m)
    k = xp.argmax(corr, axis=-1)
    idx = xp.arange(rows.shape[0])
    return peak_lag(k, m, lambda i: corr[idx, i % m], xp)


def _field_window(n, center, xp, alpha=0.25):
    """Tukey window over the columns both the 0 and the 180 degree view see for an axis at
    ``center``, ``[max(0, 2c - n + 1), min(n - 1, 2c)]``: symmetric about the axis, so the window
    of the mirrored view is the same window (a detector-centred taper on an off-centre axis
    weights the two views differently: 0.4 px bias measured at 7.5 px offset)."""
    lo, hi = max(0.0, 2.0 * center - (n - 1)), min(n - 1.0, 2.0 * center)
    x = xp.arange(n, dtype=xp.float64)
    t = xp.clip((x - lo) / max(hi - lo, 1.0), 0.0, 1.0)
    edge = alpha / 2.0
    w = xp.ones(n)
    w = xp.where(t < edge, 0.5 * (1.0 - xp.cos(np.pi * t / edge)), w)
    w = xp.where(t > 1.0 - edge, 0.5 * (1.0 - xp.cos(np.pi * (1.0 - t) / edge)), w)
    return xp.where((x < lo) | (x > hi), 0.0, w)


def _center_phase(a, angles):
    xp = backend.xp_of(a)
    step = np.median(np.diff(angles)) if angles.size > 1 else 1.0
    k = int(np.argmin(np.abs(angles - (angles[0] + 180.0))))
    if abs(angles[k] - angles[0] - 180.0) > 0.5 * step + 1e-6:
        raise GeometryError(
            f"phase-correlation centre needs views 180 degrees apart; the first is at {angles[0]:.2f} and the "
            f"nearest to +180 at {angles[k]:.2f}: use method='vo'")
    n = a.shape[2]
    first = xp.asarray(a[0], dtype=xp.float64)
    last = xp.asarray(a[k], dtype=xp.float64)
    # per detector row: mirrored(x + d) ~ first(x); the 180 view is the 0 view mirrored about
    # the axis, view180(v) = view0(2c - v), so mirrored(u) = view180(n-1-u) = view0(2c-n+1+u).
    # Pass 1 tapers at the detector edges; pass 2 (twice) windows both views over their common
    # field about the axis found, which removes the taper's bias for an off-centre axis.
    d = _row_shifts(last[:, ::-1], first)
    c = (n - 1 - float(xp.median(d))) / 2.0
    for _ in range(2):
        if not 0.0 <= c <= n - 1:
            break
        w = _field_window(n, c, xp)
        d = _row_shifts(last[:, ::-1], first, window=(w[::-1], w))
        c = (n - 1 - float(xp.median(d))) / 2.0
    return float(c)


def _vo_mask(height, width, radius, xp):
    """algotom's inverse double-wedge mask (vectorised)."""
    du = 1.0 / width
    dv = (height - 1.0) / (height * 2.0 * np.pi)
    ndrop = min(20, int(0.05 * height))
    yc, xc = int(np.ceil((height - 1) / 2.0)), int(np.ceil((width - 1) / 2.0))
    i = np.arange(height)
    num = np.ceil(((i - yc) * dv / radius) / du).astype(int)
    p1 = np.clip(np.minimum(-num + xc, num + xc), 0, width - 1)
    p2 = np.clip(np.maximum(-num + xc, num + xc), 0, width - 1)
    cols = np.arange(width)[None, :]
    mask = ((cols >= p1[:, None]) & (cols <= p2[:, None])).astype(np.float32)
    mask[yc - ndrop:yc + ndrop + 1, :] = 0.0
    mask[:, xc - 1:xc + 2] = 0.0
    return xp.asarray(mask)


def _vo_metrics(sino, sino_flip, sino_comp, centers, mask):
    """Vo's metric for every candidate centre at once: mean |FFT2| of [sino; shifted flip] in
    the double-wedge mask (cubic-spline shift replaced by an exact linear blend of the two
    integer shifts is not algotom's; here the shift is a Fourier shift along the columns)."""
    xp = backend.xp_of(sino)
    nrow, ncol = sino.shape
    shifts = 2.0 * (centers - (ncol - 1) / 2.0)  # (m,)
    freq = xp.fft.rfftfreq(2 * ncol)
    padded = xp.concatenate([sino_flip, sino_flip[:, ::-1]], axis=1)  # mirror-pad against wrap
    spec = xp.fft.rfft(padded, axis=1)
    shifted = xp.fft.irfft(spec[None] * xp.exp(-2j * np.pi * freq[None, None, :] * shifts[:, None, None]),
                           n=2 * ncol, axis=2)[..., :ncol]
    cols = xp.arange(ncol)[None, None, :]
    s = shifts[:, None, None]
    use_comp = xp.where(s >= 0, cols < xp.ceil(s), cols >= ncol + xp.floor(s))
    shifted = xp.where(use_comp, sino_comp[None], shifted)
    mat = xp.concatenate([xp.broadcast_to(sino, shifted.shape), shifted], axis=1)
    power = xp.abs(xp.fft.fftshift(xp.fft.fft2(mat, axes=(1, 2)), axes=(1, 2)))
    return (power * mask[None]).mean(axis=(1, 2))


def _vo_metrics_chunked(sino, cands, mask, budget=256 << 20):
    """``_vo_metrics`` over candidate chunks that fit ``budget`` bytes of temporaries."""
    xp = backend.xp_of(sino)
    per = 2 * sino.size * 40
    step = max(1, int(budget // per))
    return xp.concatenate([_vo_metrics(sino, sino[:, ::-1], sino[::-1], cands[i:i + step], mask)
                           for i in range(0, int(cands.size), step)])


def _center_vo_xp(sino, start, stop, ratio=0.5, radius=4, step=0.25):
    """Vo's coarse (whole pixels) then fine (``step``) centre search, batched over candidates."""
    xp = backend.xp_of(sino)
    ndi = ndimage_for(xp)
    nrow, ncol = sino.shape
    mask = _vo_mask(2 * nrow, ncol, 0.5 * ratio * ncol, xp)
    coarse = ndi.gaussian_filter(sino, (3, 1), mode="reflect")
    cands = xp.arange(int(np.clip(start, 0, ncol - 1)), int(np.clip(stop, 0, ncol - 1)) + 1, dtype=xp.float64)
    m = _vo_metrics_chunked(coarse, cands, mask)
    best = float(cands[int(xp.argmin(m))])
    fine = ndi.gaussian_filter(sino, (2, 2), mode="reflect")
    cands = xp.clip(best + xp.arange(-radius, radius + step, step), 0.0, ncol - 1.0)
    m = _vo_metrics_chunked(fine, cands, mask)
    return float(cands[int(xp.argmin(m))])


# --------------------------------------------------------------------------------- the chain
@dataclass
class XrayOptions:
    """What ``preprocess_xray`` does. ``None`` / False switches a step off.

    zingers : threshold of ``remove_zingers`` (e.g. 0.1), or None
    beam_background : background width (columns each side) or mask for ``normalize_beam``
    rings : one of ``RING_METHODS`` or None; ring_size : the sorting filter's width
    paganin : dict ``energy_kev, distance_m, pixel_size_m, delta_beta``, or None
    fold_360 : fold a 360-degree scan to 180 degrees (needs the centre: found by ``find_center``
        on the 0-180 half when not given)
    center : a column, or "auto" to find it with ``center_method``
    """

    zingers: float | None = None
    beam_background: object = None
    rings: str | None = None
    ring_size: int | None = None
    paganin: dict | None = None
    fold_360: bool = False
    center: object = None
    center_method: str = "vo"


def preprocess_xray(projections, angles_deg, flats=None, darks=None, flats_after=None, options=None):
    """The X-ray chain on raw counts -> ``(attenuation (n, rows, cols) float32, angles, center)``.

    ``center`` is the given column, the found one (``options.center == "auto"``), or None. Flats
    and darks pass through ``remove_zingers`` too when zingers are removed.
    """
    opt = options or XrayOptions()
    xp, raw = _stack(projections)
    angles = np.asarray(backend.to_host(angles_deg), np.float64).ravel()
    if opt.zingers:
        raw = remove_zingers(raw, opt.zingers)
        flats = None if flats is None else remove_zingers(flats, opt.zingers)
        flats_after = None if flats_after is None else remove_zingers(flats_after, opt.zingers)
    t = raw if flats is None else flat_dark_correct(raw, flats, darks, flats_after)
    if opt.beam_background is not None:
        t = normalize_beam(t, opt.beam_background)
    if opt.rings:
        t = remove_rings(t, opt.rings, size=opt.ring_size)
    if opt.paganin:
        t = paganin(t, **opt.paganin)
    att = -xp.log(xp.maximum(t, xp.float32(FLOOR)))
    center = opt.center
    if opt.fold_360:
        if center is None or center == "auto":
            c = find_center_360(att, angles)
        else:
            c = float(center)
        att, center = sinogram_360_to_180(att, c)
        angles = angles[: att.shape[0]]
    elif center == "auto":
        center = find_center(att, angles, opt.center_method)
    return att.astype(xp.float32), angles, (None if center is None else float(center))
