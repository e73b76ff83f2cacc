"""Battery numbers from a phase-label volume: phase fractions, shell thickness, reaction-depth
profile and Ni particle statistics.

Labels follow DESIGN.md §3 (uint8, 0 vacuum, classes by increasing density); the default label
numbers are those of ``synthetic.sodiated_particle``: 1 reacted shell, 2 NiO core, 3 Ni particles.
Volumes are indexed ``[y, z, x]``; lengths come out in nm through ``voxel_size_nm``. The heavy
steps (distance transforms, histograms) run on the labels' device; the result is a dict of Python
numbers and small host NumPy arrays.
"""
from __future__ import annotations

import numpy as np

from ..errors import InputError
from ..gpu_core.backend import to_host, xp_of
from ..gpu_core.filters import ndimage_for
from ..gpu_core.segment import split_particles


def quantify(
    labels,
    voxel_size_nm: float = 1.0,
    *,
    shell_label: int = 1,
    core_label: int = 2,
    particle_label: int = 3,
    vacuum_label: int = 0,
    min_distance: int = 2,
    particle_labels=None,
) -> dict:
    """Phase fractions, shell thickness, depth profile and particle table of a label volume.

    Definitions (lengths in voxels before scaling by ``voxel_size_nm``):

    - ``fractions``: voxels of each phase over all non-vacuum voxels (the whole particle, Ni
      included); ``conversion`` = shell / (shell + core), the reacted share of the NiO body.
    - Body = shell + core (Ni particles excluded: they sit on the surface, they are not depth).
      Outer surface = body voxels with a face neighbour outside the body inside the array.
    - ``shell_thickness_nm``: per outer-surface voxel, the distance from its centre to the
      nearest core voxel centre (= number of shell voxel layers along the inward normal); a core
      voxel on the surface counts 0. ``histogram`` has 1-voxel bins. All NaN without a core
      (fully reacted) or without a body.
    - ``depth_profile``: body voxels binned by depth below the surface, ``depth = edt(body) - 0.5``
      voxels (the surface lies half a voxel outside the outermost voxel centres; voxels past the
      array edge do not count as outside); bin k holds depths in [k, k+1) and reports its centre
      ``depth_nm = (k + 0.5) * voxel_size_nm``, ``n_voxels`` and ``reacted_fraction`` =
      shell / (shell + core) in the bin. ``reaction_depth_nm``: the depth where the reacted
      fraction first falls to 0.5 (linear between bin centres; NaN if it never does).
    - ``particles``: the particle-label mask split by :func:`split_particles` (watershed,
      ``min_distance`` voxels); per particle ``volume_nm3``, volume-equivalent ``diameter_nm``
      and ``centroid_nm`` ``(y, z, x)`` from the array origin, sorted by volume (largest first).

    Args:
        labels: 2D or 3D integer label array (NumPy or CuPy).
        voxel_size_nm: edge length of a voxel, nm.
        shell_label, core_label, particle_label, vacuum_label: label numbers of the phases.
        min_distance: smallest distance between particle centres for the watershed split, voxels.
        particle_labels: optional int instance labels of the Ni particles (e.g. from
            ``gpu_core.phases.segment_phases``); used instead of the watershed split.

    Also returned (see ``analysis.surface`` and docs/design.md): ``shell_thickness_nm.cv``
    (std / mean), ``surface_thickness`` (per outer-surface voxel ``y, z, x`` and
    ``thickness_nm``), ``reaction_mode`` (finger index and the call conformal/finger),
    ``phase_depth_profile`` (fraction of every phase by depth below the particle surface),
    ``surface_area_nm2`` (marching cubes) and, in ``particles``, ``depth_nm`` (centroid depth
    below the body surface, negative outside) and ``attached`` (touches the body).

    Returns:
        dict with ``voxel_size_nm``, ``n_voxels``, ``volume_nm3``, ``fractions``, ``conversion``,
        ``shell_thickness_nm``, ``depth_profile``, ``reaction_depth_nm``, ``particles``.
    """
    xp = xp_of(labels)
    lab = xp.asarray(labels)
    if lab.ndim not in (2, 3) or lab.size == 0 or lab.dtype.kind not in "iu":
        raise InputError(f"labels must be a non-empty 2D/3D integer array, got shape {lab.shape}, dtype {lab.dtype}")
    vs = float(voxel_size_nm)
    if not (np.isfinite(vs) and vs > 0):
        raise InputError(f"voxel_size_nm must be a positive number of nm, got {voxel_size_nm!r}")
    names = {"vacuum": vacuum_label, "shell": shell_label, "core": core_label, "particles": particle_label}
    if len(set(names.values())) != 4:
        raise InputError(f"the four phase labels must differ, got {names}")
    ndi = ndimage_for(xp)
    vol_nm3 = vs**lab.ndim

    shell, core = lab == shell_label, lab == core_label
    n = {k: int((lab == v).sum()) for k, v in names.items() if k != "vacuum"}
    n["total"] = int(lab.size - int((lab == vacuum_label).sum()))
    if n["total"] == 0:
        raise InputError("labels contain only vacuum: nothing to quantify")
    fractions = {k: n[k] / n["total"] for k in ("shell", "core", "particles")}
    body_n = n["shell"] + n["core"]
    conversion = n["shell"] / body_n if body_n else float("nan")

    body = shell | core
    if body_n == lab.size:
        raise InputError("labels have no voxel outside the shell and core: the particle surface is undefined")
    thickness, surf_idx = _shell_thickness(body, shell, core, n, ndi, xp)
    profile = _depth_profile(body, shell, body_n, ndi, xp)
    if profile["depth"].size:
        reaction_depth = _crossing(profile["depth"], profile["reacted_fraction"], 0.5)
    else:
        reaction_depth = float("nan")

    from .surface import particle_placement, phase_depth_profile, reaction_mode, surface_areas

    table = _particle_table(lab == particle_label, vs, min_distance, xp, particle_labels)
    plabels, order = table.pop("_labels", None), table.pop("_order", None)
    table.update(particle_placement(body, plabels, order, table["count"], vs))
    scaled = _scale_thickness(thickness, vs)
    surface_thickness = {
        "y": surf_idx[:, 0] if surf_idx is not None else np.zeros(0, np.int64),
        "z": surf_idx[:, 1] if surf_idx is not None else np.zeros(0, np.int64),
        "x": surf_idx[:, 2] if surf_idx is not None and lab.ndim == 3 else np.zeros(0, np.int64),
        "thickness_nm": thickness * vs if thickness is not None else np.zeros(0),
    } if lab.ndim == 3 else {}
    return {
        "voxel_size_nm": vs,
        "n_voxels": n,
        "volume_nm3": {k: v * vol_nm3 for k, v in n.items()},
        "fractions": fractions,
        "conversion": conversion,
        "shell_thickness_nm": scaled,
        "surface_thickness": surface_thickness,
        "reaction_mode": reaction_mode(body, shell, core, vs),
        "phase_depth_profile": phase_depth_profile(lab, vs, shell_label, core_label, particle_label, vacuum_label),
        "surface_area_nm2": surface_areas(body, core, lab != vacuum_label, vs),
        "depth_profile": {
            "depth_nm": profile["depth"] * vs,
            "n_voxels": profile["n_voxels"],
            "reacted_fraction": profile["reacted_fraction"],
        },
        "reaction_depth_nm": reaction_depth * vs,
        "particles": table,
    }


def _shell_thickness(body, shell, core, n, ndi, xp):
    """Thickness (voxels) at every outer-surface voxel of the body; None when undefined."""
    if n["core"] == 0:
        return None, None
    outside = ~body
    structure = ndi.generate_binary_structure(body.ndim, 1)
    surface = body & ndi.binary_dilation(outside, structure=structure, border_value=0)
    to_core = ndi.distance_transform_edt(~core)  # 0 on core voxels
    values = to_host(to_core[surface]).astype(np.float64)
    if not values.size:
        return None, None
    return values, to_host(xp.argwhere(surface)).astype(np.int64)


def _scale_thickness(values, vs):
    if values is None:
        nan = float("nan")
        return dict(mean=nan, std=nan, cv=nan, min=nan, max=nan, median=nan, n_surface_voxels=0,
                    histogram={"edges_nm": np.zeros(0), "counts": np.zeros(0, np.int64)})
    edges = np.arange(0.0, np.floor(values.max()) + 2.0)
    counts, _ = np.histogram(values, bins=edges)
    return dict(
        mean=float(values.mean()) * vs,
        std=float(values.std()) * vs,
        cv=float(values.std() / values.mean()) if values.mean() > 0 else float("nan"),
        min=float(values.min()) * vs,
        max=float(values.max()) * vs,
        median=float(np.median(values)) * vs,
        n_surface_voxels=int(values.size),
        histogram={"edges_nm": edges * vs, "counts": counts},
    )


def _depth_profile(body, shell, body_n, ndi, xp):
    """Per 1-voxel depth bin: centre depth (voxels), voxel count, reacted fraction."""
    if body_n == 0:
        return {"depth": np.zeros(0), "n_voxels": np.zeros(0, np.int64), "reacted_fraction": np.zeros(0)}
    depth = ndi.distance_transform_edt(body) - 0.5
    bins = xp.floor(depth[body]).astype(xp.int64)
    nb = int(bins.max()) + 1
    total = to_host(xp.bincount(bins, minlength=nb))
    reacted = to_host(xp.bincount(bins, weights=shell[body].astype(xp.float64), minlength=nb))
    keep = total > 0
    return {
        "depth": (np.arange(nb) + 0.5)[keep],
        "n_voxels": total[keep].astype(np.int64),
        "reacted_fraction": reacted[keep] / total[keep],
    }


def _crossing(x, y, level):
    """First x where y falls to ``level`` (linear between samples); NaN if it never does."""
    below = np.flatnonzero(y <= level)
    if below.size == 0:
        return float("nan")
    i = below[0]
    if i == 0:
        return float(x[0])
    return float(x[i - 1] + (y[i - 1] - level) / (y[i - 1] - y[i]) * (x[i] - x[i - 1]))


def _particle_table(mask, vs, min_distance, xp, particle_labels=None):
    """Split the particle mask and measure each particle (host arrays)."""
    empty = {"count": 0, "mean_diameter_nm": float("nan"), "std_diameter_nm": float("nan"),
             "volume_nm3": np.zeros(0), "diameter_nm": np.zeros(0), "centroid_nm": np.zeros((0, mask.ndim))}
    if not bool(mask.any()):
        return {**empty, "_labels": None, "_order": None}
    if particle_labels is not None:
        plabels = xp.where(mask, xp.asarray(particle_labels), 0)
        ids, plabels = xp.unique(plabels, return_inverse=True)
        plabels = plabels.reshape(mask.shape).astype(xp.int32)
        count = int(ids.size) - int(bool((ids == 0).any()))
        if not bool((ids == 0).any()):
            plabels += 1
    else:
        plabels, count = split_particles(mask, min_distance=min_distance)
    flat = plabels.ravel()
    voxels = to_host(xp.bincount(flat, minlength=count + 1))[1:].astype(np.float64)
    coords = xp.indices(mask.shape, dtype=xp.float64).reshape(mask.ndim, -1)
    centroids = np.stack(
        [to_host(xp.bincount(flat, weights=c, minlength=count + 1))[1:] for c in coords], axis=1
    ) / voxels[:, None]
    order = np.argsort(-voxels, kind="stable")
    voxels, centroids = voxels[order], centroids[order]
    volume = voxels * vs**mask.ndim
    if mask.ndim == 3:
        diameter = (6.0 * volume / np.pi) ** (1.0 / 3.0)
    else:  # area-equivalent circle
        diameter = np.sqrt(4.0 * volume / np.pi)
    return {
        "count": int(count),
        "mean_diameter_nm": float(diameter.mean()),
        "std_diameter_nm": float(diameter.std()),
        "volume_nm3": volume,
        "diameter_nm": diameter,
        "centroid_nm": centroids * vs,
        "_labels": plabels,
        "_order": order,
    }
