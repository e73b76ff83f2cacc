"""Envelope-first phase segmentation of a reconstructed particle, with a blob detector for the
small dense Ni particles.

Why not a histogram over the whole volume: a particle that fills a few per cent of the volume
gives a histogram that is almost all vacuum, and Ni particles that own 1-3 % of the solid voxels
form no mode, so global classes do not line up with phases. The steps here:

1. **Vacuum level** ``mu0``: the mode of the (lightly smoothed) volume's histogram; vacuum is
   the largest phase in any tomogram of a particle. Its noise ``sigma0`` from the spread below the
   mode (one-sided MAD), which missing-wedge streaks (mostly positive, outside the particle) do not
   inflate.
2. **Envelope** (vacuum/solid): ``smooth > (mu0 + L_lowest) / 2``, the midpoint between vacuum
   and the lightest solid phase, then holes filled and fragments smaller than 1 % of the largest
   body (and not holding a Ni detection) removed. ``L_lowest`` comes from step 3, so 2-3 are
   iterated from an Otsu start (3 rounds).
3. **Classes inside the envelope**: multi-Otsu over the envelope's inner voxels only (its outer
   voxel layer excluded: partial volume; with particle detection also the brightest 1 %, where
   the few Ni voxels sit), giving the solid levels (medians per class) and thresholds at the
   midpoints between them. Each level is then re-read as the median of its class's interior
   (class voxels whose 6 neighbours share the class, when there are >= 1000: a thin core's
   blurred rim pulls the histogram median down). When the densest class is mostly small blobs
   at the surface (a sharp TV/DART volume whose Ni owns more than the trimmed 1 %), those blobs
   leave the histogram and the classes are redone. When the densities are known (``levels``)
   the thresholds are their midpoints instead (DART-style).
4. **Ni particles** (``particles=True``): a scale-normalised Laplacian of Gaussian
   (``-sum sigma^2 LoG_sigma``, sigma 1 and 1.5 voxels) responds to bright blobs of 1-4 voxel
   radius about as strongly as their density contrast, and to a core edge or corner at most about
   60 % of the core's (a shelled core; a bare dense corner on vacuum would count). Candidates
   are voxels above ``blob_threshold`` x the densest body level, no deeper than ``MAX_RADIUS``
   below the envelope surface (a Ni particle rests on the surface); markers are the LoG maxima
   among them, joined within ``MARKER_JOIN`` voxels (one large particle, one marker); each Ni
   particle is the marker-watershed basin of the local contrast (white top-hat, box of 9
   voxels), within ``MAX_RADIUS`` of its marker and cut at half its peak contrast, so touching
   particles of radius >= 2.5 voxels stay apart.
5. Surface: the envelope's one-voxel surface layer (away from the Ni) re-decided on a Gaussian
   of 0.7 voxel (``REFINE_SIGMA``): the envelope's Gaussian of 1 fills concave dips and rounds
   convex edges, which puts deep voxels too deep.
6. Labels: uint8, 0 vacuum, then the body classes, the Ni class last (DESIGN.md §3: increasing
   density). Ni voxels below the midpoint of the densest body level and their particle's peak,
   connected to the core, go back to the body (``CORE_TRIM``: a thin plate's core beside a
   particle passes the half-contrast cut). Voxels of the densest body class that touch a Ni
   particle (its blurred halo) go to the class below; voxels within 2 of a particle are vacuum
   when the mean of their own value and of their Ni-free neighbourhood (a Gaussian normalised
   over the voxels outside that ring) is below ``t_env + HALO_CUT (L_lowest - t_env)``: the blur
   into the vacuum, not the shell beside and under the particle.

Runs where the volume lives (NumPy or CuPy via ``cupyx.scipy.ndimage``); the marker watershed
runs on the host (scikit-image), on the Ni candidates' bounding region only.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InputError
from .backend import to_host, xp_of
from .filters import as_float_image, ndimage_for

ENVELOPE_SIGMA = 1.0     # Gaussian smoothing for the vacuum/solid decision, voxels
CLASS_SIGMA = 0.0        # Gaussian smoothing for the classes inside, voxels
BLOB_SIGMAS = (1.0, 1.5)  # LoG scales of the Ni detector, voxels (radii ~1-4 voxels)
BLOB_THRESHOLD = 0.7     # Ni marker: LoG response above this fraction of the densest body level
MIDPOINTS = True
HALO = True
HALO_SIGMA = 1.0         # Ni halo: Gaussian of the Ni-free neighbourhood (normalised convolution), voxels
HALO_CUT = 0.25          # Ni halo: vacuum below t_env + HALO_CUT (lightest level - t_env)
CORE_TRIM = True         # Ni voxels at the core's level beside the core go back to the body
REFINE_SIGMA = 0.7       # the envelope's one-voxel surface layer re-decided on this Gaussian (None: off)
MARKER_JOIN = 5.0       # Ni markers closer than this (voxels) belong to one particle
MAX_RADIUS = 4.5        # largest Ni radius the detector expects, voxels
FRAGMENT = 20           # class fragments smaller than this (voxels) are noise
TOPHAT_SIZE = 9          # box edge (voxels) of the local background for the Ni contrast


@dataclass
class PhaseSegmentation:
    """Result of :func:`segment_phases`.

    labels: uint8 on the volume's device (0 vacuum, body classes, Ni last when detected).
    levels: host float64 grey level per label (vacuum first; the Ni level is the median peak of
        the detected particles). thresholds: the body thresholds (vacuum/solid first).
    envelope: boolean particle envelope (device). particles: int32 Ni particle labels (device),
        0 elsewhere; n_particles their number.
    """

    labels: object
    levels: np.ndarray
    thresholds: np.ndarray
    envelope: object
    particles: object
    n_particles: int


def vacuum_level(volume) -> tuple[float, float]:
    """``(mode, noise)`` of the vacuum: the histogram mode of ``volume`` and the one-sided
    spread (1.4826 x median absolute deviation of the values below the mode)."""
    arr = as_float_image(volume)
    xp = xp_of(arr)
    lo, hi = float(xp.percentile(arr, 0.1)), float(xp.percentile(arr, 99.9))
    if not hi > lo:
        raise InputError("cannot segment a constant volume")
    counts, edges = xp.histogram(arr, bins=512, range=(lo, hi))
    counts, edges = to_host(counts), to_host(edges)
    k = int(np.argmax(counts))
    mode = float((edges[k] + edges[k + 1]) / 2)
    below = arr[arr <= mode]
    noise = 1.4826 * float(xp.median(mode - below)) if below.size else 0.0
    return mode, max(noise, (hi - lo) / 512)


def _fill_and_clean(mask, keep, ndi, xp):
    """Fill holes, drop components below 1 % of the largest that hold no ``keep`` voxel."""
    mask = ndi.binary_fill_holes(mask)
    comps, n = ndi.label(mask)
    if n > 1:
        sizes = xp.bincount(comps.ravel())
        sizes[0] = 0
        big = sizes >= 0.01 * sizes.max()
        if keep is not None:
            held = xp.bincount(comps[keep].ravel(), minlength=n + 1) > 0
            big |= held
        big[0] = False
        mask = big[comps]
    return mask


def blob_response(volume, sigmas=BLOB_SIGMAS):
    """Scale-normalised LoG blob response ``-sum_s s^2 LoG_s(volume)`` (float32): a bright ball of
    radius ~1-4 voxels and density contrast c gives a peak ~c."""
    arr = as_float_image(volume)
    ndi = ndimage_for(xp_of(arr))
    out = None
    for s in sigmas:
        r = ndi.gaussian_laplace(arr, s) * (-(s * s))
        out = r if out is None else out + r
    return out


def detect_particles(volume, envelope, body_level: float, *, threshold=BLOB_THRESHOLD, min_voxels: int = 3):
    """Small dense particles: LoG markers above ``threshold * body_level``, split by a marker
    watershed of the local contrast and cut at half of each particle's peak contrast.

    Returns ``(labels int32 on the volume's device, n)``. Only candidates inside the envelope
    dilated by 2 voxels count (a Ni particle rests on the surface)."""
    from skimage.segmentation import watershed

    arr = as_float_image(volume)
    xp = xp_of(arr)
    ndi = ndimage_for(xp)
    resp = blob_response(arr)
    # a Ni particle rests on the surface: its centre lies outside the body or less than its
    # radius (<= MAX_RADIUS) below the envelope's surface, never deep inside
    near = ndi.binary_dilation(envelope, iterations=2) & (ndi.distance_transform_edt(envelope) <= MAX_RADIUS + 0.5)
    cand = (resp > threshold * body_level) & near
    smooth = ndi.gaussian_filter(arr, CLASS_SIGMA) if CLASS_SIGMA else arr
    contrast = smooth - ndi.maximum_filter(ndi.minimum_filter(smooth, TOPHAT_SIZE), TOPHAT_SIZE)
    if not bool(cand.any()):
        return xp.zeros(arr.shape, xp.int32), 0
    low = (contrast > 0.25 * threshold * body_level) | cand
    # the markers and the watershed on the host, over the candidates' bounding box only
    idx = xp.argwhere(low)
    lo = np.maximum(to_host(idx.min(0)).astype(int) - 2, 0)
    hi = to_host(idx.max(0)).astype(int) + 3
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    # one marker per blob: the LoG maxima (at least 3 voxels apart), joined when closer than
    # MARKER_JOIN voxels (two maxima of one large particle); touching particles of radius
    # >= MARKER_JOIN / 2 keep one marker each and the watershed splits them
    ndh = ndimage_for(np)
    resp_host = to_host(resp[box])
    cand_host = to_host(cand[box])
    peaks = (resp_host == ndh.maximum_filter(resp_host, size=5)) & cand_host
    joined = ndh.binary_dilation(peaks, structure=_ball_structure((MARKER_JOIN - 1) / 2, arr.ndim)) & cand_host
    m_host, n = ndh.label(joined, structure=np.ones((3,) * arr.ndim, bool))
    if n == 0:
        return xp.zeros(arr.shape, xp.int32), 0
    c_host = to_host(contrast[box])
    m_host = m_host.astype(np.int32)
    reach = ndh.binary_dilation(peaks, structure=_ball_structure(MAX_RADIUS, arr.ndim))  # a particle's extent
    mask_host = (to_host(low[box]) & reach) | joined
    basins = watershed(-c_host, m_host, mask=mask_host)
    peak_c = np.zeros(n + 1)
    peak_c[1:] = ndimage_for(np).maximum(c_host, basins, np.arange(1, n + 1))
    keep = (basins > 0) & (c_host >= 0.5 * peak_c[basins])
    basins = np.where(keep, basins, 0)
    sizes = np.bincount(basins.ravel(), minlength=n + 1)
    good = sizes >= min_voxels
    good[0] = False
    remap = np.zeros(n + 1, np.int32)
    remap[good] = np.arange(1, int(good.sum()) + 1)
    out = xp.zeros(arr.shape, xp.int32)
    out[box] = xp.asarray(remap[basins])
    return out, int(good.sum())


def _clean_classes(labels, body, n_body, ndi, xp):
    """Noise islands out of the body classes, in place: a fragment of a class smaller than
    ``FRAGMENT`` voxels that sits inside another class's region takes the class below (the
    densest classes' specks in the shell) or above (a lighter speck enclosed in the core)."""
    six = ndi.generate_binary_structure(labels.ndim, 1)
    for k in range(n_body, 1, -1):  # dense specks in lighter material go one class down
        comps, n = ndi.label(labels == k, structure=six)
        if n:
            small = xp.bincount(comps.ravel()) < FRAGMENT
            small[0] = False
            labels[small[comps]] = k - 1
    for k in range(1, n_body):  # light specks enclosed by denser material go one class up
        inner = body & (labels <= k)
        comps, n = ndi.label(inner, structure=six)
        if n:
            sizes = xp.bincount(comps.ravel())
            small = sizes < FRAGMENT
            small[0] = False
            # only islands that do not touch the vacuum
            touching = xp.zeros(n + 1, bool)
            edge = ndi.binary_dilation(~body, structure=six) & inner
            touching[xp.unique(comps[edge])] = True
            small &= ~touching
            labels[small[comps] & (labels == k)] = k + 1


def _ball_structure(radius: float, ndim: int):
    r = int(np.floor(radius))
    g = np.indices((2 * r + 1,) * ndim) - r
    return (g**2).sum(0) <= radius**2


def segment_phases(volume, classes: int = 4, *, levels=None, particles: bool | None = None,
                   blob_threshold: float = BLOB_THRESHOLD) -> PhaseSegmentation:
    """Envelope-first segmentation of a particle tomogram into ``classes`` labels (vacuum
    included); see the module docstring for the steps.

    classes: number of labels including vacuum (>= 2). particles: detect the densest class as
        small blobs (default: ``classes >= 4``); it is then the last label.
    levels: the known grey levels of all ``classes`` labels (ascending, vacuum first), e.g. the
        phase densities; the thresholds are then their midpoints and no histogram is used.
    """
    if int(classes) != classes or not 2 <= classes <= 16:
        raise InputError(f"classes must be an integer in [2, 16], got {classes!r}")
    classes = int(classes)
    particles = classes >= 4 if particles is None else bool(particles)
    if particles and classes < 3:
        raise InputError("particle detection needs at least 3 classes (vacuum, a body, particles)")
    arr = as_float_image(volume)
    if arr.ndim != 3:
        raise InputError(f"segment_phases needs a 3D volume, got shape {arr.shape}")
    xp = xp_of(arr)
    ndi = ndimage_for(xp)
    n_body = classes - 1 - int(particles)
    if levels is not None:
        levels = np.sort(np.asarray(levels, np.float64))
        if levels.shape != (classes,) or not np.isfinite(levels).all():
            raise InputError(f"levels must be {classes} finite grey values, got {levels!r}")
    env_s = ndi.gaussian_filter(arr, ENVELOPE_SIGMA)
    cls_s = ndi.gaussian_filter(arr, CLASS_SIGMA)
    mu0, _ = vacuum_level(env_s)

    from .segment import otsu

    nip = xp.zeros(arr.shape, bool)
    plabels, n_part = xp.zeros(arr.shape, xp.int32), 0
    if levels is not None:
        t_env = (levels[0] + levels[1]) / 2
        body_levels = levels[1 : 1 + n_body]
        envelope = _fill_and_clean(env_s > t_env, None, ndi, xp)
        if particles:
            plabels, n_part = detect_particles(arr, envelope, body_levels[-1], threshold=blob_threshold)
            nip = plabels > 0
            envelope = _fill_and_clean(envelope | nip, nip, ndi, xp)
        body_thr = (levels[1 : n_body] + levels[2 : n_body + 1]) / 2
    else:
        t_env = otsu(env_s)
        for _ in range(3):
            envelope = _fill_and_clean(env_s > t_env, None, ndi, xp)
            inner = ndi.binary_erosion(envelope)
            vals = cls_s[inner]
            if particles and vals.size:  # the few Ni voxels (found after the levels) must not pull the body classes
                vals = vals[vals <= xp.percentile(vals, 99.0)]
            if vals.size < 10 * n_body:
                raise InputError("the particle envelope is too small to segment (fewer than a few voxels inside)")
            body_thr, body_levels = _body_classes(vals, n_body, xp)
            if CLASS_INTERIOR and n_body > 1:
                body_levels = _interior_levels(cls_s, inner, body_thr, body_levels, ndi, xp)
                body_thr = (body_levels[1:] + body_levels[:-1]) / 2
            if particles and n_body > 1:
                # a sharp reconstruction (TV, DART) can hold more Ni than the trimmed 1 %: a mode of
                # its own that takes the densest body class. When most of that class is Ni-like
                # blobs, they (and a voxel around them) leave the histogram and the classes are redone
                dense = inner & (cls_s > float(body_thr[-1]))
                blobs = _particle_blobs(dense, envelope, ndi, xp)
                if float(blobs.sum()) >= NI_BLOB * float(dense.sum()) > 0:
                    rest = cls_s[inner & ~ndi.binary_dilation(blobs)]
                    if rest.size >= 10 * n_body:
                        body_thr, body_levels = _body_classes(rest, n_body, xp)
            new_t = (mu0 + body_levels[0]) / 2
            if abs(new_t - t_env) < 1e-3 * abs(body_levels[-1]):
                t_env = new_t
                break
            t_env = new_t
        envelope = _fill_and_clean((env_s > t_env) | nip, nip if n_part else None, ndi, xp)
        if particles:  # final detection against the final envelope and levels
            plabels, n_part = detect_particles(arr, envelope, body_levels[-1], threshold=blob_threshold)
            nip = plabels > 0
            envelope = _fill_and_clean(envelope | nip, nip, ndi, xp)

    if REFINE_SIGMA is not None:
        envelope = _refine_surface(arr, envelope, nip, t_env, ndi, xp)
    into_core = None
    if particles and n_part and n_body > 1 and CORE_TRIM:
        plabels, n_part, into_core = _trim_into_core(cls_s, plabels, n_part, envelope, body_thr, body_levels, ndi, xp)
        nip = plabels > 0
    labels = xp.zeros(arr.shape, xp.uint8)
    if particles and n_part and HALO:  # a Ni particle's blur into the vacuum around it is not body
        ring = ndi.binary_dilation(nip, iterations=2) & ~nip
        # each ring voxel is judged by the mean of its own value and of its Ni-free neighbourhood
        # (a Gaussian normalised over the voxels outside the ring and the particles: the surface as
        # it runs without the particle), cut a quarter of the way from the envelope threshold to
        # the lightest level. The raw voxel alone (cut half way) left noise pits in the shell
        # beside and under every particle, and one pit shortens the depth of every voxel below it
        w = (~(ring | nip)).astype(arr.dtype)
        num = ndi.gaussian_filter(arr * w, HALO_SIGMA)
        den = ndi.gaussian_filter(w, HALO_SIGMA)
        context = xp.where(den > 1e-3, num / xp.maximum(den, 1e-3), mu0)
        judged = 0.5 * (context + arr)
        envelope &= ~(ring & (judged < HALO_CUT * body_levels[0] + (1 - HALO_CUT) * t_env))
        envelope |= nip
    body = envelope & ~nip
    cls = xp.searchsorted(xp.asarray(body_thr, dtype=xp.float32), cls_s).astype(xp.uint8) + 1
    labels[body] = cls[body]
    if n_body > 1:
        _clean_classes(labels, body, n_body, ndi, xp)
    if particles:
        if n_body > 1:  # the blurred halo of a Ni particle is not core
            halo = ndi.binary_dilation(nip, iterations=1) & (labels == n_body)
            if into_core is not None:
                halo &= ~into_core
            labels[halo] = n_body - 1
        labels[nip] = classes - 1
        if levels is None:
            peak = ndimage_for(xp).maximum(cls_s, plabels, xp.arange(1, n_part + 1)) if n_part else None
            ni_level = float(xp.median(xp.asarray(peak))) if n_part else float("nan")
            levels = np.concatenate([[mu0], body_levels, [ni_level]])
    elif levels is None:
        levels = np.concatenate([[mu0], body_levels])
    thresholds = np.concatenate([[t_env], np.asarray(body_thr, np.float64)])
    return PhaseSegmentation(labels=labels, levels=np.asarray(levels, np.float64), thresholds=thresholds,
                             envelope=envelope, particles=plabels, n_particles=int(n_part))


def _refine_surface(arr, envelope, nip, t_env, ndi, xp):
    """Re-decide the envelope's surface layer (its outermost voxels and the vacuum voxels face-
    touching it, more than 2 voxels from a Ni particle) on a lighter Gaussian (``REFINE_SIGMA``).

    The envelope's Gaussian of 1 voxel moves the level set towards the centre of curvature: it
    fills the concave dips of the true surface and rounds off its convex edges, by a few tenths of
    a voxel, which puts every deeper voxel of a plate 0.1-0.15 voxel too deep (seed 23: front bin
    +0.095). The raw voxels are right there but noisy (1-3 % of the shell's outer layer falls
    below the threshold: pits); sigma 0.7 is the compromise measured on the phantom family. Holes
    are filled again."""
    six = ndi.generate_binary_structure(arr.ndim, 1)
    v = ndi.gaussian_filter(arr, REFINE_SIGMA) if REFINE_SIGMA else arr
    away = ~ndi.binary_dilation(nip, iterations=2)
    inner_edge = envelope & ~ndi.binary_erosion(envelope, structure=six) & away
    outer_edge = ndi.binary_dilation(envelope, structure=six) & ~envelope & away
    out = (envelope & ~(inner_edge & (v < t_env))) | (outer_edge & (v > t_env))
    return ndi.binary_fill_holes(out)


def _trim_into_core(cls_s, plabels, n_part, envelope, body_thr, body_levels, ndi, xp):
    """Take back from the Ni particles the voxels that belong to the densest body class beside them.

    A particle's basin is cut at half its peak contrast over a local background (a 9-voxel
    opening), which on a thin plate is the vacuum: the core's voxels beside a particle (at the
    core level, above half the peak) pass that cut, and the body gets a pit
    where a Ni particle seems to eat into the core (the truth's Ni never does: it rests on, or
    sinks into, the shell). A particle voxel below the midpoint between the densest body level and
    its particle's peak, connected through such voxels to within 2 voxels of the core (the
    densest class outside the particles' 1-voxel halo, in pieces larger than a Ni ball), is body.
    Returns ``(plabels, n, moved)`` (particles left empty dropped and renumbered; ``moved`` the
    voxels given back)."""
    nip = plabels > 0
    peak = xp.zeros(n_part + 1, xp.float32)
    peak[1:] = xp.asarray(ndi.maximum(cls_s, plabels, xp.arange(1, n_part + 1)), dtype=xp.float32)
    top = float(body_levels[-1])
    weak = nip & (cls_s < 0.5 * (top + peak[plabels]))
    dense = envelope & ~nip & (cls_s > float(body_thr[-1]))
    dense &= ~ndi.binary_dilation(nip)  # the particles' own blurred halo is not the core
    comps, n = ndi.label(dense)
    big = xp.bincount(comps.ravel()) > 4.0 / 3.0 * np.pi * (MAX_RADIUS + 1) ** 3  # the core, not a Ni halo
    big[0] = False
    dense = big[comps]
    seeds = weak & ndi.binary_dilation(dense, iterations=2)
    if not bool(seeds.any()):
        return plabels, n_part, None
    moved = ndi.binary_dilation(seeds, iterations=int(2 * MAX_RADIUS), mask=weak) | seeds
    plabels = xp.where(moved, 0, plabels)
    sizes = xp.bincount(plabels.ravel(), minlength=n_part + 1)
    good = to_host(sizes >= 3)
    good[0] = False
    remap = np.zeros(n_part + 1, np.int32)
    remap[good] = np.arange(1, int(good.sum()) + 1)
    return xp.asarray(remap)[plabels], int(good.sum()), moved


NI_BLOB = 0.5       # a densest body class with this share of its voxels in small blobs at the surface is Ni


def _body_classes(vals, n_body, xp):
    """Multi-Otsu classes of the interior values: (thresholds at the level midpoints, levels)."""
    body_thr = _multi_otsu_values(vals, n_body) if n_body > 1 else np.zeros(0)
    cls_idx = xp.searchsorted(xp.asarray(body_thr, dtype=xp.float32), vals)
    body_levels = np.array([float(xp.median(vals[cls_idx == k])) for k in range(n_body)])
    if MIDPOINTS:
        body_thr = (body_levels[1:] + body_levels[:-1]) / 2
    return body_thr, body_levels


CLASS_INTERIOR = True  # body levels from each class's interior voxels (its blurred rim left out)


def _interior_levels(cls_s, inner, body_thr, body_levels, ndi, xp):
    """Each body class's level as the median over its interior: the class voxels inside the
    envelope whose 6 neighbours are in the class too. A thin layer (a plate's core 3-5 voxels
    thick) is blurred at its rim, which pulls its histogram median towards its neighbours' level
    and the threshold with it; its interior is closer to the true density. A class with fewer
    than 1000 interior voxels keeps its histogram level."""
    cls = xp.searchsorted(xp.asarray(body_thr, dtype=xp.float32), cls_s)
    six = ndi.generate_binary_structure(cls_s.ndim, 1)
    out = np.asarray(body_levels, np.float64).copy()
    for k in range(out.size):
        core = ndi.binary_erosion(inner & (cls == k), structure=six)
        if int(core.sum()) >= 1000:
            out[k] = float(xp.median(cls_s[core]))
    return out if np.all(np.diff(out) > 0) else np.asarray(body_levels, np.float64)


def _particle_blobs(dense, envelope, ndi, xp):
    """The connected pieces of ``dense`` that look like Ni particles: no larger than a ball of
    radius ``MAX_RADIUS + 1`` and reaching within ``MAX_RADIUS`` of the envelope surface (a Ni
    particle is small and rests on the surface; a core, however thin, is one large piece)."""
    comps, n = ndi.label(dense)
    sizes = xp.bincount(comps.ravel())
    depth = ndi.distance_transform_edt(envelope)
    shallow = xp.bincount(comps[dense & (depth <= MAX_RADIUS + 0.5)].ravel(), minlength=n + 1) > 0
    blob = (sizes <= 4.0 / 3.0 * np.pi * (MAX_RADIUS + 1) ** 3) & shallow
    blob[0] = False
    return blob[comps]


def _multi_otsu_values(vals, n: int) -> np.ndarray:
    """Multi-Otsu thresholds of a 1-D sample (device histogram, host search)."""
    from skimage.filters import threshold_multiotsu

    xp = xp_of(vals)
    lo, hi = float(xp.percentile(vals, 0.5)), float(xp.percentile(vals, 99.5))
    counts, edges = xp.histogram(xp.clip(vals, lo, hi), bins=256, range=(lo, hi))
    counts, edges = to_host(counts), to_host(edges)
    centres = (edges[:-1] + edges[1:]) / 2
    return np.asarray(threshold_multiotsu(hist=(counts, centres), classes=n), np.float64) + (hi - lo) / 512
