"""Command line: ``python -m workflow_lib results`` lists what a run produced."""

from __future__ import annotations

import argparse
import os
import sys

import rasterio


def describe(path: str) -> str:
    with rasterio.open(path) as src:
        names = ", ".join(d or "?" for d in src.descriptions)
        res = src.res
        return (f"{path}  {src.width}x{src.height} px, {src.count} band(s) [{names}], {src.dtypes[0]}, "
                f"{res[0]:g} x {res[1]:g} {src.crs.to_string()}, {os.path.getsize(path) / 1e6:.1f} MB")


def results(results_dir: str) -> int:
    mosaics_dir = os.path.join(results_dir, "mosaics")
    mosaics = sorted(f for f in os.listdir(mosaics_dir) if f.endswith(".tif")) if os.path.isdir(mosaics_dir) else []
    stack = os.path.join(results_dir, "stack.tif")
    if not mosaics and not os.path.exists(stack):
        print(f"no results under {results_dir}/ yet: run snakemake first", file=sys.stderr)
        return 1
    print("Mosaics:")
    for name in mosaics:
        print("  " + describe(os.path.join(mosaics_dir, name)))
    if os.path.exists(stack):
        print("Stack:")
        print("  " + describe(stack))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workflow_lib")
    sub = parser.add_subparsers(dest="command", required=True)
    show = sub.add_parser("results", help="list the mosaics and the stack of a run")
    show.add_argument("results_dir", nargs="?", default="results")
    args = parser.parse_args(argv)
    if args.command == "results":
        return results(args.results_dir)
    return 2


if __name__ == "__main__":
    sys.exit(main())
