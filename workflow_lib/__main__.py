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


def status(url: str | None, as_json: bool, watch: float | None) -> int:
    import time

    import yaml

    from workflow_lib.status import StatusStore, resolve_url
    from workflow_lib.views.status import build_report, render, to_json

    config_url = None
    if os.path.exists("config/config.yaml"):
        with open("config/config.yaml") as f:
            config_url = ((yaml.safe_load(f) or {}).get("database") or {}).get("url")
    store = StatusStore(url or resolve_url(config_url))
    while True:
        store.replay()
        report = build_report(store)
        text = to_json(report) if as_json else render(report)
        if watch:
            print("\033[2J\033[H" + text, flush=True)  # clear the screen, then redraw
            time.sleep(watch)
            continue
        print(text)
        return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workflow_lib")
    sub = parser.add_subparsers(dest="command", required=True)
    show = sub.add_parser("results", help="list the mosaics and the stack of a run")
    show.add_argument("results_dir", nargs="?", default="results")
    st = sub.add_parser("status", help="progress of the run from the status database")
    st.add_argument("--db", help="database URL (default: WORKFLOW_STATUS_DB, config database.url, or "
                                 "sqlite:///results/status.sqlite)")
    st.add_argument("--json", action="store_true", help="machine-readable output")
    st.add_argument("--watch", nargs="?", const=2.0, type=float, metavar="SECONDS",
                    help="redraw every SECONDS (default 2) until interrupted")
    args = parser.parse_args(argv)
    if args.command == "results":
        return results(args.results_dir)
    if args.command == "status":
        try:
            return status(args.db, args.json, args.watch)
        except KeyboardInterrupt:
            return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
