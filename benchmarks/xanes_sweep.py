"""XANES fraction accuracy per variant, with a breakdown (docs/design.md, XANES notes).

``python -m benchmarks.xanes_sweep old|new [RUNS] [INDICES]``: RUNS is ``;``-separated keyword
sets for ``xanes_tomography`` (empty: the default), e.g. ``';fit="projection",iterations=12'``.
"old" are the 10 variants of ``bench_xray.XANES_VARIANTS`` (the ones the joint fit was developed
on), "new" 8 made afterwards (``UNSEEN``). Per run it prints the centre error, the Ni-fraction
RMSE in the particle, in its interior (2 voxels in) and its edge band, the mean error, the metal
particles' mean fraction, the RMSE in a 2-voxel ring round them, and CPU seconds / voxels per s.
"""
import sys
import time

import numpy as np
from scipy import ndimage

from benchmarks.bench_xray import XANES_VARIANTS
from tomostrain.reconstruction.preprocess import XrayOptions
from tomostrain.spectral.xanes import xanes_tomography
from tomostrain.synthetic.txm import txm_xanes_series

E21 = np.linspace(8300, 8400, 21)
E11 = np.array([8300, 8325, 8331, 8335, 8339, 8343, 8347, 8351, 8360, 8380, 8400.0])
UNSEEN = [dict(n=80, photons=1.5e4, seed=31, center_offset=1.9, metal_radius=(2.5, 3.5), n_metal=4),
          dict(n=112, photons=4e4, seed=32, center_offset=-2.8, metal_radius=(3.0, 5.0), n_metal=2, energies_eV=E21),
          dict(n=64, photons=7e3, seed=33, center_offset=3.6),
          dict(n=96, photons=1e5, seed=34, center_offset=-0.7, metal_radius=(2.0, 3.0), n_metal=5, energies_eV=E11),
          dict(n=128, photons=2e4, seed=35, center_offset=2.2, metal_radius=(3.0, 4.5)),
          dict(n=72, photons=2.5e4, seed=36, center_offset=-4.1, metal_radius=(3.5, 5.0), n_metal=2, shell=6.0),
          dict(n=64, photons=3e4, seed=37, center_offset=1.3, angles_deg=np.linspace(0, 180, 90, endpoint=False)),
          dict(n=96, photons=5e3, seed=38, center_offset=-1.7, angles_deg=np.arange(0, 180.1, 3.0))]


def stats(f, s):
    m = s.particle
    err = f - s.fraction_ni
    inner = ndimage.binary_erosion(m, structure=np.ones((1, 3, 3)), iterations=2)
    edge = m & ~inner
    metal = s.metal_particles
    ring = ndimage.binary_dilation(metal, structure=np.ones((1, 3, 3)), iterations=2) & ~metal & m

    def r(q):
        return float(np.sqrt(np.mean(err[q] ** 2))) if q.any() else float("nan")

    return dict(rmse=r(m), inner=r(inner), edge=r(edge), bias=float(err[m].mean()), metal=float(f[metal].mean()),
                metal_ring=r(ring))


def main(which="old", runs=("",), indices=None):
    cases = ([dict(n=v[0], photons=v[1], seed=v[2], center_offset=v[3], metal_radius=v[4]) for v in XANES_VARIANTS]
             if which == "old" else UNSEEN)
    for i in range(len(cases)) if indices is None else indices:
        kw = dict(cases[i])
        n = kw.pop("n")
        s = txm_xanes_series(n, 4, **kw)
        refs = {k: (s.energies_eV, v) for k, v in s.references.items()}
        for run in runs:
            rk = eval("dict(" + run + ")")  # noqa: S307 (a benchmark's command line)
            opt = XrayOptions(zingers=0.5, beam_background=4, center="auto")
            t0 = time.process_time()
            res, c, _ = xanes_tomography(s.data, s.angles_deg, s.energies_eV, refs, s.flats, s.darks, opt, **rk)
            cpu = time.process_time() - t0
            st = stats(res.fractions["Ni"], s)
            print(which, i, n, kw.get("photons"), kw.get("seed"), kw.get("center_offset"), "|", run or "default",
                  "| centre error %.3f" % (c - s.center), " ".join(f"{k}={v:.3f}" for k, v in st.items()),
                  "cpu=%.1f voxels/s=%.0f" % (cpu, res.density.size / cpu), flush=True)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "old", sys.argv[2].split(";") if len(sys.argv) > 2 else ("",),
         [int(a) for a in sys.argv[3].split(",")] if len(sys.argv) > 3 else None)
