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


def shift_2d(images, references, xp, window=None):
    """(n, 2) host array: the displacement ``d`` with ``image(p + d) ~ reference(p)``, by FFT
    cross-correlation of Tukey-tapered images and a parabola through the peak in y and in x.
    ``window``: the taper, (ny, nx) or (n, ny, nx); default a Tukey window in y times one in x."""
    n, ny, nx = images.shape
    if window is None:
        win = (tukey(ny, xp)[:, None] * tukey(nx, xp)[None, :]).astype(xp.float32)
    else:
        win = xp.asarray(window, dtype=xp.float32)
    fa = xp.fft.rfft2(images * win, s=(2 * ny, 2 * nx))
    fb = xp.fft.rfft2(references * win, s=(2 * ny, 2 * nx))
    corr = xp.fft.irfft2(fa * xp.conj(fb), s=(2 * ny, 2 * nx))
    flat = xp.argmax(corr.reshape(n, -1), axis=1)
    ky, kx = flat // (2 * nx), flat % (2 * nx)
    rows = xp.arange(n)
    dy = peak_lag(ky, 2 * ny, lambda i: corr[rows, i % (2 * ny), kx], xp)
    dx = peak_lag(kx, 2 * nx, lambda i: corr[rows, ky, i % (2 * nx)], xp)
    return backend.to_host(xp.stack([dy, dx], 1)).astype(np.float64)
