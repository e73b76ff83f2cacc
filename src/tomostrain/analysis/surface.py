"""Surface quantities of a phase-label volume: the reaction-mode figure of merit, phase fractions
by depth below the particle surface, marching-cubes surface areas and where each Ni particle
sits (depth below the surface, attached or not).

Labels follow DESIGN.md §3; lengths are voxels times ``voxel_size_nm``. The distance transforms
and bincounts run on the labels' device; marching cubes runs on the host (scikit-image).
"""
from __future__ import annotations

import numpy as np

from ..gpu_core.backend import to_host, xp_of
from ..gpu_core.filters import ndimage_for

FRONT_CV_LIMIT = 0.3  # front-depth coefficient of variation above which the shell is called finger-like


def reaction_mode(body, shell, core, voxel_size_nm) -> dict:
    """Conformal shell or finger-like penetration, from the depth of the reaction front.

    The front is the shell voxels with a face neighbour in the core; each has a depth below the
    body surface (``edt(body) - 0.5`` voxels). ``front_cv`` = std / mean of the front depth: a
    conformal shell whose thickness varies smoothly by +-v gives about v/2 (0.05-0.25); fingers
    reaching k times deeper than the skin between them give a broad front (>= 0.35). ``mode`` is
    ``"finger"`` when ``front_cv > FRONT_CV_LIMIT`` (0.3), else ``"conformal"``; ``"undefined"``
    without a front. Also ``front_depth_nm`` (mean) and ``front_depth_p95_nm``.
    """
    xp = xp_of(body)
    ndi = ndimage_for(xp)
    nan = float("nan")
    front = shell & ndi.binary_dilation(core, structure=ndi.generate_binary_structure(body.ndim, 1))
    if not bool(front.any()) or bool(body.all()):
        return {"front_cv": nan, "front_depth_nm": nan, "front_depth_p95_nm": nan, "mode": "undefined"}
    depth = to_host((ndi.distance_transform_edt(body) - 0.5)[front]).astype(np.float64)
    mean = float(depth.mean())
    cv = float(depth.std() / mean) if mean > 0 else nan
    return {"front_cv": cv, "front_depth_nm": mean * voxel_size_nm,
            "front_depth_p95_nm": float(np.percentile(depth, 95)) * voxel_size_nm,
            "mode": "finger" if cv > FRONT_CV_LIMIT else "conformal"}


def phase_depth_profile(labels, voxel_size_nm, shell_label=1, core_label=2, particle_label=3, vacuum_label=0):
    """Fraction of every phase by depth below the particle surface (all non-vacuum voxels).

    Depth = ``edt(solid) - 0.5`` voxels (the surface lies half a voxel outside the outermost voxel
    centres); bin k holds depths in [k, k+1) voxels and reports ``depth_nm = (k + 0.5) *
    voxel_size_nm``, ``n_voxels`` and ``shell``, ``core``, ``particles`` fractions (they sum to 1).
    """
    xp = xp_of(labels)
    ndi = ndimage_for(xp)
    solid = labels != vacuum_label
    empty = {"depth_nm": np.zeros(0), "n_voxels": np.zeros(0, np.int64), "shell": np.zeros(0),
             "core": np.zeros(0), "particles": np.zeros(0)}
    if not bool(solid.any()) or bool(solid.all()):
        return empty
    depth = ndi.distance_transform_edt(solid) - 0.5
    bins = xp.floor(depth[solid]).astype(xp.int64)
    nb = int(bins.max()) + 1
    total = to_host(xp.bincount(bins, minlength=nb)).astype(np.float64)
    keep = total > 0
    out = {"depth_nm": ((np.arange(nb) + 0.5) * voxel_size_nm)[keep], "n_voxels": total[keep].astype(np.int64)}
    vals = labels[solid]
    for name, lab in (("shell", shell_label), ("core", core_label), ("particles", particle_label)):
        count = to_host(xp.bincount(bins, weights=(vals == lab).astype(xp.float64), minlength=nb))
        out[name] = count[keep] / total[keep]
    return out


def _area(mask, vs) -> float:
    from skimage.measure import marching_cubes, mesh_surface_area

    host = np.pad(to_host(mask).astype(np.float32), 1)
    if host.ndim != 3 or not host.any() or host.all():
        return float("nan")
    verts, faces, _, _ = marching_cubes(host, 0.5, spacing=(vs,) * 3)
    return float(mesh_surface_area(verts, faces))


def surface_areas(body, core, solid, voxel_size_nm) -> dict:
    """Marching-cubes areas (nm^2, iso-level 0.5 of each mask, array edges closed): ``particle``
    (all solid voxels, Ni included), ``body`` (shell + core) and ``core`` (the shell/core
    interface plus any exposed core). NaN for 2D labels."""
    if body.ndim != 3:
        nan = float("nan")
        return {"particle": nan, "body": nan, "core": nan}
    return {"particle": _area(solid, voxel_size_nm), "body": _area(body, voxel_size_nm),
            "core": _area(core, voxel_size_nm)}


def particle_placement(body, plabels, order, count, voxel_size_nm) -> dict:
    """Per Ni particle (in the particle table's order): ``depth_nm`` of its centroid below the
    body surface (edt inside the body - 0.5 voxels; outside, minus the distance to the body + 0.5;
    read at the nearest voxel) and ``attached`` (a voxel of it has a face neighbour in the body)."""
    if plabels is None or count == 0:
        return {"depth_nm": np.zeros(0), "attached": np.zeros(0, bool)}
    xp = xp_of(body)
    ndi = ndimage_for(xp)
    inside = ndi.distance_transform_edt(body) - 0.5
    outside = ndi.distance_transform_edt(~body) - 0.5
    signed = xp.where(body, inside, -outside)
    plabels = xp.asarray(plabels)
    idx = xp.arange(1, count + 1)
    coords = [ndi.mean(xp.indices(body.shape)[a].astype(xp.float64), plabels, idx) for a in range(body.ndim)]
    cen = np.rint(np.stack([to_host(xp.asarray(c)) for c in coords], 1)).astype(int)
    cen = np.clip(cen, 0, np.array(body.shape) - 1)
    depth = to_host(signed[tuple(xp.asarray(cen.T))]).astype(np.float64)
    touch = ndi.binary_dilation(body, structure=ndi.generate_binary_structure(body.ndim, 1))
    attached = to_host(xp.bincount(plabels[touch & (plabels > 0)].ravel(), minlength=count + 1))[1:] > 0
    return {"depth_nm": depth[order] * voxel_size_nm, "attached": attached[order]}
