"""A tile job stays inside the memory it declares, whatever the size of its source region."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.windows import Window

from .helpers import REPO

JOB = """
import json, sys
from workflow_lib.config import validate_config
from workflow_lib.planning.plan import build_plan
from workflow_lib.engines.resample import resample_tile
config, out, mem_mb = json.loads(sys.argv[1]), sys.argv[2], int(sys.argv[3])
plan = build_plan(validate_config(config))
d = plan.datasets["d"]
figures = resample_tile("d", d.header, d.settings, plan.grid, plan.grid.tile(d.tiles[0]), out, mem_mb=mem_mb)
from workflow_lib.runtime import peak_rss_mb
figures["peak_rss_mb"] = peak_rss_mb()  # not ru_maxrss, which includes the forking pytest's RSS
figures["engine"] = d.settings.engine
figures["stats"] = figures["stats"].summary(bins=4)  # the tile's statistics, as JSON
print(json.dumps(figures))
"""


@pytest.fixture(scope="module")
def big_source(tmp_path_factory):
    """8,000 x 8,000 float32 (256 MB of pixels), tiled and compressed, written block by block."""
    path = tmp_path_factory.mktemp("big") / "big.tif"
    profile = dict(driver="GTiff", width=8000, height=8000, count=1, dtype="float32", crs="EPSG:32632",
                   transform=Affine(10, 0, 500000, 0, -10, 5200000), nodata=-9999.0, tiled=True,
                   blockxsize=512, blockysize=512, compress="deflate", predictor=3)
    rng = np.random.default_rng(1)
    with rasterio.open(path, "w", **profile) as dst:
        for row in range(0, 8000, 512):
            h = min(512, 8000 - row)
            dst.write((rng.random((h, 8000), dtype="float32") * 1000), 1, window=Window(0, row, 8000, h))
    return str(path)


@pytest.mark.slow
@pytest.mark.parametrize("method,crs,res,engine,mem_mb", [
    ("average", "EPSG:32632", 40, "numpy", 300), ("med", "EPSG:32632", 40, "numpy", 300),
    ("mode", "EPSG:32632", 20, "numpy", 300),
    # With room for numba (runtime.KERNELS_MB): the compiled kernels, numba's libraries included.
    ("average", "EPSG:32632", 40, "numpy", 420), ("mode", "EPSG:32632", 20, "numpy", 420),
    ("average", "EPSG:32632", 40, "gdal", 300), ("bilinear", "EPSG:3035", 40, "gdal", 300),
])
def test_tile_job_peak_rss_stays_below_its_mem_mb(tmp_path, big_source, method, crs, res, engine, mem_mb):
    config = {"target": {"crs": crs, "resolution": res}, "tile_size": 4096,
              "datasets": {"d": {"path": big_source, "method": method, "engine": engine}}}
    proc = subprocess.run([sys.executable, "-c", JOB, json.dumps(config), str(tmp_path / "t.tif"), str(mem_mb)],
                          capture_output=True, text=True, cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr
    figures = json.loads(proc.stdout.strip().splitlines()[-1])
    print(figures)
    # The tile's source region alone is 256 MB of float32 (and GDAL would need twice that at once).
    assert figures["pixels_read"] * 4 > 250e6
    assert figures["chunks"] > 1 and figures["engine"] == engine
    assert figures["compiled"] == (engine == "numpy" and mem_mb > 300), figures
    assert figures["peak_rss_mb"] <= mem_mb, figures


RESTART_SCRIPT = """
import os, sys
import numpy as np
from workflow_lib.runtime import RESTARTED_ENV, data_mb, job_logging, restart_after_compiling
with job_logging(sys.argv[1]):
    print("start", os.getpid(), bool(os.environ.get(RESTARTED_ENV)), flush=True)
    if not os.environ.get(RESTARTED_ENV):
        held = np.ones(600 * 2**20, np.uint8)  # what LLVM leaves behind after compiling kernels
        assert data_mb() > 600
    restart_after_compiling("batch b0 of dataset 'x'")
    print("went on", os.getpid(), round(data_mb()), flush=True)
"""


def test_a_job_whose_kernels_were_compiled_in_it_starts_again_and_keeps_its_log(tmp_path):
    """Compiling numba kernels that are not cached leaves a job's data segment about 700 MB large,
    more than its memory limit lets it keep (make run on a fresh checkout failed so: "can't start
    new thread"). The job then starts its own program again, once, in the same process (same PID),
    which loads the kernels from the cache, and its log keeps both starts."""
    script, log_file = tmp_path / "job.py", tmp_path / "job.log"
    script.write_text(RESTART_SCRIPT)
    out = subprocess.run([sys.executable, str(script), str(log_file)], capture_output=True, text=True, cwd=REPO,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.split()
    first_pid, second_pid = lines[1], lines[4]
    assert lines[0] == "start" and lines[2] == "False" and lines[3] == "start" and lines[5] == "True"
    assert first_pid == second_pid  # the same job process, as Snakemake and SLURM see it
    from workflow_lib.runtime import BASELINE_MB, COMPILE_SLACK_MB, KERNELS_MB

    assert lines[6:8] == ["went", "on"] and lines[8] == first_pid
    assert int(lines[9]) <= BASELINE_MB + KERNELS_MB + COMPILE_SLACK_MB
    assert out.stdout.count("went on") == 1  # the first start never went on
    text = log_file.read_text()
    assert "batch b0 of dataset 'x': numba compiled its kernels in this process" in text
    assert text.count("peak RSS") == 1  # the second start's last line, after the first start's


EXIT_SCRIPT = """
import sys
from workflow_lib.runtime import exit_job_process, job_logging
import logging
with job_logging(sys.argv[1]):
    for i in range(2000):  # more than a log file's buffer holds
        logging.getLogger("job").info("line %d", i)
    with open(sys.argv[2], "w") as f:
        f.write("done")
print("unflushed", end="")  # stdout is a pipe: block-buffered
sys.stderr.write("also unflushed")
exit_job_process()
print("never")
"""


def test_a_job_process_ends_at_once_with_its_log_and_streams_flushed(tmp_path):
    """A job's script ends with exit_job_process (os._exit: the interpreter's teardown only delays
    the next job); exit code 0, and nothing the job wrote is lost: its log to the last line, what
    it printed, and not a line after the call."""
    script, log_file, out_file = tmp_path / "job.py", tmp_path / "job.log", tmp_path / "out.txt"
    script.write_text(EXIT_SCRIPT)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # as Snakemake runs a script
    out = subprocess.run([sys.executable, str(script), str(log_file), str(out_file)], capture_output=True, text=True,
                         cwd=REPO, timeout=120, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "unflushed" and out.stderr == "also unflushed"
    lines = log_file.read_text().splitlines()
    assert len(lines) == 2001 and lines[1999].endswith("line 1999") and "peak RSS" in lines[2000]
    assert out_file.read_text() == "done"
