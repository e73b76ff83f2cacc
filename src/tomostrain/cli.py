"""Command line: ``tomostrain info | demo | tomo | stem | xanes | run | bench``.

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


def _scan_shape(text: str) -> tuple[int, int]:
    """'sy,sx' -> a pair of positive ints."""
    try:
        shape = tuple(int(v) for v in text.split(","))
    except ValueError:
        shape = ()
    if len(shape) != 2 or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"expected scan_y,scan_x (2 positive integers), got {text!r}")
    return shape


def _center(text: str):
    """A rotation-axis column (float) or 'auto'."""
    if text == "auto":
        return "auto"
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a column (pixels) or 'auto', got {text!r}") from None


def _probe(text: str):
    """A region 'y0:y1,x0:x1' or the path of a probe image."""
    return _region(text) if ":" in text and "," in text and not Path(text).exists() else Path(text)


def add_cluster_option(parser: argparse.ArgumentParser) -> None:
    """``--cluster``, shared by every command that runs chunked steps (tomo, stem, kinetics, run)."""
    parser.add_argument("--cluster", default=None, metavar="local[:N]|tcp://HOST:PORT|slurm|cuda",
                        help="run the chunks on Dask: a LocalCluster of N workers, an existing scheduler, "
                             "SLURM (dask-jobqueue; options in a job file's [cluster]) or one worker per GPU")


def _offset(text: str):
    """``--offset auto|none|VALUE``."""
    low = text.strip().lower()
    if low in ("auto", "none"):
        return None if low == "none" else "auto"
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected auto, none or a number, got {text!r}") from None


def _references(text: str):
    """'2.9=2,2.2=0' -> [(2.9, 2.0), (2.2, 0.0)]."""
    try:
        pairs = [tuple(float(v) for v in item.split("=")) for item in text.split(",")]
    except ValueError:
        pairs = []
    if len(pairs) != 2 or any(len(p) != 2 for p in pairs):
        raise argparse.ArgumentTypeError(f"expected two references 'VALUE=VALENCE,VALUE=VALENCE', got {text!r}")
    return pairs


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
    t.add_argument("--nonnegative", action=argparse.BooleanOptionalAction, default=None,
                   help="sirt, os_sart, tv: clip the volume at 0 in every iteration, cgls: at the end (--no-nonnegative: "
                        "don't); default the solver's: unconstrained SIRT/OS-SART/CGLS (as ASTRA, TomoPy, "
                        "ETSpy), constrained TV")
    t.add_argument("--center", type=_center, default=None,
                   help="rotation-axis column (pixels), or 'auto' to find it (--center-method); default the detector centre")
    t.add_argument("--align", action="store_true",
                   help="align first: tilt axis, drift and centre (written to /tomo/alignment, and for "
                        "IMOD as OUT.xf + OUT.tlt beside the result)")
    t.add_argument("--tilt-axis", type=float, default=None, metavar="DEG",
                   help="prior tilt-axis angle (degrees, DESIGN.md §3); default none given (the file's, if any): "
                        "--align searches every direction and prefers one near the prior; without --align it "
                        "is applied as the known axis")
    t.add_argument("--segment", type=int, default=0, metavar="N",
                   help="segment into N classes including vacuum (particle envelope first, then the classes "
                        "inside; N = 4: vacuum, shell, core, Ni particles) and quantify; 0 = no segmentation")
    t.add_argument("--classes", type=int, default=None, metavar="N",
                   help="--method dart: number of phases including vacuum whose grey levels are estimated (default 3)")
    t.add_argument("--angles", type=Path, default=None,
                   help="angle file (degrees, one per line); wins over the file's own angles")
    t.add_argument("--offset", type=_offset, default="auto", metavar="auto|none|VALUE",
                   help="detector offset of electron data: auto = the vacuum level found in the data "
                        "(default), none, or a value in file units subtracted from every image")
    t.add_argument("--xf", type=Path, default=None, metavar="FILE.xf",
                   help="reconstruct with an IMOD/AreTomo/ETSpy .xf alignment (instead of --align)")
    t.add_argument("--voxel-size", type=float, default=None, help="voxel size (nm); default from the file")
    t.add_argument("--center-method", default="vo", choices=["vo", "phase"],
                   help="--center auto: Vo's sinogram metric (default) or phase correlation of the 0/180 degree views")
    t.add_argument("--rings", default=None, choices=["sort", "sort_offset", "fit", "wavelet", "normalize", "all"],
                   help="X-ray: ring (stripe) removal on the transmission sinograms")
    t.add_argument("--zingers", type=float, nargs="?", const=0.5, default=None, metavar="THRESHOLD",
                   help="X-ray: remove zingers brighter than (1 + THRESHOLD) x their neighbours (default 0.5)")
    t.add_argument("--beam-background", type=int, default=None, metavar="COLS",
                   help="X-ray: normalise each projection by its air columns (COLS on each side)")
    t.add_argument("--paganin", type=float, default=None, metavar="DELTA_BETA",
                   help="X-ray: Paganin phase retrieval with this delta/beta (needs --energy-kev, --distance-m)")
    t.add_argument("--energy-kev", type=float, default=None, help="X-ray energy (keV) for --paganin")
    t.add_argument("--distance-m", type=float, default=None, help="sample-detector distance (m) for --paganin")
    t.add_argument("--backend", default="auto", choices=["auto", "cpu", "gpu"])
    add_cluster_option(t)

    x = sub.add_parser("xanes", help="TXM-XANES tomography (or 2-D mapping): per-voxel fractions of reference spectra")
    x.add_argument("input", type=Path, nargs="+", help="DXchange .h5 with /exchange/energy (or one file per energy)")
    x.add_argument("-o", "--output", type=Path, required=True, help="result file (.h5)")
    x.add_argument("--references", required=True, help="reference spectra, comma-separated CSV files 'energy_eV,mu'")
    x.add_argument("--center", type=_center, default="auto", help="rotation-axis column or 'auto' (default)")
    x.add_argument("--center-method", default="vo", choices=["vo", "phase"])
    x.add_argument("--rings", default=None, choices=["sort", "sort_offset", "fit", "wavelet", "normalize", "all"])
    x.add_argument("--zingers", type=float, default=0.5, metavar="THRESHOLD", help="zinger threshold (default 0.5)")
    x.add_argument("--beam-background", type=int, default=None, metavar="COLS",
                   help="air columns on each side for beam normalisation (default n_cols // 16)")
    x.add_argument("--method", default="cgls", choices=["fbp", "gridrec", "sirt", "cgls", "os_sart", "tv"],
                   help="reconstruction of --fit projection|volume (the joint fit uses CGLS for the density)")
    x.add_argument("--iterations", type=int, default=12,
                   help="iterations of iterative methods, and of the joint fit's density CGLS (default 12: "
                        "early stopping regularises the noise)")
    x.add_argument("--fit", default="joint", choices=["joint", "projection", "volume"],
                   help="joint: fractions fitted to every energy's projections at once, photon-weighted, with a "
                        "TV prior (default); projection: fit per projection pixel then reconstruct the amounts; "
                        "volume: reconstruct every energy, fit per voxel")
    x.add_argument("--backend", default="auto", choices=["auto", "cpu", "gpu"])

    s = sub.add_parser("stem", help="calibrate a 4D-STEM scan, find Bragg disks, map strain and phases")
    s.add_argument("input", type=Path,
                   help="4D-STEM data: .npy, HDF5, py4DSTEM .emd, Merlin .mib (+ .hdr), blockfile .blo, DM3/DM4 4D, "
                        "Velox .emd, fpd HDF5, Dectris *_master.h5, EMPAD .xml (raw needs --shape/--dtype)")
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
    s.add_argument("--scan-shape", type=_scan_shape, default=None, metavar="SY,SX",
                   help="scan rows,columns where the file does not record them (.mib without .hdr, Dectris, EMPAD)")
    s.add_argument("--backend", default="auto", choices=["auto", "cpu", "gpu"])
    add_cluster_option(s)

    k = sub.add_parser("kinetics", help="reaction-front depth below the first frame's outline in an in situ movie, "
                                        "and the fit x = k (t - t0)^n")
    k.add_argument("input", type=Path, help="movie: HDF5 /data (frames, y, x) [+ /time_s], TIFF or DM3/DM4 stack")
    k.add_argument("-o", "--output", type=Path, required=True, help="result file (.h5)")
    k.add_argument("--pixel-size", type=float, default=None, metavar="NM", help="pixel size (nm); default from the file")
    k.add_argument("--frame-interval", type=float, default=None, metavar="S",
                   help="seconds between frames; default /time_s or the file's frame_interval_s")
    k.add_argument("--vacuum", default="auto", choices=["auto", "bright", "dark"],
                   help="vacuum is bright (bright-field TEM) or dark (HAADF/DF); auto: decided from the movie")
    k.add_argument("--backend", default="auto", choices=["auto", "cpu", "gpu"])
    add_cluster_option(k)

    e = sub.add_parser("eels", help="EELS white-line maps of a spectrum image: L3/L2, L3 onset, valence, t/lambda")
    e.add_argument("input", type=Path, help="spectrum image (scan_y, scan_x, energy): HDF5, DM3/DM4 or EMD")
    e.add_argument("-o", "--output", type=Path, required=True, help="result file (.h5)")
    e.add_argument("--edge", default="Ni-L23",
                   help="Mn-L23, Fe-L23, Co-L23, Ni-L23, Cu-L23, O-K, or a user edge 'L3_eV:L2_eV' (default Ni-L23)")
    e.add_argument("--references", type=_references, default=None, metavar="V1=VAL1,V2=VAL2",
                   help="two references for the valence map, e.g. '2.9=2,2.2=0' (L3/L2 ratio = valence)")
    e.add_argument("--valence-from", default="ratio", choices=["ratio", "onset"],
                   help="the references give L3/L2 ratios (default) or L3 onsets (eV)")
    e.add_argument("--low-loss", type=Path, default=None, help="low-loss spectrum image for t/lambda (log-ratio)")
    e.add_argument("--no-denoise", action="store_true", help="skip the PCA denoising of the spectra")
    e.add_argument("--deconvolve", action="store_true",
                   help="remove plural scattering by Fourier-ratio deconvolution with the low loss (thick areas)")
    e.add_argument("--backend", default="auto", choices=["auto", "cpu", "gpu"])

    r = sub.add_parser("run", help="run a TOML job file (the batch form of tomo and stem)")
    r.add_argument("job", type=Path)
    add_cluster_option(r)

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
    except KeyboardInterrupt as exc:
        from .safety import Interrupted, last_output

        name = "SIGTERM" if isinstance(exc, Interrupted) else "SIGINT"
        out = last_output()
        where = f"{out}.partial" if out is not None else "OUT.h5.partial"
        print(f"tomostrain: stopped by {name}; completed steps are checkpointed in {where}, "
              "run the same command again to resume", file=sys.stderr)
        return 143 if isinstance(exc, Interrupted) else 130


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
            tilt_axis_deg=args.tilt_axis, backend=args.backend, command=command, classes=args.classes,
            offset=args.offset, xf=args.xf, cluster=args.cluster,
            center_method=args.center_method, rings=args.rings, zingers=args.zingers,
            beam_background=args.beam_background, paganin=_paganin_args(args), nonnegative=args.nonnegative,
        )
        return 0
    if args.command == "xanes":
        pipeline.xanes(
            args.input if len(args.input) > 1 else args.input[0], args.output, references=args.references,
            center=args.center, rings=args.rings, zingers=args.zingers, beam_background=args.beam_background,
            method=args.method, iterations=args.iterations, fit=args.fit, center_method=args.center_method,
            backend=args.backend, command=command,
        )
        return 0
    if args.command == "stem":
        pipeline.stem(
            args.input, args.output, phases=args.phases.split(","), reference=args.reference, probe=args.probe,
            q_pixel_size=args.q_pixel_size, energy_kev=args.energy_kev, convergence_mrad=args.convergence_mrad,
            shape=args.shape, dtype=args.dtype, backend=args.backend, command=command, scan_shape=args.scan_shape,
            cluster=args.cluster,
        )
        return 0
    if args.command == "kinetics":
        pipeline.kinetics(args.input, args.output, pixel_size_nm=args.pixel_size, frame_interval_s=args.frame_interval,
                          vacuum=args.vacuum, backend=args.backend, command=command, cluster=args.cluster)
        return 0
    if args.command == "eels":
        pipeline.eels(args.input, args.output, edge=args.edge, references=args.references,
                      valence_from=args.valence_from, low_loss=args.low_loss,
                      denoise=None if args.no_denoise else "pca", deconvolve=args.deconvolve, backend=args.backend,
                      command=command)
        return 0
    if args.command == "run":
        pipeline.run_job(args.job, command=command, cluster=args.cluster)
        return 0
    raise AssertionError(args.command)


def _paganin_args(args):
    if args.paganin is None:
        return None
    from .errors import InputError

    if args.energy_kev is None or args.distance_m is None:
        raise InputError("--paganin needs --energy-kev and --distance-m")
    return {"delta_beta": args.paganin, "energy_kev": args.energy_kev, "distance_m": args.distance_m}


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
