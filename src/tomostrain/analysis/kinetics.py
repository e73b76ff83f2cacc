"""Reaction-front kinetics from in situ movies (2D frames) or sequences of volumes (3D).

The front depth is measured below the ORIGINAL surface: the outline of the first frame (the
sheet swells outward as it reacts, so the current edge is not the reference). Steps:

1. ``register``: every frame against the first by whitened, low-passed FFT cross-correlation
   (``gpu_core.registration.shift_nd``; fine static texture outweighs the moving edges), then
   once more with the region that changes (between the swollen outline and the front) masked out.
2. ``original_depth``: the first frame is smoothed, split into vacuum and material at the
   midpoint of the two Otsu classes' medians, and its signed Euclidean distance (positive inside,
   pixels) taken on a 4x (3D: 2x) finer grid so that the outline is sub-pixel.
3. ``front_profiles``: for every frame, the median intensity in 0.5-px bins of depth below the
   original outline (the depth map moved by the frame's shift). The median ignores Ni dots and
   Poisson outliers; binning over the whole outline averages the noise.
4. The per-frame model ``P(d) = b [1 + (q - 1) Phi((x - d) / w)]`` for depths beyond
   ``D_LO_PX``: ``b`` that frame's core level (so fading, flicker and the gain cancel), ``q``
   the reacted/core intensity ratio (one for the movie, measured on the frames where both levels
   are in view with both levels free), ``x`` the front depth and ``w`` its width, found by a
   vectorised grid search over (x, w) with a parabola through the best x. The same step model on
   the vacuum side gives the swollen outline, which (with the front) bounds the region masked
   out of the refining registration passes.
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
REFINE_MARGINS_PX = (10.0, 6.0, 4.0)  # masked registration passes: margin around the changing band
MIN_STABLE_FRACTION = 0.05  # frames with less stable area than this keep their coarse shift
DETECT_PX = 2.0       # the power law is fitted to fronts deeper than this (and than 2 widths)


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
                register=True, backend="auto") -> FrontTrack:
    """Front depth below the first frame's outline in every frame of ``frames``.

    frames : (n_frames, y, x) movie or (n_volumes, z, y, x) volumes, any real dtype.
    time_s : (n_frames,) seconds; default ``arange(n) * frame_interval_s``.
    vacuum : "bright" (bright-field TEM), "dark" (HAADF/dark field, reconstructed volumes) or
        "auto" (the side into which the changes over the movie reach deeper is the material).
    register : False when the frames are already aligned.
    """
    frames = _check_frames(frames)
    n_frames, shape = frames.shape[0], frames.shape[1:]
    time_s = _times(time_s, n_frames, frame_interval_s)
    if not (np.isfinite(pixel_size_nm) and pixel_size_nm > 0):
        raise InputError(f"pixel_size_nm must be a positive number, got {pixel_size_nm!r}")
    host = np.asarray(be.to_host(frames), np.float32)
    shifts = register_frames(host, backend=backend) if register else np.zeros((n_frames, len(shape)))
    # early-ish frames: the changes are clear while the coarse (chained) drift error is still small
    probes = sorted({max(1, n_frames // d) for d in (8, 6, 4, 3)})
    later = [_aligned(host[p], shifts[p]) for p in probes]
    depth, valid, side = original_depth(host[0], vacuum=vacuum, last=later)
    if register:  # frame by frame on the content that does not change: the core ahead, far vacuum
        shifts = _register_sequential(host, depth, valid, backend)
    result = _measure(host, shifts, depth, valid)
    if register:  # once more with the fronts of the global model
        weights = _stable_weights(depth, valid, result[0], result[1], result[5], REFINE_MARGINS_PX[-1])
        shifts = register_frames(host, backend=backend, weights=weights, initial=shifts, max_shift=REFINE_MARGINS_PX[-1])
        result = _measure(host, shifts, depth, valid)
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
        for a in range(1, n, step):
            b = min(n, a + step)
            imgs = be.to_device(frames[a:b], where)
            prev = be.to_device(frames[a - 1:b - 1], where)
            out[a:b] = shift_nd(imgs, prev, be.xp_of(imgs), whiten=True, lowpass_px=1.0, highpass_px=16.0)
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


def original_depth(first, *, vacuum="auto", last=None, supersample=None):
    """Signed depth (pixels, positive inside the material) below the outline of ``first``, a mask
    of where that depth is trustworthy (no closer outline could lie outside the image), and which
    side is vacuum ("bright"/"dark"). ``last`` (the last frame, aligned) decides ``vacuum="auto"``."""
    from skimage.filters import threshold_otsu

    first = np.asarray(first, np.float64)
    ndim = first.ndim
    ss = supersample or (4 if ndim == 2 else 2)
    smooth = ndimage.gaussian_filter(first, 1.5)
    t = threshold_otsu(smooth)
    lo, hi = np.median(smooth[smooth <= t]), np.median(smooth[smooth > t])
    level = 0.5 * (lo + hi)
    side = vacuum
    if side == "auto":
        side = _vacuum_side(smooth, level, last)
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


def front_profiles(frames, shifts, depth, valid, edges):
    """Per-frame median of the (lightly smoothed) frame in bins of depth below the original
    outline: (medians (n, n_bins), counts (n, n_bins)). ``edges`` are the bin edges (pixels)."""
    n = frames.shape[0]
    n_bins = len(edges) - 1
    med = np.full((n, n_bins), np.nan)
    cnt = np.zeros((n, n_bins))
    for t in range(n):
        d = _moved(depth, shifts[t], np.nan)
        ok = _moved(valid.astype(np.float32), shifts[t], 0.0) > 0.5
        ok &= np.isfinite(d) & (d >= edges[0]) & (d < edges[-1])
        img = ndimage.gaussian_filter(frames[t].astype(np.float64), SMOOTH_PX)
        b = ((d[ok] - edges[0]) / (edges[1] - edges[0])).astype(np.int64)
        v = img[ok]
        order = np.lexsort((v, b))
        b, v = b[order], v[order]
        counts = np.bincount(b, minlength=n_bins)
        start = np.concatenate([[0], np.cumsum(counts)[:-1]])
        has = counts > 0
        mid = start[has] + (counts[has] - 1) / 2.0
        med[t, has] = 0.5 * (v[np.floor(mid).astype(int)] + v[np.ceil(mid).astype(int)])
        cnt[t] = counts
    return med, cnt


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


def _vacuum_side(smooth, level, last):
    """'bright' or 'dark': the material is the side into which the changes between the first and
    the last frame reach deeper (the front goes deeper into the sheet than the sheet swells).

    Works on 1-px bins of signed distance from the first frame's outline: ``log(last / first)``
    per bin is the gain ratio far from the outline on both sides and differs by the contrast of
    the reacted material inside the changed band; the band's extent on each side decides."""
    if last is None:
        raise InputError("vacuum='auto' needs the last frame; give vacuum='bright' or 'dark'")
    if isinstance(last, (list, tuple)):  # several later frames vote by the difference of their reaches
        votes = [_reach_difference(smooth, level, f) for f in last]
        return "dark" if sum(votes) > 0 else "bright"
    return "dark" if _reach_difference(smooth, level, last) > 0 else "bright"


def _reach_difference(smooth, level, last):
    """How much deeper (px) the changes reach into the bright side than into the dark side."""
    bright = smooth > level
    d = np.where(bright, ndimage.distance_transform_edt(bright), -ndimage.distance_transform_edt(~bright))
    bins = np.round(d).astype(int)
    lo = bins.min()
    lastm = ndimage.gaussian_filter(np.asarray(last, float), 1.5)
    ratio = np.log(np.clip(lastm, 1e-9, None) / np.clip(smooth, 1e-9, None))
    n = bins.max() - lo + 1
    cnt = np.bincount((bins - lo).ravel(), minlength=n)
    med = np.array([np.median(ratio[bins == b]) if c >= 8 else np.nan for b, c in zip(range(lo, lo + n), cnt)])
    centre = np.arange(lo, lo + n)
    ok = np.isfinite(med)
    if ok.sum() < 6:
        return 0
    def reach(sign):
        """Extent (px) of the changed band from the outline into one side, against that side's far end."""
        side = ok & (centre * sign > 0)
        if side.sum() < 4:
            return 0
        vals = med[side] if sign > 0 else med[side][::-1]      # from the outline outwards
        base = np.median(vals[-3:])
        changed = np.abs(vals - base) > 0.1
        run = 0
        for i, c in enumerate(changed):                        # 1D, a few dozen bins
            if c:
                run = i + 1
            elif i - run >= 2:
                break
        return run

    return reach(1) - reach(-1)


def _measure(frames, shifts, depth, valid):
    """Front depth, width, contrast ratio, levels, deepest measured bin and the outward swelling
    (pixels beyond the original outline) from the depth profiles of every frame."""
    dmin = float(np.floor(depth[valid].min())) if valid.any() else -1.0
    dmax = float(np.ceil(depth[valid].max())) if valid.any() else 1.0
    edges = np.arange(dmin, dmax + BIN_PX, BIN_PX)
    med, cnt = front_profiles(frames, shifts, depth, valid, edges)
    centres = 0.5 * (edges[:-1] + edges[1:])
    good = cnt >= MIN_BIN_COUNT
    inside = (centres >= D_LO_PX)[None, :] & good
    deepest = float(centres[inside.any(0)].max()) if inside.any() else D_LO_PX
    y = np.where(inside, med, 0.0)
    wts = np.where(inside, np.sqrt(cnt), 0.0)
    # pass A: free levels per frame (core c, reacted c + s): the reacted/core intensity ratio q
    # from the frames where both levels are in view
    xa, _, ca, sa = _grid_fit(y, wts, centres, None, deepest)
    ratio = (ca + sa) / np.where(ca != 0, ca, np.nan)
    ok = (xa > 4.0) & (xa < deepest - 6.0) & np.isfinite(ratio)
    q = float(np.nanmedian(ratio[ok] if ok.sum() >= 3 else ratio))
    # pass B: one level b per frame, q fixed (illumination changes are multiplicative)
    x, w, b, _ = _grid_fit(y, wts, centres, q, deepest)
    # the swollen outline: the same step model on the vacuum side, levels free
    outside = (centres <= -D_LO_PX)[None, :] & good
    if outside.sum(1).min() >= 6:
        sw, _, _, _ = _grid_fit(np.where(outside, med, 0.0)[:, ::-1], np.where(outside, np.sqrt(cnt), 0.0)[:, ::-1],
                                -centres[::-1], None, float(-centres[outside.any(0)].min()))
    else:
        sw = np.zeros_like(x)
    levels = np.stack([b, b * q], 1)
    return x, w, q, levels, deepest, np.clip(sw, 0.0, None)


def _grid_fit(y, wts, centres, rho, deepest):
    """Grid search of the step model per frame; returns x, w, and the linear level(s).

    rho None: y = c + s Phi((x - d)/w) (two linear parameters); else y = b [1 + (rho-1) Phi].
    """
    xs = np.arange(-1.0, deepest + 2.0, X_STEP_PX)
    n = y.shape[0]
    best_r = np.full(n, np.inf)
    out_x, out_w = np.zeros(n), np.zeros(n)
    out_a, out_b = np.zeros(n), np.zeros(n)
    W = wts ** 2
    wy, wyy = W * y, (W * y * y).sum(1)
    for w in WIDTHS_PX:
        phi = ndtr((xs[:, None] - centres[None, :]) / w)          # (n_x, n_bins)
        if rho is None:
            s0 = W.sum(1)[:, None]
            s1 = W @ phi.T
            s2 = W @ (phi ** 2).T
            t0 = wy.sum(1)[:, None]
            t1 = wy @ phi.T
            det = s0 * s2 - s1 ** 2
            det = np.where(np.abs(det) < 1e-12, np.inf, det)
            c = (s2 * t0 - s1 * t1) / det
            s = (s0 * t1 - s1 * t0) / det
            r = wyy[:, None] - c * t0 - s * t1
        else:
            L = 1.0 + (rho - 1.0) * phi
            ll = W @ (L ** 2).T
            yl = wy @ L.T
            c = yl / np.where(ll > 0, ll, np.inf)
            s = np.zeros_like(c)
            r = wyy[:, None] - c * yl
        j = np.argmin(r, 1)
        rows = np.arange(n)
        rj = r[rows, j]
        better = rj < best_r
        # parabola through the best grid point and its neighbours
        jm, jp = np.clip(j - 1, 0, len(xs) - 1), np.clip(j + 1, 0, len(xs) - 1)
        r0, rm, rp = rj, r[rows, jm], r[rows, jp]
        den = rm - 2 * r0 + rp
        off = np.where((den > 0) & (jm != j) & (jp != j), 0.5 * (rm - rp) / np.where(den > 0, den, 1), 0.0)
        xbest = xs[j] + np.clip(off, -0.5, 0.5) * X_STEP_PX
        best_r = np.where(better, rj, best_r)
        out_x = np.where(better, xbest, out_x)
        out_w = np.where(better, w, out_w)
        out_a = np.where(better, c[rows, j], out_a)
        out_b = np.where(better, s[rows, j], out_b)
    return out_x, out_w, out_a, out_b


def _register_sequential(frames, depth, valid, backend, margin=6.0, search=4.0):
    """Shifts frame by frame: frame t against frame 0, masked to the content that frame t-1 showed
    stable (core deeper than its front, vacuum beyond its swollen outline, each ``margin`` px
    clear), searched within ``search`` px of frame t-1's shift; each frame's front and outline
    then come from its own profile with free levels (only to place the next mask)."""
    n = frames.shape[0]
    shifts = np.zeros((n, depth.ndim))
    dmin = float(np.floor(depth[valid].min()))
    dmax = float(np.ceil(depth[valid].max()))
    edges = np.arange(dmin, dmax + BIN_PX, BIN_PX)
    centres = 0.5 * (edges[:-1] + edges[1:])
    x_prev = sw_prev = 0.0
    for t in range(1, n):
        keep = (depth > x_prev + margin) | (depth < -sw_prev - margin)
        # every pixel may anchor the registration (beyond ``valid`` the depth is only an upper bound)
        weights = ndimage.gaussian_filter(keep.astype(np.float32), 2.0)[None]
        shifts[t] = register_frames(frames[t:t + 1], backend=backend, weights=weights, initial=shifts[t - 1:t],
                                    max_shift=search, reference=frames[0])[0]
        med, cnt = front_profiles(frames[t:t + 1], shifts[t:t + 1], depth, valid, edges)
        good = cnt >= MIN_BIN_COUNT
        inside = (centres >= D_LO_PX)[None, :] & good
        outside = (centres <= -D_LO_PX)[None, :] & good
        if inside.sum() >= 6:
            deepest = float(centres[inside[0]].max())
            x = _grid_fit(np.where(inside, med, 0.0), np.where(inside, np.sqrt(cnt), 0.0), centres, None, deepest)[0][0]
            x_prev = float(np.clip(x, x_prev, x_prev + margin))
        if outside.sum() >= 6:
            far = float(-centres[outside[0]].min())
            sw = _grid_fit(np.where(outside, med, 0.0)[:, ::-1], np.where(outside, np.sqrt(cnt), 0.0)[:, ::-1],
                           -centres[::-1], None, far)[0][0]
            sw_prev = float(np.clip(sw, sw_prev, sw_prev + margin))
    return shifts


def _stable_weights(depth, valid, x, w, swell, margin):
    """(n, *shape) weights in frame-0 coordinates: 1 on the core ahead of each frame's front and
    on the vacuum beyond the swollen outline, 0 on the band that reacts or swells, tapered."""
    out = np.empty((len(x),) + depth.shape, np.float32)
    for t in range(len(x)):
        keep = (depth > max(x[t], 0.0) + 2 * w[t] + margin) | (depth < -swell[t] - 2 * w[t] - margin)
        out[t] = ndimage.gaussian_filter(keep.astype(np.float32), 2.0)
    return out
