"""Command line: ``tomostrain info | demo | tomo | stem | run | bench``.

Errors from bad input print one line (``tomostrain: error: ...``) and exit with code 2.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import __version__
from .errors import TomostrainError


def _region(text: str) -> tuple[int, int, int, int]:
    """'y0:y1,x0:x1' -> (y0, y1, x0, x1)."""
    try:
        ys, xs = text.split(",")
        y0, y1 = (int(v) for v in ys.split(":"))
        x0, x1 = (int(v) for v in xs.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a region 'y0:y1,x0:x1', got {text!r}") from None
    return y0, y1, x0, x1


def _shape(text: str) -> tuple[int, int, int, int]:
    """'sy,sx,ky,kx' -> a 4-tuple of positive ints."""
    try:
        shape = tuple(int(v) for v in text.split(","))
    except ValueError:
        shape = ()
    if len(shape) != 4 or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"expected scan_y,scan_x,ky,kx (4 positive integers), got {text!r}")
    return shape


def _probe(text: str):
    """A region 'y0:y1,x0:x1' or the path of a probe image."""
    return _region(text) if ":" in text and "," in text and not Path(text).exists() else Path(text)


def _offset(text: str):
    """``--offset auto|none|VALUE``."""
    low = text.strip().lower()
    if low in ("auto", "none"):
        return None if low == "none" else "auto"
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected auto, none or a number, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tomostrain", description="Tomography and 4D-STEM strain mapping for in situ TEM.")
    p.add_argument("--version", action="version", version=f"tomostrain {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    sub.add_parser("info", help="version, backend, device and key dependency versions")

    d = sub.add_parser("demo", help="synthetic sodiated-NiO tilt series + 4D-STEM scan, both pipelines, results.h5 + report")
    d.add_argument("-o", "--output", type=Path, default=Path("demo_out"), help="output folder (default demo_out)")
    d.add_argument("--backend", default="auto", choices=["auto", "cpu", "gpu"])

    t = sub.add_parser("tomo", help="reconstruct (and segment, quantify) a tilt series")
    t.add_argument("input", type=Path,
                   help="tilt series: DXchange .h5, MRC/.st/.ali (FEI, SerialEM + .mdoc; + .rawtlt/.tlt), "
                        "DM3/DM4, ETSpy .hspy, Velox .emd, TIFF (+ angles), or a folder of one-file-per-tilt "
                        "DM/MRC images")
    t.add_argument("-o", "--output", type=Path, required=True, help="result file (.h5)")
    t.add_argument("--method", default="fbp", choices=["fbp", "gridrec", "sirt", "cgls", "os_sart", "tv", "dart"])
    t.add_argument("--iterations", type=int, default=None, help="iterations of iterative methods")
    t.add_argument("--center", type=float, default=None, help="rotation-axis column (pixels); default the detector centre")
    t.add_argument("--align", action="store_true",
                   help="align first: tilt axis, drift and centre (written to /tomo/alignment, and for "
                        "IMOD as OUT.xf + OUT.tlt beside the result)")
    t.add_argument("--tilt-axis", type=float, default=None, metavar="DEG",
                   help="prior tilt-axis angle (degrees, DESIGN.md §3); default none given (the file's, if any): "
                        "--align searches every direction and prefers one near the prior")
    t.add_argument("--segment", type=int, default=0, metavar="N",
                   help="segment into N classes including vacuum (multi-Otsu) and quantify; 0 = no segmentation")
    t.add_argument("--angles", type=Path, default=None,
                   help="angle file (degrees, one per line); wins over the file's own angles")
    t.add_argument("--offset", type=_offset, default="auto", metavar="auto|none|VALUE",
                   help="detector offset of electron data: auto = the vacuum level found in the data "
                        "(default), none, or a value in file units subtracted from every image")
    t.add_argument("--xf", type=Path, default=None, metavar="FILE.xf",
                   help="reconstruct with an IMOD/AreTomo/ETSpy .xf alignment (instead of --align)")
    t.add_argument("--voxel-size", type=float, default=None, help="voxel size (nm); default from the file")
    t.add_argument("--backend", default="auto", choices=["auto", "cpu", "gpu"])

    s = sub.add_parser("stem", help="calibrate a 4D-STEM scan, find Bragg disks, map strain and phases")
    s.add_argument("input", type=Path, help="4D-STEM data: .npy, HDF5, py4DSTEM .emd (raw needs --shape/--dtype)")
    s.add_argument("-o", "--output", type=Path, required=True, help="result file (.h5)")
    s.add_argument("--phases", default="NiO,Ni,Na2O", help="candidate phases, comma-separated (default NiO,Ni,Na2O)")
    s.add_argument("--reference", type=_region, default=None, metavar="y0:y1,x0:x1",
                   help="unstrained reference region of the scan (default: the median lattice of the main phase)")
    s.add_argument("--probe", type=_probe, default=None, metavar="y0:y1,x0:x1|FILE",
                   help="vacuum region of the scan or a probe image (default: the positions that scatter least)")
    s.add_argument("--q-pixel-size", type=float, default=None, help="diffraction pixel size (1/Å); default from the file")
    s.add_argument("--energy-kev", type=float, default=None, help="beam energy (keV); default from the file")
    s.add_argument("--convergence-mrad", type=float, default=None, help="probe semi-angle (mrad); default from the file")
    s.add_argument("--shape", type=_shape, default=None, help="raw files: scan_y,scan_x,ky,kx")
    s.add_argument("--dtype", default=None, help="raw files: numpy dtype, e.g. uint16")
    s.add_argument("--backend", default="auto", choices=["auto", "cpu", "gpu"])

    r = sub.add_parser("run", help="run a TOML job file (the batch form of tomo and stem)")
    r.add_argument("job", type=Path)

    sub.add_parser("bench", add_help=False,
                   help="benchmark suites side by side with peers, from a source checkout "
                        "(options of benchmarks.run: --quick, --backend, --only, --out; bench --help)")
    return p


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:
        return _bench(argv[1:])
    args = build_parser().parse_args(argv)
    command = " ".join(["tomostrain", *argv])
    try:
        return _dispatch(args, command)
    except TomostrainError as exc:
        print(f"tomostrain: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tomostrain: interrupted (completed steps are checkpointed; run again to resume)", file=sys.stderr)
        return 130


def _dispatch(args, command: str) -> int:
    from . import pipeline

    if args.command == "info":
        for key, value in pipeline.info().items():
            print(f"{key:>14}: {value}")
        return 0
    if args.command == "demo":
        pipeline.demo(args.output, backend=args.backend, command=command)
        return 0
    if args.command == "tomo":
        pipeline.tomo(
            args.input, args.output, method=args.method, iterations=args.iterations, center=args.center,
            segment=args.segment, angles=args.angles, voxel_size_nm=args.voxel_size, align=args.align,
            tilt_axis_deg=args.tilt_axis, backend=args.backend, command=command,
            offset=args.offset, xf=args.xf,
        )
        return 0
    if args.command == "stem":
        pipeline.stem(
            args.input, args.output, phases=args.phases.split(","), reference=args.reference, probe=args.probe,
            q_pixel_size=args.q_pixel_size, energy_kev=args.energy_kev, convergence_mrad=args.convergence_mrad,
            shape=args.shape, dtype=args.dtype, backend=args.backend, command=command,
        )
        return 0
    if args.command == "run":
        pipeline.run_job(args.job, command=command)
        return 0
    raise AssertionError(args.command)


def _bench(argv: list[str]) -> int:
    """``tomostrain bench ...`` = ``python -m benchmarks.run ...`` in a source checkout."""
    if not (Path.cwd() / "benchmarks" / "run.py").is_file():
        print("tomostrain: error: run 'tomostrain bench' from a source checkout (needs benchmarks/)", file=sys.stderr)
        return 2
    sys.path.insert(0, str(Path.cwd()))
    from benchmarks.run import main as bench_main

    return bench_main(argv)


if __name__ == "__main__":
    sys.exit(main())
