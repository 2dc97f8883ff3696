"""How right the status ETA is: run the benchmark's first case through the workflow and read the
status report every half second, as `python -m workflow_lib status` would; print, at 10 %, 50 % and
90 % of the estimated work, the end the ETA predicted against the real end.

    .venv/bin/python bench/eta.py                 # 40,000 x 40,000 float32, average x4 (inputs shared with bench/run.py)
    .venv/bin/python bench/eta.py --size 20000 --tile-size 512

The ETA counts the tiles' work (the status database knows nothing of the mosaic job after them),
so the real end it is held against is the moment the last tile was finished; the run's own end,
mosaic included, is printed beside it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time

import yaml
from affine import Affine

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from run import Case, generate, workflow_config  # noqa: E402

from workflow_lib.status import StatusStore  # noqa: E402
from workflow_lib.views.status import build_report  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=40_000)
    parser.add_argument("--workdir", default=os.path.join(REPO, "bench", "work"))
    parser.add_argument("--tile-size", type=int, default=None)
    parser.add_argument("--cores", type=int, default=2)
    args = parser.parse_args()
    os.makedirs(args.workdir, exist_ok=True)
    n = args.size
    case = Case(f"float32 {n}x{n}, average, factor 4", os.path.join(args.workdir, f"float32_{n}.tif"), "float32", n,
                "average", "EPSG:3035", 40)
    generate(case.input, n, "float32", "EPSG:3035", Affine(10, 0, 4_000_000, 0, -10, 3_000_000))
    work = os.path.join(args.workdir, "eta")
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(os.path.join(work, "config"))
    with open(os.path.join(work, "config", "config.yaml"), "w") as f:
        yaml.safe_dump(workflow_config(case, args.tile_size), f)
    # Reading the input once before: the first case's figures in bench/README are with a warm cache.
    subprocess.run(["cat", case.input], stdout=subprocess.DEVNULL, check=True)
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", os.path.join(REPO, "Snakefile"), "--directory", work,
           "--cores", str(args.cores), "--resources", "mem_mb=4096", "--quiet", "all", "--", "results/mosaics/d.tif"]
    started = time.time()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    store = StatusStore(f"sqlite:///{work}/results/status.sqlite", read_only=True)
    samples = []  # (seconds since start, share of the work done, eta seconds)
    while proc.poll() is None:
        time.sleep(0.5)
        try:
            report = build_report(store)
        except Exception:  # noqa: BLE001 - the database is not there yet
            store.close()
            continue
        if report.datasets:
            samples.append((time.time() - started, report.work_share, report.eta_seconds))
    ended = time.time() - started
    if proc.returncode != 0:
        sys.exit(f"the workflow failed ({proc.returncode})")
    last_tile = store.query("SELECT MAX(ended_at) FROM tiles")[0][0] - started
    tiles = store.query("SELECT COUNT(*), MIN(work), MAX(work) FROM tiles")[0]
    store.close()
    print(f"{case.name}: {tiles[0]} tiles (estimated work {tiles[1]:.3g} to {tiles[2]:.3g} source pixels), "
          f"last tile finished at {last_tile:.1f} s, run ended (mosaic included) at {ended:.1f} s")
    print("| work done | at | ETA said | predicted end | real end (last tile) | error | error / run |")
    print("|---|---|---|---|---|---|---|")
    for share in (0.1, 0.5, 0.9):
        sample = next((s for s in samples if s[1] >= share and s[2] is not None), None)
        if sample is None:
            print(f"| {100 * share:.0f} % | - | no sample | | | | |")
            continue
        at, done, eta = sample
        error = at + eta - last_tile
        print(f"| {100 * done:.0f} % | {at:.1f} s | {eta:.1f} s | {at + eta:.1f} s | {last_tile:.1f} s | "
              f"{error:+.1f} s | {100 * error / last_tile:+.0f} % |")


if __name__ == "__main__":
    main()
