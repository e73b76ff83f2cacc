"""Denoising before segmentation: Gaussian, median and total-variation (Chambolle) filters.

Each function runs where its input lives (NumPy -> scipy.ndimage, CuPy -> cupyx.scipy.ndimage)
and returns a new float32 array of the same shape; the input is never modified. Lengths (sigma,
size) are in voxels along each axis of the array as given (``[y, z, x]`` for volumes).
"""
from __future__ import annotations

import numpy as np

from ..errors import InputError
from .backend import to_host as be_host, xp_of


def ndimage_for(xp):
    """``scipy.ndimage`` for NumPy, ``cupyx.scipy.ndimage`` for CuPy."""
    if xp is np:
        from scipy import ndimage

        return ndimage
    from cupyx.scipy import ndimage

    return ndimage


def as_float_image(volume, name: str = "volume"):
    """``volume`` as a float32 array on its own device; raises InputError if it is not a finite
    numeric array of at least 2 dimensions."""
    xp = xp_of(volume)
    arr = xp.asarray(volume)
    if arr.ndim < 2 or arr.size == 0:
        raise InputError(f"{name} must be a non-empty 2D or 3D array, got shape {arr.shape}")
    if arr.dtype.kind not in "biuf":
        raise InputError(f"{name} must be numeric, got dtype {arr.dtype}")
    arr = arr.astype(xp.float32, copy=False)
    if not bool(xp.isfinite(arr).all()):
        raise InputError(f"{name} contains NaN or Inf; clean or mask it before filtering")
    return arr


def gaussian(volume, sigma):
    """Gaussian filter, standard deviation ``sigma`` voxels (scalar or one per axis), edges reflected."""
    arr = as_float_image(volume)
    if np.any(np.asarray(sigma, dtype=float) < 0):
        raise InputError(f"sigma must be >= 0 voxels, got {sigma!r}")
    return ndimage_for(xp_of(arr)).gaussian_filter(arr, sigma, mode="reflect")


def median(volume, size):
    """Median filter over a box of ``size`` voxels (odd integer or one per axis), edges reflected."""
    arr = as_float_image(volume)
    if np.any(np.asarray(size) < 1):
        raise InputError(f"size must be >= 1 voxel, got {size!r}")
    return ndimage_for(xp_of(arr)).median_filter(arr, size=size, mode="reflect")


def tv_denoise(volume, weight, *, eps: float = 2e-4, max_iter: int = 200, stack: bool = False, dtype=np.float32):
    """Total-variation denoising by Chambolle's projection algorithm (J. Math. Imaging Vis. 2004).

    Minimises ``||u - f||^2 / 2 + weight * TV(u)`` (isotropic TV, forward differences, Neumann
    edges) over all axes. ``weight`` is in the units of the data: larger removes more noise and
    flattens more texture. Stops when the relative energy change falls below ``eps`` or after
    ``max_iter`` iterations. Same algorithm and stopping rule as
    ``skimage.restoration.denoise_tv_chambolle``, written once for NumPy and CuPy.

    ``stack=True``: axis 0 indexes independent images (e.g. the (k, ny, nx) score maps of a PCA),
    all denoised at once (the differences run only along the other axes, so the images do not
    mix); ``weight`` is then a scalar or one weight per image, and the stopping rule uses the
    energy summed over the stack. ``dtype``: the working and returned precision (float32 by
    default; float64 for callers that need it).
    """
    f = as_float_image(volume)          # validated (finite, numeric, >= 2-D) float32
    xp = xp_of(f)
    if np.dtype(dtype) != np.float32:
        f = xp.asarray(volume).astype(dtype)
    w_arr = np.asarray(be_host(weight), dtype=np.float64)
    if not np.all(w_arr > 0):
        raise InputError(f"weight must be > 0, got {weight!r}")
    if stack:
        if f.ndim < 3:
            raise InputError(f"stack=True needs a (n_images, ...) array of 2-D or 3-D images, got shape {f.shape}")
        if w_arr.ndim > 1 or (w_arr.ndim == 1 and w_arr.size != f.shape[0]):
            raise InputError(f"weight needs one value per image ({f.shape[0]}), got shape {w_arr.shape}")
        return _tv_chambolle_stack(f, xp.asarray(w_arr.reshape((-1,) + (1,) * (f.ndim - 1)), dtype=dtype),
                                   eps, max_iter, xp)
    if w_arr.ndim:
        raise InputError(f"weight must be a scalar without stack=True, got shape {w_arr.shape}")
    # one image: a stack of one (the same iteration and stopping rule)
    return _tv_chambolle_stack(f[None], xp.asarray(w_arr.reshape((1,) * (f.ndim + 1)), dtype=dtype),
                               eps, max_iter, xp)[0]


def _tv_chambolle_stack(f, w, eps, max_iter, xp):
    """Chambolle's iteration for every image ``f[j]`` of a stack at once, weights ``w`` (n, 1, ...):
    the differences run along axes 1.. only (the images do not mix), the energy is summed over
    the stack."""
    nd = f.ndim - 1
    tau = 1.0 / (2.0 * nd)
    p = xp.zeros((nd,) + f.shape, dtype=f.dtype)
    g = xp.zeros_like(p)
    out = f
    e_init = e_prev = None
    for i in range(max_iter):   # iterations, over all images and pixels at once
        d = xp.zeros_like(f)
        if i > 0:
            d -= p.sum(0)
            for ax in range(nd):
                dst = [slice(None)] * f.ndim
                src = [slice(None)] * f.ndim
                dst[ax + 1], src[ax + 1] = slice(1, None), slice(0, -1)
                d[tuple(dst)] += p[ax][tuple(src)]
            out = f + d
        for ax in range(nd):
            sl = [slice(None)] * f.ndim
            sl[ax + 1] = slice(0, -1)
            g[ax][tuple(sl)] = xp.diff(out, axis=ax + 1)
        norm = xp.sqrt((g * g).sum(0))
        energy = (float((d * d).sum()) + float((w * norm).sum())) / f.size
        p -= tau * g
        p /= 1.0 + norm * (tau / w)
        if i == 0:
            e_init = e_prev = energy
        elif abs(e_prev - energy) < eps * e_init:
            break
        else:
            e_prev = energy
    return out.copy() if out is f else out
