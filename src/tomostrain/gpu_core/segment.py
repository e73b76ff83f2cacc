"""Segmentation: Otsu / multi-Otsu thresholds, connected components, distance transform and a
watershed split of touching particles.

Arrays stay on their device (NumPy or CuPy). Histograms are built on the device; the threshold
search over the (tiny) histogram runs on the host with scikit-image. ``split_particles`` runs the
watershed on the host (scikit-image has no GPU twin): a CuPy mask is copied to the host and the
labels copied back.
"""
from __future__ import annotations

import numpy as np

from ..errors import InputError
from .backend import to_host, xp_of
from .filters import as_float_image, ndimage_for


def _histogram(volume, nbins: int):
    """Host ``(counts, bin_centres, bin_width)`` of the finite float32 image ``volume`` over [min, max]."""
    if int(nbins) != nbins or nbins < 2:
        raise InputError(f"nbins must be an integer >= 2, got {nbins!r}")
    xp = xp_of(volume)
    lo, hi = float(volume.min()), float(volume.max())
    if not hi > lo:
        raise InputError(f"cannot threshold a constant image (all values {lo})")
    counts, edges = xp.histogram(volume, bins=int(nbins), range=(lo, hi))
    counts, edges = to_host(counts), to_host(edges)
    return counts, (edges[:-1] + edges[1:]) / 2, (hi - lo) / nbins


def otsu(volume, nbins: int = 256) -> float:
    """Otsu threshold (in the data's units) of a 2D/3D image; foreground is ``volume > threshold``.

    The search runs over an ``nbins`` histogram (scikit-image); the threshold returned is the upper
    edge of the last bin of the lower class (scikit-image reports that bin's centre), so
    ``volume > threshold`` is exactly the partition the search optimised.
    """
    from skimage.filters import threshold_otsu

    arr = as_float_image(volume)
    counts, centres, width = _histogram(arr, nbins)
    return float(threshold_otsu(hist=(counts, centres)) + width / 2)


def multi_otsu(volume, classes: int = 3, nbins: int = 256):
    """Multi-Otsu thresholds and the labelled image.

    Returns ``(thresholds, labels)``: ``thresholds`` a host float64 array of ``classes - 1``
    increasing values (data units), each the upper edge of the last ``nbins``-histogram bin of a
    class (as in :func:`otsu`); ``labels`` uint8 on the input's device, 0 .. classes-1 in order
    of increasing intensity: ``labels > k`` exactly where ``volume > thresholds[k]``.
    """
    from skimage.filters import threshold_multiotsu

    if int(classes) != classes or not 2 <= classes <= 255:
        raise InputError(f"classes must be an integer in [2, 255], got {classes!r}")
    arr = as_float_image(volume)
    xp = xp_of(arr)
    counts, centres, width = _histogram(arr, nbins)
    if np.count_nonzero(counts) < classes:
        raise InputError(f"the image has fewer than {classes} distinct intensity levels; cannot find {classes} classes")
    found = threshold_multiotsu(hist=(counts, centres), classes=int(classes))
    thresholds = np.asarray(found, dtype=np.float64) + width / 2
    labels = xp.searchsorted(xp.asarray(thresholds, dtype=xp.float32), arr, side="left").astype(xp.uint8)
    return thresholds, labels


def _as_mask(mask, name: str = "mask"):
    xp = xp_of(mask)
    arr = xp.asarray(mask)
    if arr.ndim not in (2, 3) or arr.size == 0:
        raise InputError(f"{name} must be a non-empty 2D or 3D array, got shape {arr.shape}")
    if arr.dtype.kind not in "biu":
        raise InputError(f"{name} must be boolean or integer (nonzero = foreground), got dtype {arr.dtype}")
    return arr != 0


def label(mask, connectivity: int = 1):
    """Connected components of ``mask`` (nonzero = foreground).

    ``connectivity`` 1 joins face neighbours, ``mask.ndim`` joins all neighbours (26 in 3D).
    Returns ``(labels int32, n)``: 0 background, components 1..n.
    """
    m = _as_mask(mask)
    if not 1 <= connectivity <= m.ndim:
        raise InputError(f"connectivity must be in 1..{m.ndim}, got {connectivity!r}")
    xp = xp_of(m)
    ndi = ndimage_for(xp)
    structure = ndi.generate_binary_structure(m.ndim, connectivity)
    labels, n = ndi.label(m, structure=structure)
    return labels.astype(xp.int32, copy=False), int(n)


def distance_transform(mask, sampling=None):
    """Euclidean distance (float32) from each foreground voxel to the nearest background voxel
    centre; 0 on the background. ``sampling``: voxel size per axis (default 1: voxel units).
    Voxels beyond the array edge do not count as background."""
    m = _as_mask(mask)
    xp = xp_of(m)
    if not bool((~m).any()):
        raise InputError("distance_transform needs at least one background (zero) voxel in the mask")
    dist = ndimage_for(xp).distance_transform_edt(m, sampling=sampling)
    return dist.astype(xp.float32, copy=False)


def split_particles(mask, min_distance: int = 3, connectivity: int = 1):
    """Split touching convex particles by a watershed on the distance transform.

    Markers are the maxima of the distance transform at least ``min_distance`` voxels apart,
    found per connected component (so every component gets at least one); ``-distance`` is flooded
    from them inside the mask. Choose ``min_distance`` below the smallest particle radius. Runs on
    the host (scikit-image); a CuPy mask comes back as CuPy labels.

    Returns ``(labels int32, n)``: 0 background, particles 1..n.
    """
    from skimage.feature import peak_local_max
    from skimage.segmentation import watershed

    if int(min_distance) != min_distance or min_distance < 1:
        raise InputError(f"min_distance must be an integer >= 1 voxel, got {min_distance!r}")
    m = _as_mask(mask)
    xp = xp_of(m)
    host = to_host(m)
    comps, n = label(host, connectivity)
    if n == 0:
        return xp.zeros(m.shape, xp.int32), 0
    dist = distance_transform(np.pad(host, 1))[(slice(1, -1),) * host.ndim]
    peaks = peak_local_max(dist, min_distance=int(min_distance), labels=comps, exclude_border=False)
    markers = np.zeros(host.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    ndi = ndimage_for(np)
    conn = ndi.generate_binary_structure(host.ndim, connectivity)
    labels = watershed(-dist, markers, mask=host, connectivity=conn).astype(np.int32)
    return xp.asarray(labels), int(labels.max())
