"""Datasets of many files: how long planning takes, and what a job opens.

    .venv/bin/python bench/sources.py                 # 10,000 files to plan, 500 end to end
    .venv/bin/python bench/sources.py --plan-files 2000 --run-files 200

Prints:
- the plan of a dataset of N files (a glob of small GeoTIFFs on one pixel grid): cold (no cache,
  every header read), with the header cache (the files unchanged, the plan made again), and as
  every parse of the Snakefile sees it (the plan's own cache: the glob expanded, every file
  stat'ed, the plan read);
- Snakemake end to end on M files against the same pixels as one file: seconds, whether the
  mosaics are equal, and the most files any process of the run (Snakemake or a job) had open,
  sampled every 20 ms.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
import psutil
import rasterio
import yaml
from affine import Affine

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from workflow_lib.config import validate_config  # noqa: E402
from workflow_lib.planning.plan import build_plan, load_plan, plan_cache_path  # noqa: E402

ORIGIN = Affine(30, 0, 504000, 0, -30, 4608000)


def write_members(folder: str, count: int, size: int) -> tuple[list[str], np.ndarray]:
    cols = int(np.ceil(np.sqrt(count)))
    rows = int(np.ceil(count / cols))
    rng = np.random.default_rng(0)
    full = rng.normal(500, 50, (rows * size, cols * size)).astype("float32")
    os.makedirs(folder, exist_ok=True)
    paths = []
    for k in range(count):
        r, c = divmod(k, cols)
        path = os.path.join(folder, f"m{k:05d}.tif")
        with rasterio.open(path, "w", driver="GTiff", width=size, height=size, count=1, dtype="float32",
                           crs="EPSG:32633", transform=ORIGIN @ Affine.translation(c * size, r * size),
                           nodata=-9999.0) as dst:
            dst.write(full[r * size:(r + 1) * size, c * size:(c + 1) * size], 1)
        paths.append(path)
    for k in range(count, rows * cols):  # places of the last row without a file
        r, c = divmod(k, cols)
        full[r * size:(r + 1) * size, c * size:(c + 1) * size] = -9999.0
    return paths, full


def config(path, resolution=120, tile_size=256):
    return {"target": {"crs": "EPSG:32633", "resolution": resolution}, "tile_size": tile_size,
            "datasets": {"dem": {"path": path, "method": "average"}}}


def bench_plan(work: str, count: int) -> None:
    folder = os.path.join(work, "plan")
    started = time.monotonic()
    write_members(os.path.join(folder, "parts"), count, 64)
    print(f"plan: {count} files of 64 x 64 written in {time.monotonic() - started:.1f} s")
    os.chdir(folder)
    cfg = validate_config(config("parts/*.tif"))
    started = time.monotonic()
    plan = build_plan(cfg)
    cold = time.monotonic() - started
    started = time.monotonic()
    build_plan(cfg)
    cached_headers = time.monotonic() - started
    path = plan_cache_path(cfg)
    load_plan(cfg, path=path)  # writes the plan's cache
    started = time.monotonic()
    load_plan(cfg, path=plan_cache_path(cfg))
    parse = time.monotonic() - started
    d = plan.datasets["dem"]
    print(f"plan: {count} files -> {d.tile_count} tiles: cold {cold:.2f} s (target <= 30 s), header cache "
          f"{cached_headers:.2f} s, plan cache (every parse) {parse:.3f} s (target <= 1 s)")


def max_open_files(root: psutil.Process, stop: threading.Event, seen: list[int]) -> None:
    while not stop.is_set():
        try:
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return
        for p in procs:
            try:
                seen.append(p.num_fds())
            except psutil.Error:
                pass
        stop.wait(0.02)


def bench_run(work: str, count: int) -> None:
    folder = os.path.join(work, "run")
    paths, full = write_members(os.path.join(folder, "parts"), count, 40)
    one = os.path.join(work, "one")
    os.makedirs(one, exist_ok=True)
    with rasterio.open(paths[0]) as first:
        profile = first.profile
    profile.update(width=full.shape[1], height=full.shape[0], blockxsize=256, blockysize=256, tiled=True)
    with rasterio.open(os.path.join(one, "single.tif"), "w", **profile) as dst:
        dst.write(full, 1)
    results = {}
    for label, workdir, path in [("files", folder, "parts/*.tif"), ("one file", one, "single.tif")]:
        os.makedirs(os.path.join(workdir, "config"), exist_ok=True)
        with open(os.path.join(workdir, "config", "config.yaml"), "w") as f:
            yaml.safe_dump(config(path, tile_size=64), f)
        cmd = [sys.executable, "-m", "snakemake", "--snakefile", os.path.join(REPO, "Snakefile"), "--directory",
               workdir, "--cores", "2", "--resources", "mem_mb=2000", "--quiet"]
        started = time.monotonic()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        stop, seen = threading.Event(), []
        watcher = threading.Thread(target=max_open_files, args=(psutil.Process(proc.pid), stop, seen))
        watcher.start()
        code = proc.wait()
        stop.set()
        watcher.join()
        seconds = time.monotonic() - started
        if code:
            raise SystemExit(f"snakemake on {label} failed ({code}); see {workdir}/logs")
        with rasterio.open(os.path.join(workdir, "results", "mosaics", "dem.tif")) as src:
            results[label] = src.read(1)
        print(f"run: {count if label == 'files' else 1} {label}: {seconds:.1f} s, most files open in one process "
              f"{max(seen)} (target <= 256)")
    print(f"run: mosaic of {count} files equal to that of one file: {np.array_equal(*results.values())}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--plan-files", type=int, default=10_000)
    parser.add_argument("--run-files", type=int, default=500)
    parser.add_argument("--workdir", default=None, help="default: a temporary folder, removed afterwards")
    args = parser.parse_args()
    work = args.workdir or tempfile.mkdtemp(prefix="bench-sources-")
    try:
        here = os.getcwd()
        if args.run_files:
            bench_run(work, args.run_files)
        if args.plan_files:
            bench_plan(work, args.plan_files)
        os.chdir(here)
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
