"""Benchmark: this workflow against gdalwarp (default and tuned) and the decode floor, same files.

    make bench                          # 40,000 x 40,000 inputs, 3 repeats (about 30 minutes on 2 cores, plus 8 to generate the inputs once)
    .venv/bin/python bench/run.py --size 8000 --repeats 1    # a quick look
    .venv/bin/python bench/run.py --cases average --cores 1,2 --size 10000   # how it scales

Needs Debian's gdal-bin (gdalwarp) and vmtouch. Inputs are generated once into --workdir (about
5 GB at full size) and kept; every measurement runs with its input locked in the page cache
(``vmtouch -l``), because these machines drop file cache untouched for about a minute. A second
anchor runs GDAL's warper in the workflow's own GDAL (3.10, the rasterio wheel's; Debian's gdalwarp
is 3.6): one whole-file ``rasterio.warp.reproject`` with 2 threads and 512 MB. Prints, per
case and tool, the median wall time, the peak RSS of the largest process, and the ratio to tuned
gdalwarp; the workflow's lines add the largest tile job's peak RSS and its declared mem_mb.
"""

from __future__ import annotations

import argparse
import csv
import glob
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field

import numpy as np
import psutil
import rasterio
import yaml
from affine import Affine
from rasterio.windows import Window

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from workflow_lib.config import validate_config  # noqa: E402
from workflow_lib.planning.plan import build_plan  # noqa: E402

BLOCK = 512
TUNED = ["-multi", "-wo", "NUM_THREADS=ALL_CPUS", "-wm", "512", "--config", "GDAL_NUM_THREADS", "ALL_CPUS",
         "-co", "NUM_THREADS=ALL_CPUS", "-ovr", "NONE"]


@dataclass
class Case:
    name: str
    input: str
    dtype: str
    size: int
    method: str
    target_crs: str
    resolution: float
    crs: str = "EPSG:3035"  # the input's
    # Workflow runs to time besides the default one: label -> {"dataset"|"warp"|"output": keys to set}.
    variants: dict = field(default_factory=dict)
    results: dict = field(default_factory=dict)


# ---------------------------------------------------------------------------------------- inputs

def _field(rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """A smooth, terrain-like surface: compresses as real elevation or climate data does."""
    u, v = cols / 1700.0, rows / 1300.0
    return (1200 + 600 * np.sin(u) * np.cos(v) + 150 * np.sin(3.1 * u + 1.7 * v)
            + 25 * np.cos(17.3 * u - 11.1 * v)).astype("float32")


def generate(path: str, size: int, dtype: str, crs: str, transform: Affine) -> None:
    """float32 with nodata holes, or uint8 land-cover-like classes; DEFLATE + predictor, 512 blocks."""
    if os.path.exists(path):
        return
    float_data = dtype == "float32"
    profile = dict(driver="GTiff", width=size, height=size, count=1, dtype=dtype, crs=crs, transform=transform,
                   nodata=-9999.0 if float_data else 0, tiled=True, blockxsize=BLOCK, blockysize=BLOCK,
                   compress="deflate", predictor=3 if float_data else 2, bigtiff="yes", num_threads="all_cpus")
    rng = np.random.default_rng(42)
    tmp = path + ".part"
    started = time.monotonic()
    with rasterio.open(tmp, "w", **profile) as dst:
        cols = np.arange(size, dtype="float64")
        for row in range(0, size, BLOCK):
            h = min(BLOCK, size - row)
            r, c = np.meshgrid(np.arange(row, row + h, dtype="float64"), cols, indexing="ij")
            z = _field(r, c)
            if float_data:
                z += rng.normal(0, 2, z.shape).astype("float32")
                # Holes: lakes of nodata every few kilometres, and scattered missing pixels.
                lakes = (np.sin(c / 900.0) * np.sin(r / 700.0)) > 0.97
                z[lakes | (rng.random(z.shape) < 0.01)] = -9999.0
                out = z
            else:
                classes = (np.digitize(z, np.linspace(700, 1900, 11)) + 1).astype("uint8")  # 1..12
                speckle = rng.random(z.shape) < 0.15  # mixed pixels: ties for mode
                classes[speckle] = rng.integers(1, 13, int(speckle.sum()), dtype="uint8")
                out = classes
            dst.write(out, 1, window=Window(0, row, size, h))
    os.replace(tmp, path)
    print(f"  generated {path}: {size}x{size} {dtype}, {os.path.getsize(path) / 1e9:.2f} GB "
          f"in {time.monotonic() - started:.0f} s", flush=True)


# --------------------------------------------------------------------------------- measurements

def measured(cmd: list[str], cwd: str | None = None, env: dict | None = None) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) of the largest process of ``cmd`` and its children."""
    wrapper = ("import resource, subprocess, sys\n"
               "rc = subprocess.run(sys.argv[1:]).returncode\n"
               "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr)\n"
               "sys.exit(rc)\n")
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", wrapper, *cmd], cwd=cwd, env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
    seconds = time.monotonic() - started
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return seconds, int(proc.stderr.strip().splitlines()[-1]) / 1024.0


DECODE = """
import sys, rasterio
from concurrent.futures import ThreadPoolExecutor
from rasterio.windows import Window
path, threads = sys.argv[1], int(sys.argv[2])
with rasterio.Env(GDAL_CACHEMAX=64):
    with rasterio.open(path) as probe:
        width, height, (bh, bw) = probe.width, probe.height, probe.block_shapes[0]
    rows = list(range(0, height, bh))
    def worker(i):
        with rasterio.open(path) as src:  # one handle per thread: GDAL datasets are not thread-safe
            for row in rows[i::threads]:
                src.read(1, window=Window(0, row, width, min(bh, height - row)))
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(worker, range(threads)))
"""


# The second anchor: GDAL's warper in the workflow's own GDAL (the rasterio wheel's, 3.10), whole
# file to whole file, with 2 threads and the same working memory as tuned gdalwarp (-wm 512).
REPROJECT = """
import sys, rasterio
from affine import Affine
from rasterio.enums import Resampling
from rasterio.warp import reproject
path, out, crs, transform, width, height, method = sys.argv[1:8]
transform = Affine(*map(float, transform.split(",")))
with rasterio.Env(GDAL_NUM_THREADS=2), rasterio.open(path) as src:
    profile = {"driver": "GTiff", "width": int(width), "height": int(height), "count": 1,
               "dtype": src.dtypes[0], "crs": crs, "transform": transform, "nodata": src.nodata}
    with rasterio.open(out, "w", **profile) as dst:
        reproject(rasterio.band(src, 1), rasterio.band(dst, 1), resampling=Resampling[method],
                  src_nodata=src.nodata, dst_nodata=src.nodata, num_threads=2, warp_mem_limit=512)
"""


def rasterio_reproject(case: Case, out: str, grid) -> dict:
    if os.path.exists(out):
        os.unlink(out)
    transform = ",".join(repr(v) for v in list(grid.transform)[:6])
    cmd = [sys.executable, "-c", REPROJECT, case.input, out, case.target_crs, transform, str(grid.width),
           str(grid.height), case.method]
    try:
        seconds, peak = measured(cmd)
    except RuntimeError as e:
        peak = float(str(e).strip().splitlines()[-1]) / 1024.0
        print(f"  rasterio.warp.reproject failed (peak RSS {peak:.0f} MB)", flush=True)
        return {"seconds": float("nan"), "peak_mb": peak, "total": None, "failed": True}
    return {"seconds": seconds, "peak_mb": peak, "total": valid_total(out) if case.method == "sum" else None}


class PageCacheLock:
    """Keep the input resident while measuring: ``vmtouch -dl`` loads and locks it."""

    def __init__(self, path: str):
        self.path = path

    def __enter__(self):
        self.proc = subprocess.Popen(["vmtouch", "-l", "-q", self.path])
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:  # -l without -d stays in the foreground once loaded
            out = subprocess.run(["vmtouch", self.path], capture_output=True, text=True).stdout
            if "Resident Pages" in out and "100%" in out.split("Resident Pages")[1].splitlines()[0]:
                return self
            time.sleep(1)
        raise RuntimeError(f"could not load {self.path} into the page cache")

    def __exit__(self, *exc):
        self.proc.terminate()
        self.proc.wait()


def grid_of(case: Case, tile_size: int) -> dict:
    config = workflow_config(case, tile_size)
    return build_plan(validate_config(config)).grid


def workflow_config(case: Case, tile_size: int | None, variant: str | None = None) -> dict:
    config = {"target": {"crs": case.target_crs, "resolution": case.resolution, "origin": [0, 0]},
              "datasets": {"d": {"path": case.input, "method": case.method}}}
    if tile_size:
        config["tile_size"] = tile_size
    if variant:
        keys = case.variants[variant]
        config["datasets"]["d"].update(keys.get("dataset", {}))
        for section in ("warp", "output"):
            if keys.get(section):
                config[section] = keys[section]
    return config


def run_workflow(case: Case, workdir: str, tile_size: int | None, cores: int = 2, variant: str | None = None) -> dict:
    shutil.rmtree(workdir, ignore_errors=True)
    os.makedirs(os.path.join(workdir, "config"))
    with open(os.path.join(workdir, "config", "config.yaml"), "w") as f:
        yaml.safe_dump(workflow_config(case, tile_size, variant), f)
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", os.path.join(REPO, "Snakefile"), "--directory", workdir,
           "--cores", str(cores), "--resources", "mem_mb=4096", "--quiet", "all"]
    seconds, peak = measured(cmd)
    jobs = []
    for tsv in glob.glob(os.path.join(workdir, "benchmarks", "**", "*.tsv"), recursive=True):
        rule = os.path.relpath(tsv, os.path.join(workdir, "benchmarks")).split(os.sep)[0]
        with open(tsv) as f:
            row = next(csv.DictReader(f, delimiter="\t"))
        jobs.append((rule, float(row["s"]), float(row["max_rss"]) if row["max_rss"] not in ("", "-") else 0.0, tsv))
    batches = [j for j in jobs if j[0] == "resample_batch"]
    # The tiles' own work inside each batch job (from the first to the last line of its log that
    # a tile wrote) against the job's wall time: the rest is the fixed cost of a job (interpreter,
    # imports, Snakemake's script preamble, opening the status database).
    fixed, tiles = [], 0
    for _, s, _, tsv in batches:
        log = tsv.replace(os.sep + "benchmarks" + os.sep, os.sep + "logs" + os.sep).replace(".tsv", ".log")
        job_fixed, job_tiles = batch_fixed_cost(log, s)
        fixed.append(job_fixed)
        tiles += job_tiles
    mosaic = [j for j in jobs if j[0] == "mosaic"]
    zarr_path = os.path.join(workdir, "results", "stack.zarr")
    mosaic_path = os.path.join(workdir, "results", "mosaics", "d.tif")
    with open(os.path.join(workdir, "results", "datasets", "d.json")) as f:
        engine = json.load(f)["dataset"]["settings"]["engine"]
    return {"seconds": seconds, "peak_mb": peak, "tiles": tiles, "batches": len(batches),
            "max_tile_rss_mb": max(j[2] for j in batches), "max_job_rss_mb": max(j[2] for j in jobs),
            "tile_mem_mb": validate_config(workflow_config(case, tile_size))["memory"]["tile_mb"],
            "fixed_s": statistics.mean(fixed), "tile_s": statistics.mean(s for _, s, _, _ in batches),
            "mosaic_s": mosaic[0][1] if mosaic else 0.0, "serial_share": serial_share(jobs),
            "engine": engine, "total": valid_total(mosaic_path if os.path.exists(mosaic_path)
                                                   else f'ZARR:"{zarr_path}":/d', zarr_path)}


def serial_share(jobs: list) -> float:
    """The share of the run, from the first batch job's start to the last job's end, during which at
    most one job ran: each job's interval from its benchmark file (written as it ends, with its
    wall time)."""
    spans = [(os.path.getmtime(tsv) - s, os.path.getmtime(tsv)) for _, s, _, tsv in jobs]
    start = min(a for (rule, *_), (a, _) in zip(jobs, spans) if rule == "resample_batch")
    end = max(b for _, b in spans)
    edges = sorted({start, end, *(t for span in spans for t in span if start < t < end)})
    lonely = sum(b - a for a, b in zip(edges, edges[1:])
                 if sum(1 for s0, s1 in spans if s0 < b and s1 > a) <= 1)
    return lonely / (end - start) if end > start else 0.0


def valid_total(path: str, zarr_store: str | None = None) -> float:
    """The sum of a raster's valid pixels in float64, block by block (the mass balance of ``sum``);
    of the Zarr store's array ``d`` when there is no mosaic (GDAL 3.10 cannot read it)."""
    if not path.endswith(".tif") and zarr_store:
        import zarr

        array = zarr.open_array(os.path.join(zarr_store, "d"), mode="r")
        total = 0.0
        step = array.chunks[0]
        for row in range(0, array.shape[0], step):
            a = array[row:row + step].astype("float64")
            ok = ~np.isnan(a) & (a != array.fill_value)
            total += float(a[ok].sum())
        return total
    total = 0.0
    with rasterio.open(path) as src:
        for _, window in src.block_windows(1):
            a = src.read(1, window=window).astype("float64")
            ok = ~np.isnan(a)
            if src.nodata is not None and not np.isnan(src.nodata):
                ok &= a != src.nodata
            total += float(a[ok].sum())
    return total


def batch_fixed_cost(log: str, wall: float) -> tuple[float, int]:
    """A batch job's fixed cost (its wall time outside the span of the log lines its tiles wrote)
    and the tiles it made, from its log."""
    with open(log) as f:
        lines = f.read().splitlines()
    stamps = [_stamp(line) for line in lines if " to make, " in line or " made, " in line]
    return wall - (stamps[-1] - stamps[0]), sum(" done in " in line for line in lines)


def _stamp(line: str) -> float:
    """Seconds of a log line's timestamp ("2026-12-02 14:30:38,179 INFO ...")."""
    day, clock = line.split(" ")[:2]
    hms, ms = clock.split(",")
    h, m, sec = (int(x) for x in hms.split(":"))
    return ((h * 60 + m) * 60 + sec) + int(ms) / 1000.0


def gdalwarp(case: Case, out: str, grid, tuned: bool) -> dict:
    left, bottom, right, top = grid.bounds
    rx, ry = grid.resolution
    if os.path.exists(out):
        os.unlink(out)
    cmd = ["gdalwarp", "-q", "-t_srs", case.target_crs, "-te", repr(left), repr(bottom), repr(right), repr(top),
           "-tr", repr(rx), repr(ry), "-r", case.method, *(TUNED if tuned else []), case.input, out]
    try:
        seconds, peak = measured(cmd)
    except RuntimeError as e:  # Debian's GDAL 3.6 runs out of memory on some cases: say so, go on
        peak = float(str(e).strip().splitlines()[-1]) / 1024.0
        print(f"  gdalwarp failed (peak RSS {peak:.0f} MB): {' '.join(cmd)}", flush=True)
        return {"seconds": float("nan"), "peak_mb": peak, "total": None, "failed": True}
    return {"seconds": seconds, "peak_mb": peak, "total": valid_total(out) if case.method == "sum" else None}


def median_of(repeats: int, fn) -> dict:
    runs = [fn() for _ in range(repeats)]
    first = runs[0] if isinstance(runs[0], dict) else {}
    walls = [r["seconds"] if isinstance(r, dict) else r[0] for r in runs]
    peaks = [r["peak_mb"] if isinstance(r, dict) else r[1] for r in runs]
    return {**first, "seconds": statistics.median(walls), "all_seconds": walls, "peak_mb": max(peaks)}


# ---------------------------------------------------------------------------------------- main

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=40_000, help="edge of the large inputs in pixels")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", default=os.path.join(REPO, "bench", "work"))
    parser.add_argument("--cases", default="average,mode,reproject,sum")
    parser.add_argument("--tile-sizes", default="", help="also time the workflow at these tile sizes (first case)")
    parser.add_argument("--skip-default-gdalwarp", action="store_true")
    parser.add_argument("--cores", default="2", help="snakemake --cores for the workflow; a list (1,2) times each")
    args = parser.parse_args()
    for tool in ("gdalwarp", "vmtouch"):
        if not shutil.which(tool):
            sys.exit(f"{tool} not found: apt-get install gdal-bin vmtouch")
    os.makedirs(args.workdir, exist_ok=True)
    n, half = args.size, args.size // 2
    laea = Affine(10, 0, 4_000_000, 0, -10, 3_000_000)  # 10 m pixels in EPSG:3035
    cases = {
        "average": Case(f"float32 {n}x{n}, average, factor 4", os.path.join(args.workdir, f"float32_{n}.tif"),
                        "float32", n, "average", "EPSG:3035", 40,
                        variants={"workflow, formats [zarr] (no mosaic, no GeoTIFF stack)":
                                  {"output": {"formats": ["zarr"]}},
                                  "workflow, formats [cog] (no Zarr store)": {"output": {"formats": ["cog"]}}}),
        "mode": Case(f"uint8 classes {n}x{n}, mode, factor 4", os.path.join(args.workdir, f"uint8_{n}.tif"),
                     "uint8", n, "mode", "EPSG:3035", 40),
        "reproject": Case(f"float32 {half}x{half}, EPSG:3035 -> EPSG:4326, average",
                          os.path.join(args.workdir, f"float32_{half}.tif"), "float32", half, "average",
                          "EPSG:4326", 0.0005,
                          variants={"workflow, engine gdal (GDAL's warper, et 0.125)":
                                    {"dataset": {"engine": "gdal"}}}),
        # Counts in EPSG:4326 (0.00025 degrees, over 5-15 E, 45-55 N) onto 100 m equal-area pixels.
        "sum": Case(f"float32 counts {n}x{n}, EPSG:4326 -> EPSG:3035 100 m, sum",
                    os.path.join(args.workdir, f"float32_4326_{n}.tif"), "float32", n, "sum", "EPSG:3035", 100,
                    crs="EPSG:4326"),
        # Interpolation across CRSs: what GDAL's exact transformation costs against its default.
        "bilinear": Case(f"float32 {half}x{half}, EPSG:3035 -> EPSG:4326, bilinear",
                         os.path.join(args.workdir, f"float32_{half}.tif"), "float32", half, "bilinear",
                         "EPSG:4326", 0.0001,
                         variants={"workflow, error_threshold 0 (exact)": {"warp": {"error_threshold": 0}}}),
    }
    geographic = Affine(10 / n, 0, 5, 0, -10 / n, 55)
    selected = [cases[c] for c in args.cases.split(",")]
    mem = psutil.virtual_memory().total / 2**30
    print(f"machine: {platform.node()}, {os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), "
          f"{mem:.0f} GiB RAM, Python {platform.python_version()}, rasterio {rasterio.__version__} "
          f"(GDAL {rasterio.__gdal_version__}), gdalwarp "
          f"{subprocess.run(['gdalwarp', '--version'], capture_output=True, text=True).stdout.strip()}", flush=True)
    for case in selected:
        generate(case.input, case.size, case.dtype, case.crs, geographic if case.crs == "EPSG:4326" else laea)
    rows = []
    for case in selected:
        print(f"\n## {case.name}", flush=True)
        grid = grid_of(case, 1024)
        with PageCacheLock(case.input):
            r = {}
            r["decode floor (2 threads)"] = median_of(args.repeats, lambda: measured(
                [sys.executable, "-c", DECODE, case.input, "2"]))
            print(f"  decode floor {r['decode floor (2 threads)']['all_seconds']}", flush=True)
            out = os.path.join(args.workdir, "gdalwarp.tif")
            r["gdalwarp tuned"] = median_of(args.repeats, lambda: gdalwarp(case, out, grid, True))
            print(f"  gdalwarp tuned {r['gdalwarp tuned']['all_seconds']}", flush=True)
            if case.method == "sum":
                r["input"] = {"seconds": 0.0, "peak_mb": 0.0, "total": valid_total(case.input)}
            if not args.skip_default_gdalwarp:
                r["gdalwarp default"] = median_of(args.repeats, lambda: gdalwarp(case, out, grid, False))
                print(f"  gdalwarp default {r['gdalwarp default']['all_seconds']}", flush=True)
            r["rasterio.warp.reproject (GDAL 3.10, 2 threads)"] = median_of(
                args.repeats, lambda: rasterio_reproject(case, out, grid))
            print(f"  rasterio reproject {r['rasterio.warp.reproject (GDAL 3.10, 2 threads)']['all_seconds']}",
                  flush=True)
            wf = os.path.join(args.workdir, "workflow")
            for cores in map(int, args.cores.split(",")):
                label = f"workflow (snakemake --cores {cores})"
                r[label] = median_of(args.repeats, lambda: run_workflow(case, wf, None, cores))
                print(f"  workflow --cores {cores} {r[label]['all_seconds']}", flush=True)
            for variant in case.variants:
                r[variant] = median_of(args.repeats, lambda: run_workflow(case, wf, None, 2, variant))
                print(f"  {variant} {r[variant]['all_seconds']}", flush=True)
            if case is selected[0] and args.tile_sizes:
                for size in map(int, args.tile_sizes.split(",")):
                    r[f"workflow, tile_size {size}"] = median_of(1, lambda: run_workflow(case, wf, size))
                    print(f"  workflow tile_size {size} {r[f'workflow, tile_size {size}']['all_seconds']}", flush=True)
            if os.path.exists(out):
                os.unlink(out)
        tuned = r["gdalwarp tuned"]["seconds"]
        base = "gdalwarp tuned"
        if r["gdalwarp tuned"].get("failed"):  # then against GDAL 3.10's warper (rasterio)
            base = "rasterio.warp.reproject (GDAL 3.10, 2 threads)"
            tuned = r[base]["seconds"]
            if r[base].get("failed"):
                base = "nothing: both GDAL warpers failed"
        inputs = r.pop("input", {}).get("total")
        for tool, m in r.items():
            extra = ""
            if inputs is not None and m.get("total") is not None:
                extra = (f"output total {m['total']:.10g} against input {inputs:.10g} "
                         f"(relative {(m['total'] - inputs) / inputs:+.2g}); ")
            if "tiles" in m:
                extra += (f"{m['tiles']} tiles in {m['batches']} batch job(s) ({m['engine']}), batch job "
                         f"{m['tile_s']:.2f} s of which fixed {m['fixed_s']:.2f} s "
                         f"({100 * m['fixed_s'] / m['tile_s']:.0f} %), mosaic "
                         f"{m['mosaic_s']:.1f} s; serial share {100 * m['serial_share']:.0f} %; largest batch job {m['max_tile_rss_mb']:.0f} MB of "
                         f"{m['tile_mem_mb']} MB, largest job {m['max_job_rss_mb']:.0f} MB")
            if m.get("failed"):
                extra = "failed (the peak RSS it reached before)"
            elif base != "gdalwarp tuned":
                extra = f"ratio against {base}; " + extra
            rows.append((case.name, tool, m["seconds"], m["peak_mb"], m["seconds"] / tuned, extra))
    print("\n| case | tool | wall (median) | peak RSS | vs gdalwarp tuned | notes |")
    print("|---|---|---|---|---|---|")
    for name, tool, seconds, peak, ratio, extra in rows:
        print(f"| {name} | {tool} | {seconds:.1f} s | {peak:.0f} MB | {ratio:.2f}x | {extra} |")


if __name__ == "__main__":
    main()
