"""Scale benchmark: planning and dry runs of 10,000 to 1,000,000 tiles, and many tiny tiles end to end.

    .venv/bin/python bench/scale.py                       # all cases (about 5 minutes on 2 cores)
    .venv/bin/python bench/scale.py --tiles 10000,100000  # dry runs only of these sizes
    .venv/bin/python bench/scale.py --per-tile-jobs       # also one job per tile (tiles_per_job 1), as before batches

Dry runs: one sparse 400,000 x 400,000 float32 input (a GeoTIFF whose blocks were never written:
headers only, a few KB) onto a grid of the same pixels, cut into tiles so that the grid has about
N tiles. For each N: `snakemake -n` with the plan not yet cached (headers read, tiles and batches
made) and again with it cached (what every resume and every cluster job pays), the wall time and
the peak RSS of Snakemake's process, and the number of resample jobs.

Zarr store (--store N, 1,000,000 by default): the store of the dry run's plan of about N tiles as
the jobs write it (the array made as the register job makes it, each batch's shard written by
ShardWriter, all tiles nodata since the input is sparse, then consolidated as rule zarr_store
does, with its overview levels), its number of files, and `xarray.open_zarr` of the root and of the
coarsest level timed in a fresh process.

End to end: 1,024 tiles of 32 x 32 pixels (a 1,024 x 1,024 grid from a 2,048 x 2,048 input,
average x2), `snakemake --cores 2` from scratch, register, tiles, mosaic and stack.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import psutil
import rasterio
import yaml
from affine import Affine

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SNAKEMAKE = [sys.executable, "-m", "snakemake", "--snakefile", os.path.join(REPO, "Snakefile")]
EDGE = 400_000


def sparse_input(path: str) -> str:
    """400,000 x 400,000 float32 at 10 m with no block written (GDAL's SPARSE_OK)."""
    if not os.path.exists(path):
        with rasterio.open(path, "w", driver="GTiff", width=EDGE, height=EDGE, count=1, dtype="float32",
                           crs="EPSG:3035", transform=Affine(10, 0, 4_000_000, 0, -10, 6_000_000), nodata=-9999.0,
                           tiled=True, blockxsize=512, blockysize=512, compress="deflate", bigtiff="yes",
                           sparse_ok=True):
            pass
    return path


def measured(cmd: list[str], cwd: str) -> tuple[float, float, str]:
    """Wall seconds, peak RSS (MB) of the process and its children, and the output."""
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak = 0.0
    ps = psutil.Process(proc.pid)
    out = []
    import threading

    reader = threading.Thread(target=lambda: out.append(proc.stdout.read()), daemon=True)
    reader.start()
    while proc.poll() is None:
        try:
            peak = max(peak, ps.memory_info().rss / 2**20)
        except psutil.Error:
            pass
        time.sleep(0.05)
    reader.join()
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{''.join(out)[-3000:]}")
    return seconds, peak, "".join(out)


def write_config(workdir: str, config: dict) -> None:
    os.makedirs(os.path.join(workdir, "config"), exist_ok=True)
    with open(os.path.join(workdir, "config", "config.yaml"), "w") as f:
        yaml.safe_dump(config, f)


def dry_run_case(workdir: str, source: str, tiles: int, per_job) -> dict:
    tile_size = math.ceil(EDGE / math.sqrt(tiles))
    shutil.rmtree(workdir, ignore_errors=True)
    write_config(workdir, {"target": {"crs": "EPSG:3035", "resolution": 10}, "tile_size": tile_size,
                           "tiles_per_job": per_job, "datasets": {"d": {"path": source, "method": "nearest"}}})
    cmd = [*SNAKEMAKE, "-n", "--cores", "2"]
    cold, cold_mb, _ = measured(cmd, workdir)
    warm, warm_mb, out = measured(cmd, workdir)
    jobs = int(re.search(r"resample_batch\s+(\d+)", out).group(1))
    n_tiles = (math.ceil(EDGE / tile_size)) ** 2
    return {"tiles": n_tiles, "tile_size": tile_size, "jobs": jobs, "cold_s": cold, "warm_s": warm,
            "peak_mb": max(cold_mb, warm_mb)}


def store_case(workdir: str) -> dict:
    """The Zarr store of the plan cached in ``workdir`` (a dry run's), written as its jobs write it."""
    sys.path.insert(0, REPO)
    from workflow_lib.config import validate_config
    from workflow_lib.domain import tile_dir, zarr_store_path
    from workflow_lib.mosaics.zarr_store import ShardWriter, finish_store, prepare_array
    from workflow_lib.planning.plan import load_plan

    cwd = os.getcwd()
    os.chdir(workdir)
    try:
        with open(os.path.join("config", "config.yaml")) as f:
            plan = load_plan(validate_config(yaml.safe_load(f)))
        store = zarr_store_path()
        started = time.perf_counter()
        for dataset in plan.datasets.values():
            prepare_array(store, plan.grid, dataset)
            nodata = np.full((1, plan.grid.tile_size, plan.grid.tile_size), dataset.settings.dst_nodata,
                             dtype=dataset.settings.dst_dtype)
            for batch in dataset.batches:
                writer = ShardWriter(store, plan.grid, dataset, tile_dir(dataset.name), batch.id)
                for index in batch.tiles:
                    tile = plan.grid.tile(index).window
                    writer.write_array(index, nodata[:, :int(tile.height), :int(tile.width)])
                writer.close(True)
        batches = time.perf_counter() - started
        finish_store(store, plan.grid, list(plan.datasets))
        written = time.perf_counter() - started
        files = sum(len(names) for _, _, names in os.walk(store))
        level_files = sum(len(names) for _, _, names in os.walk(os.path.join(store, "overviews")))
        probe = ("import sys, time, xarray; t = time.perf_counter(); "
                 "ds = xarray.open_zarr('results/stack.zarr', group=sys.argv[1] or None); "
                 "print(time.perf_counter() - t, dict(ds.sizes))")
        opened = {}
        for group in ("", *(f"overviews/{f}" for f in plan.grid.overview_factors()[-1:])):
            out = subprocess.run([sys.executable, "-c", probe, group], capture_output=True, text=True,
                                 check=True).stdout
            opened[group or "root"] = (float(out.split()[0]), out.split(" ", 1)[1].strip())
        return {"tiles": plan.tile_count, "shards": [d.shard for d in plan.datasets.values()], "files": files,
                "level_files": level_files, "levels": plan.grid.overview_factors(),
                "batches_s": batches, "write_s": written, "open_s": opened["root"][0], "sizes": opened["root"][1],
                "opened": opened}
    finally:
        os.chdir(cwd)


def tiny_tiles_case(workdir: str, per_job) -> dict:
    shutil.rmtree(workdir, ignore_errors=True)
    os.makedirs(workdir)
    path = os.path.join(workdir, "in.tif")
    rng = np.random.default_rng(0)
    with rasterio.open(path, "w", driver="GTiff", width=2048, height=2048, count=1, dtype="float32",
                       crs="EPSG:3035", transform=Affine(10, 0, 4_000_000, 0, -10, 3_000_000), nodata=-9999.0,
                       tiled=True, blockxsize=256, blockysize=256) as dst:
        dst.write(rng.random((2048, 2048), dtype="float32"), 1)
    write_config(workdir, {"target": {"crs": "EPSG:3035", "resolution": 20}, "tile_size": 32,
                           "tiles_per_job": per_job, "datasets": {"d": {"path": path, "method": "average"}}})
    seconds, peak, out = measured([*SNAKEMAKE, "--cores", "2", "--resources", "mem_mb=4000"], workdir)
    jobs = len(os.listdir(os.path.join(workdir, "results", "batches", "d")))
    tiles = len(os.listdir(os.path.join(workdir, "results", "tiles", "d")))
    return {"tiles": tiles, "jobs": jobs, "seconds": seconds, "peak_mb": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiles", default="1024,10000,100000,1000000", help="dry-run sizes (about N tiles)")
    parser.add_argument("--no-end-to-end", action="store_true", help="skip the 1,024 tiny tiles run")
    parser.add_argument("--store", type=int, default=1_000_000,
                        help="the Zarr store of the dry run of about this many tiles (one of --tiles; 0: none)")
    parser.add_argument("--per-tile-jobs", action="store_true",
                        help="also with tiles_per_job 1 (one job per tile, as before batches): up to 10,000 "
                             "tiles for dry runs, and the tiny tiles end to end (about 10 minutes)")
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()
    root = args.workdir or tempfile.mkdtemp(prefix="scale-")
    os.makedirs(root, exist_ok=True)
    source = sparse_input(os.path.join(root, "sparse.tif"))
    print(f"machine: {os.cpu_count()} CPUs, {psutil.virtual_memory().total / 2**30:.0f} GiB; workdir {root}")
    rows = []
    for n in map(int, args.tiles.split(",")):
        modes = ["auto"] + ([1] if args.per_tile_jobs and n <= 10_000 else [])
        for per_job in modes:
            r = dry_run_case(os.path.join(root, f"dry-{n}-{per_job}"), source, n, per_job)
            rows.append(("snakemake -n", f"tiles_per_job {per_job}", r["tiles"], r["jobs"],
                         f"{r['cold_s']:.1f} s (plan made) / {r['warm_s']:.1f} s (plan cached)", r["peak_mb"]))
            print(rows[-1], flush=True)
    if args.store:
        r = store_case(os.path.join(root, f"dry-{args.store}-auto"))
        print(f"zarr store of {r['tiles']:,} tiles (shards of {r['shards']} tiles): {r['files']:,} files, written in "
              f"{r['write_s']:.0f} s; xarray.open_zarr {r['open_s']:.2f} s ({r['sizes']})", flush=True)
        coarsest = {k: v for k, v in r["opened"].items() if k != "root"}
        print(f"  overview levels 1/{', 1/'.join(map(str, r['levels']))}: {r['level_files']:,} of the files; the "
              f"batches' shards {r['batches_s']:.0f} s, the coarser levels and metadata (rule zarr_store) "
              f"{r['write_s'] - r['batches_s']:.0f} s; "
              + "; ".join(f"open_zarr(group={g!r}) {t:.2f} s ({sizes})" for g, (t, sizes) in coarsest.items()),
              flush=True)
    if not args.no_end_to_end:
        for per_job in ["auto"] + ([1] if args.per_tile_jobs else []):
            r = tiny_tiles_case(os.path.join(root, f"tiny-{per_job}"), per_job)
            rows.append(("end to end, 32 x 32 px tiles, --cores 2", f"tiles_per_job {per_job}", r["tiles"],
                         r["jobs"], f"{r['seconds']:.1f} s", r["peak_mb"]))
            print(rows[-1], flush=True)
    print("\n| what | batches | tiles | resample jobs | seconds | peak RSS of Snakemake's process |")
    print("|---|---|---|---|---|---|")
    for what, mode, tiles, jobs, seconds, peak in rows:
        print(f"| {what} | {mode} | {tiles:,} | {jobs:,} | {seconds} | {peak:.0f} MB |")


if __name__ == "__main__":
    main()
