"""Make docs/img/needle_orthoslices.png: the aligned SIRT-50 reconstruction of ETSpy's real
STEM-HAADF needle series (HAADF.mrc), three orthoslices through the volume centre.

    python docs/make_needle_figure.py [RESULT.h5]

With RESULT.h5 (the output of ``tomostrain tomo HAADF.mrc -o RESULT.h5 --align --method sirt
--iterations 50``) the figure is drawn from it; without, that job is run first (on the CPU,
into a temporary folder). The series is read from ../shared/data/etspy/HAADF.mrc.
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "etspy" / "HAADF.mrc"
OUT = ROOT / "docs" / "img" / "needle_orthoslices.png"


def main(argv):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tomostrain import io, pipeline
    from tomostrain.reconstruction import Alignment, reprojection_nrmse

    with tempfile.TemporaryDirectory() as tmp:
        result = Path(argv[0]) if argv else pipeline.tomo(DATA, Path(tmp) / "needle.h5", method="sirt",
                                                          iterations=50, align=True, backend="cpu")
        res = io.read_results(result)
    tomo = res["tomo"]
    found = tomo["alignment"]
    alignment = Alignment(np.asarray(found["shifts"]), float(found["@attrs"]["center"]),
                          float(found["@attrs"]["tilt_axis_deg"]))
    volume = np.asarray(tomo["volume"])
    nrmse = reprojection_nrmse(io.read_tilt_series(DATA), alignment, volume)
    ny, nz, nx = volume.shape
    px = float(tomo["@attrs"].get("voxel_size_nm", 1.0))
    lo, hi = np.percentile(volume, [1, 99.8])
    views = [(volume[ny // 2], "slice across the axis (z, x)", (nx * px, nz * px)),
             (volume[:, nz // 2, :], "along the axis (y, x), beam direction", (nx * px, ny * px)),
             (volume[:, :, nx // 2], "along the axis (y, z)", (nz * px, ny * px))]
    fig, axes = plt.subplots(1, 3, figsize=(11, 4.0))
    for ax, (img, title, (w, h)) in zip(axes, views):
        ax.imshow(img, cmap="gray", vmin=lo, vmax=hi, extent=(0, w, h, 0))
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("nm")
    fig.suptitle(f"HAADF.mrc (ETSpy): aligned with no tilt-axis hint (axis {alignment.tilt_axis_deg:.2f}°), "
                 f"SIRT-50, reprojection NRMSE {nrmse:.4f}", fontsize=10)
    fig.tight_layout()
    OUT.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(OUT, dpi=110)
    print(OUT, f"axis {alignment.tilt_axis_deg:.3f} deg, NRMSE {nrmse:.4f}")


if __name__ == "__main__":
    main(sys.argv[1:])
