"""Reaction-front kinetics from in situ movies (2D frames) or sequences of volumes (3D).

The front depth is measured below the ORIGINAL surface: the outline of the first frame (the
sheet swells outward as it reacts, so the current edge is not the reference). Steps:

1. ``register_frames``: a coarse chain (each frame against the previous, whitened band-passed
   FFT cross-correlation, ``gpu_core.registration.shift_nd``, on block-averaged frames), then
   ``_register_sequential``: each frame against the first, masked to what the previous frame
   showed stable (a masked FFT correlation of block-averaged frames, then Lucas-Kanade).
2. ``original_depth``: the first frame is smoothed, split into vacuum and material at the
   midpoint of the two Otsu classes' medians, and its signed Euclidean distance (positive inside,
   pixels) taken on a 4x (3D and frames of 512 px or more: 2x) finer grid (a sub-pixel outline).
3. ``front_profiles``: for every frame, the median intensity in 0.5-px bins of depth below the
   original outline (the depth map moved by the frame's shift). The median ignores Ni dots and
   Poisson outliers; binning over the whole outline averages the noise.
4. The per-frame model ``P(d) = b [1 + (q - 1) Phi((x - d) / w)]`` for depths beyond
   ``D_LO_PX``: ``b`` that frame's core level (so fading, flicker and the gain cancel), ``q``
   the reacted/core intensity ratio (one for the movie, measured on the frames where both levels
   are in view with both levels free), ``x`` the front depth and ``w`` its width, found by an
   exact hard change point (cumulative sums) refined on a 0.1-px grid per width with a parabola.
   The same step model on the vacuum side gives the swollen outline, which (with the front)
   bounds the region masked out of the registration against the first frame.
   The front is where the profile is halfway between the reacted and the unreacted level.
5. ``fit_power_law``: ``x = k (t - t0)^n`` by bounded least squares on the frames whose front is
   above the detection limit, with 1-sigma errors from the Jacobian; the velocity
   ``dx/dt = n k (t - t0)^(n-1)``.

Arrays are NumPy or CuPy for the registration; the profiles and fits run on the host.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage
from scipy.special import ndtr

from ..errors import InputError
from ..gpu_core import backend as be
from ..gpu_core.registration import shift_nd

BIN_PX = 0.5          # depth bin width (pixels)
D_LO_PX = 1.5         # profiles start this far below the original outline (past its blur)
SMOOTH_PX = 0.75      # Gaussian smoothing of each frame before the per-bin medians
WIDTHS_PX = (0.6, 0.9, 1.3, 1.8, 2.5, 3.5)   # front widths tried
X_STEP_PX = 0.1       # grid step of the front depth search
MIN_BIN_COUNT = 8     # bins with fewer pixels are not used
MIN_STABLE_FRACTION = 0.05  # frames with less stable area than this keep their coarse shift
DETECT_PX = 2.0       # the power law is fitted to fronts deeper than this (and than 2 widths)
BIN_TARGET_PX = 256   # registration FFTs run on frames block-averaged to about this many px per side
N_LEVELS = 1024       # intensity levels of the per-bin histograms whose medians make the profiles
MIN_CONTRAST = 0.08   # a step fit counts as a front only with |step| > this fraction of its far level
LK_BAND_PX = (0.75, 2.0)  # Lucas-Kanade refinement on frames band-passed by these Gaussians (px)
LK_BORDER = 2.5      # Lucas-Kanade leaves out this many of the band-pass's outer sigmas at the edges
LOCAL_PX = 6.0        # the front's last fit uses the bins within this of the global fit's front
FINE_HALF_PX = 3.0    # the fine front search spans the coarse change point +- this
BASE_FROM_PX = 3.5    # the unreacted level of a bin follows the first frame's profile from this depth on (shallower bins: the first frame shows the outline's blur)


@dataclass
class FrontTrack:
    """Front depth per frame. Units: nm, s, pixels as named."""

    time_s: np.ndarray            # (frames,)
    front_nm: np.ndarray          # (frames,) depth of the front below the first frame's outline
    front_px: np.ndarray          # (frames,)
    width_px: np.ndarray          # (frames,) fitted front width (Gaussian sigma)
    shifts_px: np.ndarray         # (frames, ndim): frame_t(p + d_t) ~ frame_0(p)
    depth_px: np.ndarray          # (*shape) signed depth below the first frame's outline (frame 0)
    rho: float                    # reacted / core intensity ratio (illumination cancels)
    vacuum: str                   # "bright" or "dark": which side of the histogram is vacuum
    pixel_size_nm: float
    max_depth_px: float           # deepest depth bin that is measured
    levels: np.ndarray = field(repr=False, default=None)   # (frames, 2): core and reacted level


@dataclass
class KineticsFit:
    """x = k (t - t0)^n. k in nm/s^n, t0 in s; *_err are 1-sigma; velocity in nm/s per frame."""

    k: float
    n: float
    t0_s: float
    k_err: float
    n_err: float
    t0_err: float
    rmse_nm: float
    n_points: int
    velocity_nm_s: np.ndarray
    used: np.ndarray              # (frames,) bool: frames in the fit

    def predict(self, time_s):
        return power_law(np.asarray(time_s, float), self.k, self.n, self.t0_s)


def power_law(t, k, n, t0):
    """x = k (t - t0)^n for t > t0, else 0 (nm)."""
    return k * np.clip(t - t0, 0.0, None) ** n


# ---------------------------------------------------------------------------------- public steps


def track_front(frames, time_s=None, pixel_size_nm=1.0, *, frame_interval_s=None, vacuum="auto",
                register=True, backend="auto", executor=None) -> FrontTrack:
    """Front depth below the first frame's outline in every frame of ``frames``.

    frames : (n_frames, y, x) movie or (n_volumes, z, y, x) volumes, any real dtype.
    time_s : (n_frames,) seconds; default ``arange(n) * frame_interval_s``.
    vacuum : "bright" (bright-field TEM), "dark" (HAADF/dark field, reconstructed volumes) or
        "auto" (the side into which the changes over the movie reach deeper is the material).
    register : False when the frames are already aligned.
    executor : a ``distributed`` executor for the per-frame depth profiles of the final
        measurement (a map over frames); the sequential registration runs here. Same result.
    """
    frames = _check_frames(frames)
    n_frames, shape = frames.shape[0], frames.shape[1:]
    time_s = _times(time_s, n_frames, frame_interval_s)
    if not (np.isfinite(pixel_size_nm) and pixel_size_nm > 0):
        raise InputError(f"pixel_size_nm must be a positive number, got {pixel_size_nm!r}")
    host = np.asarray(be.to_host(frames), np.float32)
    chain = register_frames(host, backend=backend) if register else np.zeros((n_frames, len(shape)))
    if vacuum not in ("auto", "bright", "dark"):
        raise InputError(f"vacuum must be 'bright', 'dark' or 'auto', got {vacuum!r}")
    depth, valid, side = original_depth(host[0], vacuum="bright" if vacuum == "auto" else vacuum)
    if vacuum == "auto":  # the side into which the changes reach deeper is the material
        side = _vacuum_side(host, chain, depth, valid)
        if side == "dark":
            depth = -depth  # the complementary mask's signed distance (exactly, see original_depth)
    shifts = _register_sequential(host, depth, valid, chain, backend) if register else chain
    result = _measure(host, shifts, depth, valid, executor)
    x, w, rho, levels, dmax, _swell = result
    return FrontTrack(time_s=time_s, front_nm=x * pixel_size_nm, front_px=x, width_px=w, shifts_px=shifts,
                      depth_px=depth, rho=rho, vacuum=side, pixel_size_nm=float(pixel_size_nm),
                      max_depth_px=dmax, levels=levels)


def track_front_volumes(volumes, time_s=None, voxel_size_nm=1.0, *, interval_s=None, vacuum="dark",
                        register=True, backend="auto") -> FrontTrack:
    """``track_front`` for a sequence of reconstructed volumes ``(n, z, y, x)``: the depth below
    the first volume's surface comes from a 3D distance transform; vacuum is dark by default."""
    volumes = _check_frames(volumes)
    if volumes.ndim != 4:
        raise InputError(f"volumes must be (n_volumes, z, y, x), got shape {volumes.shape}")
    return track_front(volumes, time_s, voxel_size_nm, frame_interval_s=interval_s, vacuum=vacuum,
                       register=register, backend=backend)


def register_frames(frames, *, backend="auto", weights=None, initial=None, max_shift=None, reference=None,
                    chunk_bytes=256 << 20):
    """(n, ndim) shifts ``d_t`` with ``frame_t(p + d_t) ~ frame_0(p)`` (pixels).

    Without ``weights``: each frame against the one before (whitened, band-passed FFT
    cross-correlation, ``gpu_core.registration.shift_nd``), chained; consecutive frames differ
    little, so the moving outline and front hardly bias a step (a coarse estimate, errors of a
    few pixels after hundreds of frames). With ``weights`` (n, *shape) in frame-0 coordinates
    (1 on content that does not change) and the ``initial`` shifts: each frame, moved by its
    rounded initial shift into frame-0 coordinates, against frame 0 itself (or ``reference``),
    both high-passed (structures above 3 px removed, so the mask's edge carries no step) and
    masked alike.
    """
    where = be.resolve(backend)
    frames = np.asarray(frames, np.float32)
    n, *shape = frames.shape
    per = 24 * 2 ** len(shape) * int(np.prod(shape))
    step = max(1, int(chunk_bytes // per))
    out = np.zeros((n, len(shape)))
    if weights is None:
        b = _bin_factor(shape)   # the chain is coarse: block means of about BIN_TARGET_PX per side
        small = _block_mean(frames, b)
        per = 24 * 2 ** len(shape) * int(np.prod(small.shape[1:]))
        step = max(1, int(chunk_bytes // per))
        for a in range(1, n, step):
            b_ = min(n, a + step)
            imgs = be.to_device(small[a:b_], where)
            prev = be.to_device(small[a - 1:b_ - 1], where)
            out[a:b_] = b * shift_nd(imgs, prev, be.xp_of(imgs), whiten=True, lowpass_px=1.0,
                                     highpass_px=16.0 / b)
        return np.cumsum(out, 0)
    ref = be.to_device(_highpass(frames[0] if reference is None else reference), where)
    xp = be.xp_of(ref)
    for a in range(0, n, step):
        b = min(n, a + step)
        r = np.round(initial[a:b])
        moved = np.stack([_highpass(ndimage.shift(f, -ri, order=0, mode="nearest")) for f, ri in zip(frames[a:b], r)])
        d = shift_nd(be.to_device(moved, where), ref, xp, weights=be.to_device(np.asarray(weights[a:b], np.float32), where),
                     whiten=True, lowpass_px=1.0, max_shift=max_shift)
        enough = np.asarray(weights[a:b]).reshape(b - a, -1).mean(1) > MIN_STABLE_FRACTION
        out[a:b] = np.where(enough[:, None] & np.isfinite(d).all(1)[:, None], d + r, initial[a:b])
    if reference is None:
        out -= out[0]
    return out


def _highpass(image, sigma=3.0):
    image = np.asarray(image, np.float32)
    return image - ndimage.gaussian_filter(image, sigma)


def original_depth(first, *, vacuum="bright", supersample=None):
    """Signed depth (pixels, positive inside the material) below the outline of ``first``, a mask
    of where that depth is trustworthy (no closer outline could lie outside the image), and which
    side is vacuum (``vacuum``: "bright" or "dark"; ``track_front`` decides "auto" from the movie).
    The two sides' depths are exact negatives of each other."""
    from skimage.filters import threshold_otsu

    first = np.asarray(first, np.float64)
    ndim = first.ndim
    # 4x finer grid (3D, or frames of 512 px and more: 2x; the distance transform of the fine
    # grid is most of the set-up time of a 1024^2 movie)
    ss = supersample or (4 if ndim == 2 and max(first.shape) < 512 else 2)
    smooth = ndimage.gaussian_filter(first, 1.5)
    t = threshold_otsu(smooth)
    lo, hi = np.median(smooth[smooth <= t]), np.median(smooth[smooth > t])
    level = 0.5 * (lo + hi)
    side = vacuum
    if side not in ("bright", "dark"):
        raise InputError(f"vacuum must be 'bright', 'dark' or 'auto', got {vacuum!r}")
    fine_axes = [(np.arange(s * ss) + 0.5) / ss - 0.5 for s in first.shape]
    fine = ndimage.map_coordinates(smooth, np.meshgrid(*fine_axes, indexing="ij"), order=1, mode="nearest")
    material = fine < level if side == "bright" else fine > level
    material = _clean(material, ss ** ndim * 30)
    phi = (ndimage.distance_transform_edt(material) - ndimage.distance_transform_edt(~material)) / ss
    phi += np.where(material, -0.5 / ss, 0.5 / ss)
    coarse = np.meshgrid(*[(np.arange(s) + 0.5) * ss - 0.5 for s in first.shape], indexing="ij")
    depth = ndimage.map_coordinates(phi, coarse, order=1, mode="nearest")
    border = np.min(np.stack(np.meshgrid(*[np.minimum(np.arange(s), s - 1 - np.arange(s)) for s in first.shape],
                                         indexing="ij")), 0) + 0.5
    valid = np.abs(depth) <= border
    return depth, valid, side


def front_profiles(frames, shifts, depth, valid, edges, reference=None):
    """Per-frame median of the (lightly smoothed) frame in bins of depth below the original
    outline: (medians (n, n_bins), counts (n, n_bins)). ``edges`` are the bin edges (pixels).
    With ``reference`` (the first frame): also the medians of the reference over the same sample
    points (the reference moved into each frame's pixels) and the mean depth of each bin's pixels,
    (medians, counts, reference medians, mean depths).

    The medians come from a histogram per bin (``N_LEVELS`` intensity levels over the frame's
    range, linear inside the level): one ``bincount`` per frame, no sort."""
    n = frames.shape[0]
    n_bins = len(edges) - 1
    med = np.full((n, n_bins), np.nan)
    cnt = np.zeros((n, n_bins))
    ref_med = None if reference is None else np.full((n, n_bins), np.nan)
    pos = None if reference is None else np.full((n, n_bins), np.nan)
    ref_s = None if reference is None else ndimage.gaussian_filter(np.asarray(reference, np.float32), SMOOTH_PX)
    masked = np.where(valid, depth, np.nan).astype(np.float32)
    for t in range(n):
        d = _moved(masked, shifts[t], np.nan)
        ok = np.isfinite(d) & (d >= edges[0]) & (d < edges[-1])
        if ref_s is not None:
            r = _moved(ref_s, shifts[t], np.nan)
            ok &= np.isfinite(r)
        img = ndimage.gaussian_filter(np.asarray(frames[t], np.float32), SMOOTH_PX)
        idx = np.minimum(((d[ok] - edges[0]) / (edges[1] - edges[0])).astype(np.int64), n_bins - 1)
        med[t], cnt[t] = _bin_medians(img[ok], idx, n_bins)
        if ref_s is not None:
            ref_med[t] = _bin_medians(r[ok], idx, n_bins)[0]
            with np.errstate(invalid="ignore", divide="ignore"):
                pos[t] = np.bincount(idx, weights=d[ok], minlength=n_bins) / cnt[t]
    return (med, cnt) if reference is None else (med, cnt, ref_med, pos)


class ProfileStep:
    """``front_profiles`` as a chunked map step over frames (``distributed``: inline, threads,
    Dask); partials are (medians, counts) of a run of frames."""

    kind = ("map", "map")
    minimum = 1

    def __init__(self, frames, shifts, depth, valid, edges, reference=None):
        self.frames, self.shifts = np.asarray(frames, np.float32), np.asarray(shifts, np.float64)
        self.depth, self.valid, self.edges = depth, valid, np.asarray(edges)
        self.reference = None if reference is None else np.asarray(reference, np.float32)
        if self.reference is not None:
            self.kind = ("map", "map", "map", "map")
        self.n_items = int(self.frames.shape[0])
        self.bytes_per_item = int(self.frames[0].nbytes) * 8 + 24 * len(self.edges) * (N_LEVELS + 2)

    def process(self, items: slice):
        return front_profiles(self.frames[items], self.shifts[items], self.depth, self.valid, self.edges,
                              self.reference)


def _bin_medians(values, idx, n_bins, n_levels=N_LEVELS):
    """(medians, counts) of ``values`` in bins ``idx`` (0 <= idx < n_bins) from a 2D histogram."""
    counts = np.bincount(idx, minlength=n_bins).astype(np.float64)
    med = np.full(n_bins, np.nan)
    if values.size == 0:
        return med, counts
    sub = values[:: max(1, values.size // 20000)]
    lo, hi = np.percentile(sub, [0.1, 99.9])
    span = max(float(hi - lo), 1e-6 * max(abs(float(hi)), 1.0))
    lo, hi = lo - 0.05 * span, hi + 0.05 * span
    step = (hi - lo) / n_levels
    lev = np.clip(((values - lo) / step).astype(np.int64), 0, n_levels - 1)
    hist = np.bincount(idx * n_levels + lev, minlength=n_bins * n_levels).reshape(n_bins, n_levels)
    cum = np.cumsum(hist, 1)
    half = 0.5 * counts
    k = np.minimum((cum < half[:, None]).sum(1), n_levels - 1)
    rows = np.arange(n_bins)
    below = np.where(k > 0, cum[rows, np.maximum(k - 1, 0)], 0)
    frac = (half - below) / np.maximum(hist[rows, k], 1)
    has = counts > 0
    med[has] = (lo + (k + frac) * step)[has]
    return med, counts


def fit_power_law(time_s, front_nm, *, used=None, censored=None, limit_nm=0.0, n_bounds=(0.2, 1.5)):
    """Fit x = k (t - t0)^n to the fronts of ``used`` frames (default: every frame with a front
    above 0), with 1-sigma errors from the Jacobian (residual-scaled). Returns ``KineticsFit``.

    ``censored`` frames (earlier, front below the detection limit ``limit_nm``) add one-sided
    residuals ``max(model - limit_nm, 0)``: the fitted front must not be visible there."""
    from scipy.optimize import least_squares

    t = np.asarray(time_s, float)
    x = np.asarray(front_nm, float)
    used = (np.isfinite(x) & (x > 0)) if used is None else (np.asarray(used, bool) & np.isfinite(x))
    if used.sum() < 4:
        raise InputError(f"the front moved in only {int(used.sum())} frames; a power-law fit needs at least 4")
    tu, xu = t[used], x[used]
    tc = t[np.asarray(censored, bool)] if censored is not None else t[:0]

    def resid(p):
        r = power_law(tu, p[0], p[1], p[2]) - xu
        if tc.size:
            r = np.concatenate([r, np.clip(power_law(tc, p[0], p[1], p[2]) - limit_nm, 0.0, None)])
        return r

    best = None
    for n0 in (0.5, 1.0):   # two starts: diffusion- and interface-limited
        t00 = tu[0] - (xu[0] / max(xu[-1], 1e-12)) ** (1 / n0) * (tu[-1] - tu[0]) * 1.01 - 1e-6
        k0 = xu[-1] / max(tu[-1] - t00, 1e-9) ** n0
        res = least_squares(resid, [k0, n0, t00],
                            bounds=([0, n_bounds[0], -np.inf], [np.inf, n_bounds[1], tu[0] - 1e-9]),
                            x_scale="jac")
        if best is None or res.cost < best.cost:
            best = res
    k, n, t0 = best.x
    dof = max(used.sum() - 3, 1)
    s2 = 2 * best.cost / dof
    try:
        cov = np.linalg.inv(best.jac.T @ best.jac) * s2
        err = np.sqrt(np.clip(np.diag(cov), 0, None))
    except np.linalg.LinAlgError:
        err = np.full(3, np.nan)
    vel = np.where(t > t0, n * k * np.clip(t - t0, 1e-12, None) ** (n - 1), 0.0)
    return KineticsFit(k=float(k), n=float(n), t0_s=float(t0), k_err=float(err[0]), n_err=float(err[1]),
                       t0_err=float(err[2]), rmse_nm=float(np.sqrt(s2)), n_points=int(used.sum()),
                       velocity_nm_s=vel, used=used)


def fit_track(track: FrontTrack) -> KineticsFit:
    """``fit_power_law`` on the frames whose front is measurable: deeper than the detection limit
    (``DETECT_PX`` and two front widths) and short of the deepest measured bin."""
    x = track.front_px
    limit = max(DETECT_PX, 2 * float(np.median(track.width_px)))
    used = (x > limit) & (x < track.max_depth_px - 3)
    first = np.argmax(used) if used.any() else len(x)
    censored = (np.arange(len(x)) < first) & (x <= limit)
    return fit_power_law(track.time_s, track.front_nm, used=used, censored=censored,
                         limit_nm=limit * track.pixel_size_nm)


def reacted_mask(frame, shift, track: FrontTrack, frame_index: int):
    """Boolean mask of the reacted region of one frame (its own pixels): material whose
    normalised intensity is nearer the reacted level than the core's, plus the Ni dots (beyond
    the core level), below the original outline."""
    core, _ = track.levels[frame_index]
    norm = ndimage.median_filter(np.asarray(frame, float), 3) / (core if core else 1.0)
    d = _moved(track.depth_px, shift, np.nan)
    rho = track.rho
    below = np.isfinite(d) & (d > 0)
    reacted = np.abs(norm - rho) < np.abs(norm - 1.0)
    dots = (norm - 1.0) * np.sign(1.0 - rho) < -0.5 * abs(1.0 - rho)
    return below & (reacted | dots)


# ------------------------------------------------------------------------------------- internals


def _check_frames(frames):
    if not hasattr(frames, "ndim") or frames.ndim not in (3, 4):
        raise InputError(f"a movie must be (frames, y, x) or volumes (n, z, y, x), got {getattr(frames, 'shape', type(frames))}")
    if frames.shape[0] < 3 or min(frames.shape[1:]) < 16:
        raise InputError(f"need at least 3 frames of at least 16 px per side, got shape {frames.shape}")
    if getattr(frames, "dtype", np.float32).kind not in "uif":
        raise InputError(f"frames must be real numbers, got dtype {frames.dtype}")
    xp = be.xp_of(frames)
    if not bool(xp.isfinite(frames).all()):
        raise InputError("the frames contain NaN or Inf")
    return frames


def _times(time_s, n, interval):
    if time_s is None:
        if interval is None:
            raise InputError("give time_s (one time per frame) or frame_interval_s")
        if not interval > 0:
            raise InputError(f"frame_interval_s must be positive, got {interval!r}")
        return np.arange(n) * float(interval)
    time_s = np.asarray(time_s, float)
    if time_s.shape != (n,):
        raise InputError(f"time_s has {time_s.size} values for {n} frames")
    if not (np.isfinite(time_s).all() and np.all(np.diff(time_s) > 0)):
        raise InputError("time_s must be finite and increasing")
    return time_s


def _moved(image, shift, cval):
    """``image`` (frame-0 coordinates) seen in a frame with shift ``d``: out(q) = image(q - d)."""
    return ndimage.shift(image, shift, order=1, mode="constant", cval=cval, prefilter=False)


def _aligned(frame, shift):
    """A frame resampled into frame-0 coordinates: out(p) = frame(p + d)."""
    return ndimage.shift(np.asarray(frame, np.float64), -np.asarray(shift), order=1, mode="nearest")


def _clean(mask, min_size):
    """``mask`` without islands or holes smaller than ``min_size`` pixels."""
    for value in (True, False):
        lab, n = ndimage.label(mask == value)
        if n:
            small = np.bincount(lab.ravel())[1:] < min_size
            mask = np.where(np.isin(lab, 1 + np.flatnonzero(small)), not value, mask)
    return mask


def _vacuum_side(frames, shifts, depth, valid):
    """'bright' or 'dark': the material is the side into which the changes reach deeper (the
    front goes deeper into the sheet than the sheet swells out of it). ``depth`` is the signed
    distance positive on the dark side. Frames spread over the movie (30 % to the end, moved by
    the coarse ``shifts``) each give the reach of a step fit on either side of the first frame's
    outline (free levels; a reach counts only where its step has ``MIN_CONTRAST``); the sum of
    (dark-side reach - bright-side reach) over those frames decides."""
    n = frames.shape[0]
    probes = np.unique(np.round(np.array([0.3, 0.45, 0.6, 0.75, 0.9, 1.0]) * (n - 1)).astype(int))
    probes = probes[probes > 0]
    edges, centres = _edges(depth, valid)
    med, cnt = front_profiles(frames[probes], shifts[probes], depth, valid, edges)
    good = cnt >= MIN_BIN_COUNT
    reach = []
    for sign in (1, -1):   # dark side (depth > 0), then the bright side
        c = centres * sign
        sel = (c >= D_LO_PX)[None, :] & good
        if sel.sum(1).max() < 6:
            reach.append(np.zeros(len(probes)))
            continue
        order = np.argsort(c)
        far = float(c[sel.any(0)].max())
        x, _, lev, step = _grid_fit(np.where(sel, med, 0.0)[:, order], np.where(sel, np.sqrt(cnt), 0.0)[:, order],
                                    c[order], None, far)
        seen = (np.abs(step) > MIN_CONTRAST * np.abs(lev)) & (x > D_LO_PX) & (sel.sum(1) >= 6)
        reach.append(np.where(seen, x, 0.0))
    return "bright" if float(np.sum(reach[0] - reach[1])) >= 0 else "dark"


def _edges(depth, valid):
    dmin = float(np.floor(depth[valid].min())) if valid.any() else -1.0
    dmax = float(np.ceil(depth[valid].max())) if valid.any() else 1.0
    edges = np.arange(dmin, dmax + BIN_PX, BIN_PX)
    return edges, 0.5 * (edges[:-1] + edges[1:])


def _measure(frames, shifts, depth, valid, executor=None):
    """Front depth, width, contrast ratio, levels, deepest measured bin and the outward swelling
    (pixels beyond the original outline) from the depth profiles of every frame."""
    edges, centres = _edges(depth, valid)
    reference = frames[0]   # the unreacted level of each depth bin follows the first frame's profile
    if executor is None:
        prof = front_profiles(frames, shifts, depth, valid, edges, reference)
    else:
        from ..distributed import collect

        prof = collect(executor, ProfileStep(frames, shifts, depth, valid, edges, reference))
    med, cnt = prof[0], prof[1]
    good = cnt >= MIN_BIN_COUNT
    inside = (centres >= D_LO_PX)[None, :] & good
    deepest = float(centres[inside.any(0)].max()) if inside.any() else D_LO_PX
    y = np.where(inside, med, 0.0)
    wts = np.where(inside, np.sqrt(cnt), 0.0)
    base = pos = None
    if reference is not None:   # the unreacted level of each bin: the first frame's (texture)
        ref, pos = prof[2], prof[3]   # the step model sees each bin at its pixels' mean depth
        ok0 = inside[0] & np.isfinite(ref[0])
        if ok0.any():
            base = np.where(inside & np.isfinite(ref), ref, np.nan) / float(np.median(ref[0][ok0]))
            base = np.where(np.isfinite(base) & (base > 0), base, 1.0)
            # within BASE_FROM_PX of the outline the first frame shows the outline's blur, not the
            # core: those bins take the value of the first bin beyond it
            j = int(np.searchsorted(centres, BASE_FROM_PX))
            if j < len(centres):
                base[:, :j] = base[:, j:j + 1]
    # pass A: free levels per frame (core c, reacted c + s): the reacted/core intensity ratio q
    # from the frames where both levels are in view and the step is a real one (not a fit to noise
    # before the front appears)
    xa, _, ca, sa = _grid_fit(y if base is None else y / base, wts, centres, None, deepest)
    ratio = (ca + sa) / np.where(ca != 0, ca, np.nan)
    ok = (xa > 4.0) & (xa < deepest - 6.0) & np.isfinite(ratio)
    strong = ok & (np.abs(sa) > MIN_CONTRAST * np.abs(ca))
    pick = strong if strong.sum() >= 3 else (ok if ok.sum() >= 3 else np.isfinite(ratio))
    q = float(np.nanmedian(ratio[pick]))
    def passes(q, react):
        # pass B: one level b per frame, q fixed (illumination changes are multiplicative)
        x, w, b, _ = _grid_fit(y, wts, centres, q, deepest, base=base, positions=pos, reacted=react)
        # pass C: the same with the bins within LOCAL_PX of that front only, so that levels far
        # from the front (static thickness texture, illumination gradients, the field of view
        # drifting over the particle) do not pull it
        # a profile with (almost) no core bins left is as well fitted by "no front yet" at the
        # reacted level: the core level moves slowly (fading), so frames whose level jumps from its
        # running median towards q times it are fitted again with the level fixed to that median
        b_run = _level_trend(b, 0.5 * abs(np.log(q)) if q > 0 else 0.3)
        jump = np.abs(b / np.where(b_run != 0, b_run, np.nan) - 1) > 0.5 * abs(1 - q)
        if jump.any() and jump.mean() < 0.3:
            sub = (lambda a: None if a is None else a[jump])
            xj, wj, bj, _ = _grid_fit(y[jump], wts[jump], centres, q, deepest, level=b_run[jump], base=sub(base),
                                      positions=sub(pos), reacted=sub(react))
            x[jump], w[jump], b[jump] = xj, wj, bj
        near = inside & (np.abs(centres[None, :] - x[:, None]) < LOCAL_PX)
        xc, wc, bc, _ = _grid_fit(np.where(near, med, 0.0), np.where(near, np.sqrt(cnt), 0.0), centres, q, deepest,
                                  base=base, positions=pos, reacted=react)
        refit = (x > 2 * LOCAL_PX / 4) & (near.sum(1) >= 12) & (np.abs(xc - x) < LOCAL_PX / 2)
        return np.where(refit, xc, x), np.where(refit, wc, w), b

    x, w, b = passes(q, None)
    if base is not None:
        # the part of the first frame's texture that stays once a bin has reacted (a support film
        # under the particle, say): regress the reacted bins (well behind the front, level b
        # divided out) on the first frame's profile; the fits again with that reacted profile
        behind = inside & (centres[None, :] < (x - 3 * w)[:, None]) & (centres[None, :] >= BASE_FROM_PX) & (b > 0)[:, None]
        if behind.sum() >= 20:
            u = (base - 1.0)[behind]
            v = (y / np.where(b > 0, b, 1.0)[:, None])[behind]
            c_ = cnt[behind]
            um, vm = np.average(u, weights=c_), np.average(v, weights=c_)
            suu = float(np.average((u - um) ** 2, weights=c_))
            if suu > 0:
                g = float(np.clip(np.average((u - um) * (v - vm), weights=c_) / suu, 0.0, 1.0))
                q = float(vm - g * um)
                x, w, b = passes(q, q + g * (base - 1.0))
    # the swollen outline: the same step model on the vacuum side, levels free
    outside = (centres <= -D_LO_PX)[None, :] & good
    if outside.sum(1).min() >= 6:
        sw, _, _, _ = _grid_fit(np.where(outside, med, 0.0)[:, ::-1], np.where(outside, np.sqrt(cnt), 0.0)[:, ::-1],
                                -centres[::-1], None, float(-centres[outside.any(0)].min()))
    else:
        sw = np.zeros_like(x)
    levels = np.stack([b, b * q], 1)
    return x, w, q, levels, deepest, np.clip(sw, 0.0, None)


def _level_trend(b, tol, degree=2, iters=4):
    """A smooth trend of the per-frame levels ``b`` (illumination fading): a quadratic in frame
    index fitted to log b, refitted without the frames more than ``tol`` (in log) off it."""
    t = np.arange(len(b), dtype=float)
    ok = np.isfinite(b) & (b > 0)
    if ok.sum() <= degree + 2:
        return np.asarray(b, float)
    logb = np.log(np.where(ok, b, 1.0))
    keep = ok.copy()
    for _ in range(iters):
        coef = np.polyfit(t[keep], logb[keep], degree)
        new = ok & (np.abs(logb - np.polyval(coef, t)) < tol)
        if new.sum() <= degree + 2 or np.array_equal(new, keep):
            break
        keep = new
    return np.exp(np.polyval(coef, t))


def _grid_fit(y, wts, centres, rho, deepest, level=None, base=None, positions=None, reacted=None):
    """Least-squares step model per frame (rows of ``y``, bin ``centres`` ascending and evenly
    spaced, weights ``wts``); returns x, w, and the linear level(s).

    rho None: y = c + s Phi((x - d)/w) (two linear parameters); else y = b [m + (rho - m) Phi],
    with ``b`` fitted or, given ``level`` (n,), fixed to it, and ``m`` the unreacted profile
    ``base`` (n, bins; default 1: a flat core level). ``positions`` (n, bins): the depth of each
    bin's pixels (default its centre) for the smooth model. ``reacted`` (n, bins): the reacted
    level of each bin in place of the constant ``rho``.
    Coarse: the best hard step between two bins, exactly, from cumulative sums. Fine: x on a
    ``X_STEP_PX`` grid within ``FINE_HALF_PX`` of it for every width in ``WIDTHS_PX``, with a
    parabola through the best x; Phi is evaluated only within 8 widths of the candidates (beyond,
    it is 0 or 1 to double precision, and those bins enter through the cumulative sums).
    """
    y = np.asarray(y, np.float64)
    W = np.asarray(wts, np.float64) ** 2
    n, m = y.shape
    Wy = W * y
    wyy = (Wy * y).sum(1)
    cW = np.concatenate([np.zeros((n, 1)), np.cumsum(W, 1)], 1)     # sums over bins < k
    cY = np.concatenate([np.zeros((n, 1)), np.cumsum(Wy, 1)], 1)
    SW, SY = cW[:, -1:], cY[:, -1:]
    M = np.ones_like(y) if base is None else np.where(W > 0, np.asarray(base, np.float64), 1.0)
    cM = np.concatenate([np.zeros((n, 1)), np.cumsum(W * M * M, 1)], 1)   # the unreacted side's sums
    cMY = np.concatenate([np.zeros((n, 1)), np.cumsum(Wy * M, 1)], 1)
    SM, SMY = cM[:, -1:], cMY[:, -1:]
    if rho is not None:   # the reacted side's sums
        R = np.full_like(y, float(rho)) if reacted is None else np.where(W > 0, np.asarray(reacted, np.float64), rho)
        cR = np.concatenate([np.zeros((n, 1)), np.cumsum(W * R * R, 1)], 1)
        cRY = np.concatenate([np.zeros((n, 1)), np.cumsum(Wy * R, 1)], 1)
    step_d = float(centres[1] - centres[0]) if m > 1 else BIN_PX
    with np.errstate(divide="ignore", invalid="ignore"):
        if rho is None:
            sse = -np.where(cW > 0, cY ** 2 / cW, 0.0) - np.where(SW - cW > 0, (SY - cY) ** 2 / (SW - cW), 0.0)
        else:
            ll, yl = cR + (SM - cM), cRY + (SMY - cMY)
            if level is None:
                sse = -np.where(ll > 0, yl ** 2 / ll, 0.0)
            else:
                lv = np.asarray(level, np.float64)[:, None]
                sse = -2 * lv * yl + lv ** 2 * ll
    split = np.concatenate([centres - 0.5 * step_d, [centres[-1] + 0.5 * step_d]])
    # two candidates: the best hard step, and the best one farther than 2 FINE_HALF_PX from it
    # (near-ties: a front close to the deepest bin against an all-reacted profile)
    k1 = np.argmin(sse, 1)
    far = np.abs(split[None, :] - split[k1][:, None]) > 2 * FINE_HALF_PX
    k2 = np.argmin(np.where(far, sse, np.inf), 1)
    best = None
    for k in (k1, k2):
        xc = np.clip(split[k], -1.0 + FINE_HALF_PX, deepest + 2.0 - FINE_HALF_PX)
        res = _fine_fit(xc, centres, step_d, W, Wy, wyy, cW, cY, SW, SY, rho, level,
                        (M, cM, cMY, SM, SMY) + ((R, cR, cRY) if rho is not None else (None,) * 3), positions)
        if best is None:
            best = res
        else:
            better = res[4] < best[4]
            best = tuple(np.where(better, r, o) for r, o in zip(res, best))
    return best[:4]


def _fine_fit(xc, centres, step_d, W, Wy, wyy, cW, cY, SW, SY, rho, level=None, unreacted=None, positions=None):
    """The smooth step model on a 0.1-px grid within FINE_HALF_PX of ``xc`` (see ``_grid_fit``):
    (x, w, level, step, residual) per frame."""
    n, m = W.shape
    rows = np.arange(n)
    off = np.arange(-FINE_HALF_PX, FINE_HALF_PX + 1e-9, X_STEP_PX)
    xs = xc[:, None] + off[None, :]                                   # (n, n_x)
    half = FINE_HALF_PX + 8.0 * max(WIDTHS_PX)
    n_win = int(np.ceil(2 * half / step_d)) + 2
    j0 = np.searchsorted(centres, xc - half)
    jj = j0[:, None] + np.arange(n_win)[None, :]
    inwin = jj < m
    jj = np.minimum(jj, m - 1)
    je = np.minimum(j0 + n_win, m)
    cw = centres[jj]
    if positions is not None:
        pw = positions[rows[:, None], jj]
        cw = np.where(np.isfinite(pw) & (np.abs(pw - cw) < step_d), pw, cw)
    Ww = np.where(inwin, W[rows[:, None], jj], 0.0)
    Wyw = np.where(inwin, Wy[rows[:, None], jj], 0.0)
    L0, LY = cW[rows, j0][:, None], cY[rows, j0][:, None]             # bins before the window: Phi = 1
    R0, RY = (SW[:, 0] - cW[rows, je])[:, None], (SY[:, 0] - cY[rows, je])[:, None]   # after: Phi = 0
    if rho is not None:   # the unreacted side follows the profile m, the reacted one r: sums of W m^2, W y m, ...
        M, cM, cMY, SM, SMY, R, cR, cRY = unreacted
        Mw = np.where(inwin, M[rows[:, None], jj], 1.0)[:, None, :]
        Rw = np.where(inwin, R[rows[:, None], jj], rho)[:, None, :]
        R0, RY = (SM[:, 0] - cM[rows, je])[:, None], (SMY[:, 0] - cMY[rows, je])[:, None]
        L0, LY = cR[rows, j0][:, None], cRY[rows, j0][:, None]
    best_r = np.full(n, np.inf)
    out_x, out_w = np.zeros(n), np.zeros(n)
    out_a, out_b = np.zeros(n), np.zeros(n)
    for w in WIDTHS_PX:
        phi = ndtr((xs[:, :, None] - cw[:, None, :]) / w)            # (n, n_x, n_win)
        if rho is None:
            s0, t0 = SW, SY
            s1 = L0 + np.einsum("nxw,nw->nx", phi, Ww)
            s2 = L0 + np.einsum("nxw,nw->nx", phi * phi, Ww)
            t1 = LY + np.einsum("nxw,nw->nx", phi, Wyw)
            det = s0 * s2 - s1 ** 2
            det = np.where(np.abs(det) < 1e-12 * np.maximum(s0 * s2, 1e-300), np.inf, det)
            c = (s2 * t0 - s1 * t1) / det
            s = (s0 * t1 - s1 * t0) / det
            r = wyy[:, None] - c * t0 - s * t1
        else:
            L = Mw + (Rw - Mw) * phi
            ll = L0 + R0 + np.einsum("nxw,nw->nx", L * L, Ww)
            yl = LY + RY + np.einsum("nxw,nw->nx", L, Wyw)
            s = np.zeros_like(yl)
            if level is None:
                c = yl / np.where(ll > 0, ll, np.inf)
                r = wyy[:, None] - c * yl
            else:
                c = np.broadcast_to(np.asarray(level, np.float64)[:, None], yl.shape)
                r = wyy[:, None] - 2 * c * yl + c ** 2 * ll
        j = np.argmin(r, 1)
        rj = r[rows, j]
        better = rj < best_r
        # parabola through the best grid point and its neighbours
        jm, jp = np.clip(j - 1, 0, xs.shape[1] - 1), np.clip(j + 1, 0, xs.shape[1] - 1)
        r0, rm, rp = rj, r[rows, jm], r[rows, jp]
        den = rm - 2 * r0 + rp
        offp = np.where((den > 0) & (jm != j) & (jp != j), 0.5 * (rm - rp) / np.where(den > 0, den, 1), 0.0)
        xbest = xs[rows, j] + np.clip(offp, -0.5, 0.5) * X_STEP_PX
        best_r = np.where(better, rj, best_r)
        out_x = np.where(better, xbest, out_x)
        out_w = np.where(better, w, out_w)
        out_a = np.where(better, c[rows, j], out_a)
        out_b = np.where(better, s[rows, j], out_b)
    return out_x, out_w, out_a, out_b, best_r


def _bin_factor(shape):
    return max(1, int(min(shape)) // BIN_TARGET_PX)


def _block_mean(a, b):
    """(n, *shape) -> means over blocks of b pixels per axis (rows/columns that fill no block are
    dropped); a shift of d binned pixels is b * d pixels."""
    if b == 1:
        return np.asarray(a, np.float32)
    n, *shape = a.shape
    a = a[(slice(None),) + tuple(slice(0, (s // b) * b) for s in shape)]
    new = [n]
    for s in shape:
        new += [s // b, b]
    return a.reshape(new).mean(axis=tuple(range(2, 2 + 2 * len(shape), 2)), dtype=np.float32)


def _bandpass(image, lo=0.75, hi=3.0):
    image = np.asarray(image, np.float32)
    return ndimage.gaussian_filter(image, lo) - ndimage.gaussian_filter(image, hi)


def _inside(shape, d, border=0.0):
    """Mask of the pixels p whose p + d lies inside an image of ``shape`` (at least ``border``
    pixels from its edges)."""
    out = None
    for axis, (size, da) in enumerate(zip(shape, d)):
        i = np.arange(size) + da
        ok = ((i >= border) & (i <= size - 1 - border)).reshape([-1 if a == axis else 1 for a in range(len(shape))])
        out = ok if out is None else out & ok
    return out


def _refine_lk(moving, reference, keep, d, iters=4, max_step=1.0, border=0.0, weight=None):
    """Sub-pixel refinement of ``d`` (``a moving(p + d) ~ reference(p)``, both band-passed, same
    grid, ``a`` a free gain: fading and flicker) by Gauss-Newton on the masked squared difference
    (Lucas-Kanade): per iteration one Fourier-shift resampling, one gradient and a small solve for
    (a, a delta). Pixels within ``border`` of either image's edge are left out (the band-pass
    filter reflects there, differently in the two images). ``weight`` (reference grid): per-pixel
    weights, e.g. the inverse noise variance. Returns d (unchanged where singular)."""
    d = np.asarray(d, np.float64).copy()
    own = _inside(moving.shape, np.zeros(moving.ndim), border)
    spec = np.fft.rfftn(moving)
    for _ in range(iters):
        # a Fourier shift keeps the noise's variance whatever the sub-pixel phase (a linear
        # interpolation would smooth it by a phase-dependent amount and pull d to half pixels)
        m = np.fft.irfftn(ndimage.fourier_shift(spec, -d, n=moving.shape[-1]), s=moving.shape,
                          axes=tuple(range(moving.ndim)))
        wgt = (keep & own & _inside(moving.shape, d, border)).astype(np.float32)
        if wgt.mean() < MIN_STABLE_FRACTION:
            break
        if weight is not None:
            wgt = wgt * weight
        g = np.gradient(m)
        basis = np.stack([m] + (list(g) if moving.ndim > 1 else [g])).reshape(moving.ndim + 1, -1)
        bw = basis * wgt.reshape(1, -1)
        A = bw @ basis.T
        rhs = bw @ np.asarray(reference, np.float64).reshape(-1)
        try:
            u = np.linalg.solve(A, rhs)
        except np.linalg.LinAlgError:
            break
        if not (np.isfinite(u).all() and u[0] > 0):
            break
        delta = u[1:] / u[0]
        d += np.clip(delta, -max_step, max_step)
        if np.abs(delta).max() < 0.002:
            break
    return d


def _register_sequential(frames, depth, valid, chain, backend, margin=7.0, search=4.0, final_margin=7.0):
    """Shifts frame by frame against frame 0, masked to the content that frame t-1 showed stable
    (core deeper than its front, vacuum beyond its swollen outline, each ``margin`` px clear).

    Per frame: the start is the previous frame's shift plus the coarse chain's step; a whitened
    FFT cross-correlation (``shift_nd``) of block-averaged frames (about ``BIN_TARGET_PX`` per
    side) within ``search`` px of it; then Lucas-Kanade refinement (``_refine_lk``) on frames
    block-averaged half as much. The frame's own front and outline (a step fit with free levels on
    its profile, at the refinement's resolution) place the next mask and, in a last pass, a mask
    ``final_margin`` px clear of the frame's own front for one more refinement."""
    n, ndim = frames.shape[0], depth.ndim
    where = be.resolve(backend)
    b = _bin_factor(depth.shape)
    bl = max(1, b // 2)
    coarse = _block_mean(frames, b)
    fine = _block_mean(frames, bl)
    hp_c = max(1.0, 3.0 / b)
    ref_c = be.to_device(_highpass(coarse[0], hp_c), where)
    xp = be.xp_of(ref_c)
    band = (LK_BAND_PX[0] / bl ** 0.5, LK_BAND_PX[1] / bl)
    ref_f = _bandpass(fine[0], *band)
    edge = LK_BORDER * band[1]   # the band-pass filter's reach: its reflection at the edges differs
    noise_w = _shot_noise_weight(fine[0])
    depth_c = _block_mean(depth[None], b)[0]
    depth_f = _block_mean(depth[None], bl)[0]
    valid_f = _block_mean(valid[None].astype(np.float32), bl)[0] > 0.999
    edges, centres = _edges(depth_f, valid_f)
    shifts = np.zeros((n, ndim))
    fronts = np.zeros((n, 2))   # front and swollen outline (px) seen at frame t
    x_prev = sw_prev = 0.0
    for t in range(1, n):
        step = chain[t] - chain[t - 1]
        start = shifts[t - 1] + step
        # a large chain step can be wrong (much changed between two frames): then search wide
        # enough to cover the previous frame's shift as well; otherwise near the start only (a
        # small stable area can show a wrong peak a few px away)
        big = float(np.abs(step).max())
        radius = search + big + 8.0 if big > search else search
        keep_c = (depth_c > x_prev + margin) | (depth_c < -sw_prev - margin)
        keep_f = (depth_f > x_prev + margin) | (depth_f < -sw_prev - margin)
        r = np.round(start / b)
        moved = _highpass(ndimage.shift(coarse[t], -r, order=0, mode="nearest"), hp_c)
        wts = ndimage.gaussian_filter(keep_c.astype(np.float32), 2.0 / b)
        d = start
        if wts.mean() > MIN_STABLE_FRACTION:
            dc = shift_nd(be.to_device(moved[None], where), ref_c, xp, weights=be.to_device(wts[None], where),
                          whiten=True, lowpass_px=1.0, max_shift=radius / b + 1)[0]
            if np.isfinite(dc).all():
                d = (dc + r) * b
        shifts[t] = bl * _refine_lk(_bandpass(fine[t], *band), ref_f, keep_f, d / bl, border=edge, weight=noise_w)
        # depth_f holds full-resolution pixels; only its grid is coarser
        x, sw = _front_and_outline(fine[t:t + 1], shifts[t:t + 1] / bl, depth_f, valid_f, edges, centres,
                                   fine[0])
        if x is not None:
            x_prev = float(np.clip(x, x_prev, x_prev + margin))
        if sw is not None:
            sw_prev = float(np.clip(sw, sw_prev, sw_prev + margin))
        fronts[t] = x_prev, sw_prev
    # once more, masks clear of each frame's own front and outline, against a reference with less
    # noise than frame 0 (whose noise would be common to every frame's shift): the mean of the
    # aligned frames over the content each showed stable, each divided by its gain
    keeps = [(depth_f > fronts[t, 0] + final_margin) | (depth_f < -fronts[t, 1] - final_margin) for t in range(n)]
    own = _inside(depth_f.shape, np.zeros(ndim), edge)
    acc = np.zeros(depth_f.shape)
    wsum = np.zeros(depth_f.shape)
    for t in range(n):
        al = ndimage.shift(_bandpass(fine[t], *band), -shifts[t] / bl, order=1, mode="nearest", prefilter=False)
        w = keeps[t] & own & _inside(depth_f.shape, shifts[t] / bl, edge)
        den = float(np.vdot(ref_f[w], ref_f[w]))
        gain = float(np.vdot(al[w], ref_f[w])) / den if den > 0 else 0.0
        if gain > 0:
            acc[w] += al[w] / gain
            wsum[w] += 1
    ref_f = np.where(wsum > 0, acc / np.maximum(wsum, 1), ref_f)
    for t in range(1, n):
        shifts[t] = bl * _refine_lk(_bandpass(fine[t], *band), ref_f, keeps[t], shifts[t] / bl, border=edge,
                                    weight=noise_w)
    return shifts


def _shot_noise_weight(first, sigma=2.0, floor=0.01):
    """Inverse shot-noise variance per pixel (Poisson: variance proportional to the mean), from the
    smoothed first frame, with a floor of ``floor`` times its 99th percentile (read noise; any
    scale of the intensities), normalised to a mean of 1. Dark-field vacuum (few counts, support
    film texture) then counts for what its noise allows instead of being swamped by the bright
    and noisier material."""
    level = ndimage.gaussian_filter(np.asarray(first, np.float64), sigma)
    top = float(np.percentile(level, 99))
    if not top > 0:
        return None
    w = 1.0 / np.maximum(level, floor * top)
    return (w / w.mean()).astype(np.float32)


def _front_and_outline(frames, shifts, depth, valid, edges, centres, reference=None):
    """(front, swollen outline) in pixels of one frame from step fits with free levels on either
    side of the original outline; None where too few bins or no clear step. With ``reference``
    (the first frame) the fits see the frame's profile divided by the reference's over the same
    sample points: flat where nothing changed, whatever the texture or illumination gradient."""
    if reference is None:
        med, cnt = front_profiles(frames, shifts, depth, valid, edges)
    else:
        med, cnt, ref, _ = front_profiles(frames, shifts, depth, valid, edges, reference)
        med = med / np.where(np.isfinite(ref) & (ref > 0), ref, np.nan)
        cnt = np.where(np.isfinite(med), cnt, 0)
        med = np.where(np.isfinite(med), med, 0.0)
    good = cnt >= MIN_BIN_COUNT
    out = []
    for sign in (1, -1):
        c = centres * sign
        sel = (c >= D_LO_PX)[None, :] & good
        if sel.sum() < 6:
            out.append(None)
            continue
        order = np.argsort(c)
        x, _, lev, st = _grid_fit(np.where(sel, med, 0.0)[:, order], np.where(sel, np.sqrt(cnt), 0.0)[:, order],
                                  c[order], None, float(c[sel[0]].max()))
        out.append(float(x[0]) if abs(st[0]) > MIN_CONTRAST * abs(lev[0]) else None)
    return out[0], out[1]
