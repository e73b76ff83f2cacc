"""Run every benchmark suite (``benchmarks/bench_*.py``) and write one JSON per suite.

    python -m benchmarks.run [--quick] [--backend cpu|gpu] [--only tomo,disks] [--out DIR]

Each suite module has ``run(out_dir, quick=False, backend="cpu") -> Path`` and puts tomostrain
and its peers side by side in the same run (ratios inside the JSON). Missing peers are reported
as missing, never as failures.
"""
from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
import time
from pathlib import Path

import benchmarks


def suites() -> list[str]:
    """Names of the suites (``bench_<name>.py``) in this folder."""
    return sorted(m.name[len("bench_"):] for m in pkgutil.iter_modules(benchmarks.__path__) if m.name.startswith("bench_"))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small sizes: a smoke test of every suite")
    p.add_argument("--backend", default="cpu", choices=["cpu", "gpu"])
    p.add_argument("--only", default="", help=f"comma-separated subset of: {', '.join(suites())}")
    p.add_argument("--out", default="benchmarks/results", help="output folder for the JSON files")
    args = p.parse_args(argv)
    chosen = [s for s in args.only.split(",") if s] or suites()
    unknown = set(chosen) - set(suites())
    if unknown:
        print(f"unknown suite(s): {', '.join(sorted(unknown))}; have {', '.join(suites())}", file=sys.stderr)
        return 2
    out = Path(args.out) / args.backend
    for name in chosen:
        t0 = time.perf_counter()
        module = importlib.import_module(f"benchmarks.bench_{name}")
        path = module.run(out, quick=args.quick, backend=args.backend)
        print(f"{name}: {path} ({time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
