"""Iterative reconstruction: SIRT, CGLS, OS-SART and TV-regularised least squares.

Every method solves ``A x ~= b`` with the matched projector pair of ``projectors`` (``A``:
forward projection, ``A^T``: back projection), slice by slice: all scalars (CGLS step lengths,
normalisations) are per slice, so a volume reconstructed in slice chunks equals the volume
reconstructed at once. Written once against ``xp``: runs where ``projections`` live.

Common arguments
----------------
projections : (n_angles, n_rows, n_cols) NumPy or CuPy array, linear in projected density
angles_deg, center, shifts, geometry : the tilt geometry (see ``TiltGeometry``); row shifts and
    a tilt-axis angle are applied by resampling the projections once before iterating
iterations : number of iterations (OS-SART: full passes over all subsets)
x0 : (n_rows, n_x, n_x) initial volume ``[y, z, x]``; default zeros
nonnegative : clip the volume at 0 after every update (CGLS: once at the end). Default off for
    SIRT, OS-SART and CGLS (the plain least-squares iterations, as ASTRA, TomoPy and ETSpy run
    them), on for TV (a constrained solver by design); DART clamps at its lowest grey level
support : boolean mask ``(n_x, n_x)`` or ``(n_rows, n_x, n_x)``; voxels outside stay 0
callback : ``callback(iteration, x, residual_norm)`` after every iteration, with
    ``residual_norm = ||b - A x||`` (SIRT, OS-SART: of the iterate before that iteration's update)
n_x : slice size of the volume; default n_cols

Returns (n_rows, n_x, n_x) float32 on the device of ``projections``.
"""
from __future__ import annotations

import inspect

import numba
import numpy as np

from ..errors import InputError
from ..gpu_core import backend
from ..gpu_core.kernels import projector as _k
from .geometry import TiltGeometry, align_projections, check_series


class Operator:
    """The projector pair ``A``/``A^T`` for one aligned geometry and slice size, on device ``xp``.

    ``forward``/``back`` take and return the public layouts (volume ``[y, z, x]``, series
    ``[k, y, j]``). SIRT and OS-SART iterate in the device's *work layout* instead: on the CPU
    rows-last (volume ``[z, x, y]``, series ``[k, j, y]``), where one footprint serves every
    slice in a SIMD loop (``gpu_core.kernels.projector``); on the GPU the public layout.
    ``to_work_volume``/``from_work_volume``/``to_work_series`` convert, once per solve.
    """

    def __init__(self, geometry: TiltGeometry, n_x: int, xp):
        self.geometry = geometry
        self.n_x = int(n_x)
        self.xp = xp
        self.table = geometry.kernel_table(xp)
        self.rows_last = xp is np

    def forward(self, x):
        return _k.forward(self.xp.ascontiguousarray(x, dtype=self.xp.float32), self.table, self.geometry.n_cols)

    def back(self, p):
        return _k.back(self.xp.ascontiguousarray(p, dtype=self.xp.float32), self.table, self.n_x)

    # --- work layout -------------------------------------------------------------------------
    def to_work_volume(self, x):
        return _k.volume_to_rows_last(x) if self.rows_last else x

    def from_work_volume(self, x):
        return _k.volume_from_rows_last(x) if self.rows_last else x

    def to_work_series(self, b):
        return _k.swap_last(b) if self.rows_last else b

    def work_forward(self, x):
        """``A x`` of a work-layout volume, in the work layout."""
        return _k.forward_rows(x, self.table, self.geometry.n_cols) if self.rows_last else self.forward(x)

    def work_back(self, p):
        """``A^T p`` of a work-layout series, in the work layout."""
        return _k.back_rows(p, self.table, self.n_x) if self.rows_last else self.back(p)

    def work_row_weights(self):
        """``row_weights`` shaped to broadcast over a work-layout series."""
        w = self.row_weights()
        return w.reshape(w.shape[0], w.shape[2], 1) if self.rows_last else w

    def work_column_weights(self):
        """``column_weights`` shaped to broadcast over a work-layout volume."""
        w = self.column_weights()
        return w.reshape(self.n_x, self.n_x, 1) if self.rows_last else w

    def work_mask(self, mask):
        """A support mask ``(1 or n_rows, n_x, n_x)`` in the work layout."""
        if not self.rows_last:
            return mask
        if mask.shape[0] == 1:
            return mask.reshape(self.n_x, self.n_x, 1)
        return np.ascontiguousarray(mask.transpose(1, 2, 0))

    def subset(self, index) -> "Operator":
        return Operator(self.geometry.subset(index), self.n_x, self.xp)

    def row_weights(self):
        """(n_angles, 1, n_cols) ``1 / (A 1)`` (0 where no voxel is seen), the same for every slice."""
        return _safe_inverse(self.forward(self.xp.ones((1, self.n_x, self.n_x), self.xp.float32)))

    def column_weights(self):
        """(1, n_x, n_x) ``1 / (A^T 1)`` (0 where no ray passes), the same for every slice."""
        g = self.geometry
        return _safe_inverse(self.back(self.xp.ones((g.n_angles, 1, g.n_cols), self.xp.float32)))

    def norm(self, iterations: int = 20) -> float:
        """Largest singular value of the one-slice operator (power iteration on ``A^T A``)."""
        xp = self.xp
        x = xp.ones((1, self.n_x, self.n_x), xp.float32)  # A^T A >= 0 elementwise: a positive start converges
        value = 0.0
        for _ in range(iterations):
            y = self.back(self.forward(x))
            value = float(xp.sqrt(xp.sum(y.astype(xp.float64) ** 2)))
            if value == 0.0:
                return 0.0
            x = y / value
        return float(np.sqrt(value))


def _safe_inverse(a):
    xp = backend.xp_of(a)
    out = xp.zeros_like(a)
    ok = a > 1e-6 * float(a.max()) if a.size and float(a.max()) > 0 else a > 0
    out[ok] = 1.0 / a[ok]
    return out


def prepare(projections, angles_deg, center, shifts, geometry, n_x, x0, support):
    """Validate the inputs; return (aligned float32 data, Operator, x0 copy or zeros, support mask)."""
    check_series(projections)
    n_angles, n_rows, n_cols = projections.shape
    if geometry is None:
        geometry = TiltGeometry(angles_deg, n_rows, n_cols, center=center, shifts=shifts)
    elif angles_deg is not None or center is not None or shifts is not None:
        raise InputError("give either geometry= or angles_deg/center/shifts, not both")
    if (geometry.n_angles, geometry.n_rows, geometry.n_cols) != projections.shape:
        raise InputError(
            f"projections have shape {projections.shape} but the geometry expects "
            f"({geometry.n_angles}, {geometry.n_rows}, {geometry.n_cols}) (n_angles, n_rows, n_cols)"
        )
    xp = backend.xp_of(projections)
    data = xp.asarray(projections, dtype=xp.float32)
    if geometry.needs_resampling:
        data = align_projections(data, geometry.shifts, geometry.tilt_axis_deg)
        geometry = geometry.aligned()
    n_x = n_cols if n_x is None else int(n_x)
    if n_x < 1:
        raise InputError(f"n_x must be a positive number of voxels, got {n_x}")
    shape = (n_rows, n_x, n_x)
    if x0 is None:
        x = xp.zeros(shape, xp.float32)
    else:
        if tuple(x0.shape) != shape:
            raise InputError(f"x0 must have shape {shape} (n_rows, n_x, n_x), got {tuple(x0.shape)}")
        x = xp.array(x0, dtype=xp.float32, copy=True)
    mask = None
    if support is not None:
        mask = xp.asarray(support)
        if mask.shape not in (shape, shape[1:]) or mask.dtype != bool:
            raise InputError(f"support must be a boolean mask of shape {shape[1:]} or {shape}, "
                             f"got {mask.dtype} {tuple(mask.shape)}")
        mask = mask if mask.ndim == 3 else mask[None]
        x = x * mask
    return data, Operator(geometry, n_x, xp), x, mask


def _slice_norm(a, axes):
    """Per-slice squared norm, shaped to broadcast over the slice axis (volume axis 0 / series axis 1)."""
    xp = backend.xp_of(a)
    return xp.sum(a.astype(xp.float64) ** 2, axis=axes, keepdims=True)


def _residual_norm(r) -> float:
    xp = backend.xp_of(r)
    return float(xp.sqrt(xp.sum(r.astype(xp.float64) ** 2)))


def _constrain(x, nonnegative, mask):
    xp = backend.xp_of(x)
    if nonnegative:
        x = xp.maximum(x, 0, out=x)
    if mask is not None:
        x *= mask
    return x


@numba.njit(parallel=True, cache=True)
def _weighted_residual_cpu(b, ax, row, out):
    """out = row * (b - ax) (row broadcast over the last axis); returns sum (b - ax)^2 in float64."""
    n0, n1, n2 = b.shape
    total = 0.0
    for r in numba.prange(n0 * n1):
        i, j = r // n1, r % n1
        w = row[i, j, 0]
        part = 0.0
        for q in range(n2):
            d = b[i, j, q] - ax[i, j, q]
            part += np.float64(d) * np.float64(d)
            out[i, j, q] = w * d
        total += part
    return total


@numba.njit(parallel=True, cache=True)
def _update_cpu(x, d, col, nonnegative):
    """x += col * d (col ``(.., .., 1)`` broadcast over the last axis, or full); clip at 0."""
    n0, n1, n2 = x.shape
    full = col.shape[2] != 1
    for r in numba.prange(n0 * n1):
        i, j = r // n1, r % n1
        w = col[i, j, 0]
        for q in range(n2):
            v = x[i, j, q] + (col[i, j, q] if full else w) * d[i, j, q]
            x[i, j, q] = max(v, np.float32(0.0)) if nonnegative else v


def _weighted_residual(b, ax, row, want_norm):
    """``(row * (b - ax), ||b - ax||)`` (the norm only when ``want_norm``, else 0.0); one fused
    threaded pass on the CPU (work layout), array expressions on the GPU. Reuses ``ax``."""
    xp = backend.xp_of(b)
    if xp is np and row.ndim == 3 and row.shape[2] == 1:
        total = _weighted_residual_cpu(b, ax, np.ascontiguousarray(row, np.float32), ax)
        return ax, float(np.sqrt(total)) if want_norm else 0.0
    r = b - ax
    norm = _residual_norm(r) if want_norm else 0.0
    r *= row
    return r, norm


def _update(x, d, col, nonnegative):
    """In place: ``x += col * d``, then ``x >= 0`` when ``nonnegative`` (one fused pass on the CPU)."""
    xp = backend.xp_of(x)
    if xp is np and col.ndim == 3 and col.shape[:2] == x.shape[:2] and col.shape[2] in (1, x.shape[2]):
        _update_cpu(x, d, np.ascontiguousarray(col, np.float32), bool(nonnegative))
        return x
    d *= col
    x += d
    return _constrain(x, nonnegative, None)


def sirt(projections, angles_deg=None, center=None, shifts=None, *, geometry=None, iterations=100, x0=None,
         nonnegative=False, support=None, callback=None, n_x=None, relaxation=1.0):
    """SIRT: ``x <- x + relaxation * C A^T R (b - A x)``, ``R = 1/(A 1)``, ``C = 1/(A^T 1)``."""
    b, op, x, mask = prepare(projections, angles_deg, center, shifts, geometry, n_x, x0, support)
    row, col = op.work_row_weights(), op.work_column_weights() * np.float32(relaxation)
    if mask is not None:
        col = col * op.work_mask(mask)
    b, x = op.to_work_series(b), op.to_work_volume(x)
    for it in range(int(iterations)):
        r, norm = _weighted_residual(b, op.work_forward(x), row, callback is not None)
        _update(x, op.work_back(r), col, nonnegative)
        if callback is not None:
            callback(it, op.from_work_volume(x), norm)
    return op.from_work_volume(x)


def os_sart(projections, angles_deg=None, center=None, shifts=None, *, geometry=None, iterations=10, x0=None,
            nonnegative=False, support=None, callback=None, n_x=None, n_subsets=10, relaxation=1.0):
    """Ordered-subset SART: SIRT updates over ``n_subsets`` interleaved subsets of the sorted angles.

    One iteration visits every subset once (about ``n_subsets`` times the progress of one SIRT
    iteration for the same cost).
    """
    b, op, x, mask = prepare(projections, angles_deg, center, shifts, geometry, n_x, x0, support)
    n_subsets = max(1, min(int(n_subsets), op.geometry.n_angles))
    order = np.argsort(op.geometry.angles_deg, kind="stable")
    b, x = op.to_work_series(b), op.to_work_volume(x)
    subsets = []
    for s in range(n_subsets):
        index = np.sort(order[s::n_subsets])
        sub = op.subset(index)
        col = sub.work_column_weights() * np.float32(relaxation)
        subsets.append((op.xp.ascontiguousarray(b[op.xp.asarray(index)]), sub, sub.work_row_weights(),
                        col if mask is None else col * op.work_mask(mask)))
    for it in range(int(iterations)):
        total = 0.0
        for b_sub, sub, row, col in subsets:
            # the residual norm is a host sync per subset on the GPU: only when asked for
            r, norm = _weighted_residual(b_sub, sub.work_forward(x), row, callback is not None)
            total += norm ** 2
            _update(x, sub.work_back(r), col, nonnegative)
        if callback is not None:
            callback(it, op.from_work_volume(x), float(np.sqrt(total)))
    return op.from_work_volume(x)


def cgls(projections, angles_deg=None, center=None, shifts=None, *, geometry=None, iterations=30, x0=None,
         nonnegative=False, support=None, callback=None, n_x=None):
    """CGLS (conjugate gradients on the normal equations), one Krylov sequence per slice.

    The residual ``||b - A x||`` decreases monotonically. Non-negativity would break the Krylov
    recursion, so ``nonnegative=True`` clips only the final volume.
    """
    b, op, x, mask = prepare(projections, angles_deg, center, shifts, geometry, n_x, x0, support)
    xp = op.xp
    r = b - op.forward(x)
    s = op.back(r) if mask is None else op.back(r) * mask
    p = s.copy()
    gamma = _slice_norm(s, (1, 2))
    for it in range(int(iterations)):
        q = op.forward(p)
        qq = _slice_norm(q, (0, 2)).reshape(-1, 1, 1)
        alpha = xp.where(qq > 0, gamma / xp.where(qq > 0, qq, 1.0), 0.0)
        x += (alpha * p).astype(xp.float32)
        r -= (alpha.reshape(1, -1, 1) * q).astype(xp.float32)
        s = op.back(r) if mask is None else op.back(r) * mask
        gamma_new = _slice_norm(s, (1, 2))
        beta = xp.where(gamma > 0, gamma_new / xp.where(gamma > 0, gamma, 1.0), 0.0)
        p = (s + beta * p).astype(xp.float32)
        gamma = gamma_new
        if callback is not None:
            callback(it, x, _residual_norm(r))
    return _constrain(x, nonnegative, None)


def slice_gradient(x):
    """Forward differences along the last two axes (z and x of every slice; Neumann boundary):
    ``(2, *x.shape)``. Any leading axes (rows, or references and rows) are carried along."""
    xp = backend.xp_of(x)
    g = xp.zeros((2,) + x.shape, x.dtype)
    g[0, ..., :-1, :] = x[..., 1:, :] - x[..., :-1, :]
    g[1, ..., :-1] = x[..., 1:] - x[..., :-1]
    return g


def slice_gradient_adjoint(g):
    """Adjoint of ``slice_gradient`` (minus the divergence)."""
    xp = backend.xp_of(g)
    out = xp.zeros(g.shape[1:], g.dtype)
    out[..., :-1, :] -= g[0, ..., :-1, :]
    out[..., 1:, :] += g[0, ..., :-1, :]
    out[..., :-1] -= g[1, ..., :-1]
    out[..., 1:] += g[1, ..., :-1]
    return out


def default_tv_weight(data_max: float, op: Operator, norm: float, relative: float = 0.001) -> float:
    """TV weight ``relative * ||A||^2 * s``, ``s = max(b) / max(A 1)`` a typical object density."""
    seen = float(op.forward(op.xp.ones((1, op.n_x, op.n_x), op.xp.float32)).max())
    return relative * norm**2 * (data_max / seen if seen > 0 else 0.0)


def tv(projections, angles_deg=None, center=None, shifts=None, *, geometry=None, iterations=200, x0=None,
       nonnegative=True, support=None, callback=None, n_x=None, weight=None):
    """TV-regularised least squares, ``min_x 1/2 ||A x - b||^2 + weight * TV(x)`` (+ x >= 0, support).

    Chambolle-Pock primal-dual iterations on ``K = [A; mu grad]`` with ``mu = ||A|| / sqrt(8)`` so
    both blocks have the same norm, and steps ``sigma = tau = 0.99 / ||K||``; ``||A||`` comes from
    a power iteration. TV is isotropic and 2-D within each slice ``(z, x)``, so slices stay
    independent. ``weight`` (units of ``b`` times voxels): default ``default_tv_weight`` of the data.
    """
    b, op, x, mask = prepare(projections, angles_deg, center, shifts, geometry, n_x, x0, support)
    xp = op.xp
    norm = op.norm()
    if norm == 0.0:
        return x
    if weight is None:
        weight = default_tv_weight(float(xp.abs(b).max()), op, norm)
    if not weight >= 0:
        raise InputError(f"weight must be a non-negative TV weight, got {weight!r}")
    mu = np.float32(norm / np.sqrt(8.0))
    step = np.float32(0.99 / (np.sqrt(2.0) * norm))
    bound = np.float32(weight / mu)
    ax = op.forward(x)
    x_bar, ax_bar = x.copy(), ax.copy()
    p = xp.zeros_like(b)
    q = xp.zeros((2,) + x.shape, xp.float32)
    for it in range(int(iterations)):
        p = (p + step * (ax_bar - b)) / (1 + step)
        if bound > 0:  # project q onto the pointwise balls of radius weight / mu
            q += (step * mu) * slice_gradient(x_bar)
            q /= xp.maximum(xp.sqrt(q[0] ** 2 + q[1] ** 2) / bound, 1.0)[None]
        x_new = _constrain(x - step * (op.back(p) + mu * slice_gradient_adjoint(q)), nonnegative, mask)
        ax_new = op.forward(x_new)
        x_bar = 2 * x_new - x
        ax_bar = 2 * ax_new - ax
        x, ax = x_new, ax_new
        if callback is not None:
            callback(it, x, _residual_norm(ax - b))
    return x


#: each solver's own ``nonnegative`` default, read from its signature (one source of truth for the
#: CLI and job files, which record the value used): SIRT, OS-SART, CGLS unconstrained, TV constrained
NONNEGATIVE_DEFAULT = {f.__name__: inspect.signature(f).parameters["nonnegative"].default
                       for f in (sirt, os_sart, cgls, tv)}
