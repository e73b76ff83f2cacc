"""Registration helpers shared by alignment, kinetics and calibration (NumPy or CuPy via ``xp``).

Sub-pixel cross-correlation shifts of batches of 1D profiles and 2D images, a parabolic peak
interpolator and a Tukey taper. Sign convention: a returned shift ``d`` satisfies
``image(p + d) ~ reference(p)`` (2D) and ``profile(t) ~ reference(t - d)`` (1D).
"""
from __future__ import annotations

import numpy as np

from . import backend


def peak_lag(k, size, value_at, xp):
    """Sub-pixel lag of a correlation peak found at integer index ``k`` on a periodic axis of
    ``size`` (``value_at(i)`` reads the correlation at index ``i``): vertex of the parabola through
    the peak and its neighbours, wrapped to ``(-size / 2, size / 2]``."""
    c0, cm, cp = value_at(k), value_at(k - 1), value_at(k + 1)
    den = cm - 2.0 * c0 + cp
    off = xp.where(den < 0, 0.5 * (cm - cp) / xp.where(den < 0, den, -1.0), 0.0)
    d = k + xp.clip(off, -0.5, 0.5)
    return xp.where(d > size / 2, d - size, d)


def tukey(n, xp, alpha=0.25):
    """Tukey window of length n: flat middle, cosine tapers over ``alpha / 2`` of each end."""
    x = xp.linspace(0.0, 1.0, n)
    w = xp.ones(n)
    edge = alpha / 2.0
    lo, hi = x < edge, x > 1.0 - edge
    w[lo] = 0.5 * (1.0 - xp.cos(np.pi * x[lo] / edge))
    w[hi] = 0.5 * (1.0 - xp.cos(np.pi * (1.0 - x[hi]) / edge))
    return w


def shift_1d(profiles, reference, xp):
    """Sub-pixel shift of each profile relative to ``reference`` (profile(t) ~ reference(t - d)):
    zero-padded FFT cross-correlation, parabola through the peak and its neighbours."""
    n, length = profiles.shape
    m = 2 * length
    corr = xp.fft.irfft(xp.fft.rfft(profiles, m) * xp.conj(xp.fft.rfft(reference, m))[None, :], m)
    k = xp.argmax(corr, axis=1)
    rows = xp.arange(n)
    return peak_lag(k, m, lambda i: corr[rows, i % m], xp)


def fourier_shift_1d(profiles, d, xp):
    """Profiles moved by ``-d`` (undo a shift of ``d``), exactly, zero-padded against wrap-around."""
    n, length = profiles.shape
    m = 2 * length
    f = xp.fft.rfftfreq(m)[None, :]
    spec = xp.fft.rfft(profiles, m) * xp.exp(2j * np.pi * f * d[:, None])
    return xp.fft.irfft(spec, m)[:, :length]


def shift_2d(images, references, xp, window=None, *, weights=None, whiten=False, lowpass_px=None,
             highpass_px=None):
    """(n, 2) host array: the displacement ``d`` with ``image(p + d) ~ reference(p)``, by FFT
    cross-correlation of Tukey-tapered images and a parabola through the peak in y and in x.

    Options (``shift_nd``): ``weights`` a mask applied to both after removing its weighted mean
    (to register on stable content only), ``whiten`` phase correlation, ``lowpass_px`` and
    ``highpass_px`` Gaussian band limits (pixels) of the correlation; the defaults give the plain
    cross-correlation. ``window``: the taper, (ny, nx) or (n, ny, nx); default a Tukey window in y
    times one in x.
    """
    return shift_nd(images, references, xp, weights=weights, whiten=whiten, lowpass_px=lowpass_px,
                    highpass_px=highpass_px, window=window)


def shift_nd(images, references, xp, *, weights=None, whiten=False, lowpass_px=None, highpass_px=None,
             max_shift=None, window=None):
    """(n, ndim) host array: the displacement ``d`` (pixels, axis order of the images) with
    ``image(p + d) ~ reference(p)`` for a batch ``(n, *shape)`` of 2D images or 3D volumes.

    Both are multiplied by a Tukey taper (and by ``weights``, shape ``shape`` or ``(n, *shape)``,
    after subtracting their weighted means), cross-correlated by zero-padded FFTs, optionally
    whitened (phase correlation: the cross-power spectrum divided by its modulus, which lets fine
    static texture outweigh a few large moving edges) and low-passed by a Gaussian of
    ``lowpass_px`` pixels (a smooth peak for the parabola) and high-passed (structures larger than
    ``highpass_px`` pixels removed: illumination gradients and other patterns fixed to the detector
    would otherwise pull the peak to zero shift), and the peak refined by a parabola
    along each axis. ``references`` has the shape of ``images`` or ``shape`` (one for all).
    ``max_shift`` (pixels) limits the search to displacements no larger than that on every axis.
    ``window`` replaces the Tukey taper (shape ``shape`` or ``(n, *shape)``).
    """
    n, *shape = images.shape
    ndim = len(shape)
    win = None if window is None else xp.asarray(window, dtype=xp.float32)
    for axis, size in enumerate(shape if window is None else ()):
        w = tukey(size, xp).astype(xp.float32).reshape([-1 if a == axis else 1 for a in range(ndim)])
        win = w if win is None else win * w
    if whiten:  # the taper of a bright mean would otherwise add a peak at zero shift
        axes_ = tuple(range(-ndim, 0))
        images = images - images.mean(axis=axes_, keepdims=True)
        references = references - references.mean(axis=axes_, keepdims=True)
    a = images * win
    b = references * win
    if weights is not None:
        wt = weights * win
        wsum = wt.sum(axis=tuple(range(-ndim, 0)), keepdims=True) + 1e-12
        a = (images - (images * wt).sum(axis=tuple(range(-ndim, 0)), keepdims=True) / wsum) * wt
        b = (references - (references * wt).sum(axis=tuple(range(-ndim, 0)), keepdims=True) / wsum) * wt
    pad = [2 * s for s in shape]
    axes = tuple(range(-ndim, 0))
    fa = xp.fft.rfftn(a, s=pad, axes=axes)
    fb = xp.fft.rfftn(b, s=pad, axes=axes)
    cross = fa * xp.conj(fb)
    if whiten:
        cross = cross / (xp.abs(cross) + 1e-6 * float(xp.abs(cross).max()))
    if lowpass_px or highpass_px:
        f2 = 0.0
        for axis, size in enumerate(pad):
            f = xp.fft.rfftfreq(size) if axis == ndim - 1 else xp.fft.fftfreq(size)
            f2 = f2 + (f ** 2).reshape([-1 if i == axis else 1 for i in range(ndim)])
        g = xp.exp(-2.0 * np.pi ** 2 * (lowpass_px or 0.0) ** 2 * f2)
        if highpass_px:
            g = g * (1.0 - xp.exp(-2.0 * np.pi ** 2 * highpass_px ** 2 * f2))
        cross = cross * g
    corr = xp.fft.irfftn(cross, s=pad, axes=axes)
    if max_shift is not None:
        far = None
        for axis, size in enumerate(pad):
            lag = xp.abs(xp.fft.fftfreq(size) * size).reshape([-1 if i == axis else 1 for i in range(ndim)])
            f = lag > max_shift
            far = f if far is None else far | f
        corr = xp.where(far, -xp.inf, corr)
    flat = xp.argmax(corr.reshape(corr.shape[0], -1), axis=1)
    peak = xp.unravel_index(flat, tuple(pad))
    rows = xp.arange(corr.shape[0])
    out = []
    for axis, size in enumerate(pad):
        def value_at(i, axis=axis, size=size):
            idx = [rows] + [i % size if a == axis else peak[a] for a in range(ndim)]
            return corr[tuple(idx)]
        out.append(peak_lag(peak[axis], size, value_at, xp))
    return backend.to_host(xp.stack(out, 1)).astype(np.float64)
