"""The status database as a run fills it: rows that match the files, a PostgreSQL outage in the
middle of a run, failed and killed jobs."""

import copy
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import psutil
import pytest
from affine import Affine

from workflow_lib.status import StatusStore

from .helpers import (REPO, finish, read_band, run_tiles_and_mosaics, smooth_field, snakemake, start, synthetic_config,
                      write_config, write_raster)

pytestmark = pytest.mark.integration


def status_json(workdir, url=None):
    cmd = [sys.executable, "-m", "workflow_lib", "status", "--json"] + (["--db", url] if url else [])
    proc = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": REPO})
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def tile_files(workdir):
    root = workdir / "results" / "tiles"
    return {(d, f[:-4]) for d in os.listdir(root) for f in os.listdir(root / d) if f.endswith(".tif")}


def test_rows_of_a_full_run_match_the_files_it_produced(tmp_path):
    write_config(tmp_path, synthetic_config(tmp_path))
    snakemake(tmp_path, "--cores", "2", "--resources", "mem_mb=2000")
    store = StatusStore(f"sqlite:///{tmp_path}/results/status.sqlite")
    rows = store.query("SELECT dataset, tile, status, attempt, peak_rss_mb, engine, seconds, host FROM tiles")
    assert {(d, t) for d, t, *_ in rows} == tile_files(tmp_path)
    assert {r[2] for r in rows} == {"done"} and {r[3] for r in rows} == {1}
    assert all(r[4] and 50 < r[4] < 2000 and r[6] > 0 and r[7] for r in rows)
    # dem and landcover: 10 m onto 40 m in one CRS, aligned; temperature comes from EPSG:4326.
    assert {r[0]: r[5] for r in rows} == {"dem": "numpy-blocks", "landcover": "numpy-blocks",
                                          "temperature": "gdal-warp"}
    assert store.query("SELECT status FROM runs") == [("finished",)]
    assert store.query("SELECT COUNT(*) FROM datasets WHERE status = 'registered'") == [(3,)]
    kinds = dict(store.query("SELECT kind, COUNT(*) FROM events GROUP BY kind"))
    assert kinds["tile_started"] == kinds["tile_finished"] == kinds["tile_measured"] == len(rows)
    report = status_json(tmp_path)
    assert report["complete"] and [d["name"] for d in report["datasets"]] == ["dem", "landcover", "temperature"]
    text = subprocess.run([sys.executable, "-m", "workflow_lib", "status"], cwd=tmp_path, capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": REPO}).stdout
    assert "all datasets complete" in text and "[####################]" in text


def test_postgresql_stopped_in_the_middle_of_a_run_loses_no_event(tmp_path, pg_cluster, record):
    url = pg_cluster.new_database()
    config = synthetic_config(tmp_path)
    config["tile_size"] = 24  # more, shorter jobs: the outage falls in the middle of them
    write_config(tmp_path, config)
    proc = start(tmp_path, "--cores", "2", "--resources", "mem_mb=2000",
                 env={**os.environ, "WORKFLOW_STATUS_DB": url})
    tiles_root = tmp_path / "results" / "tiles"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (not tiles_root.exists() or len(tile_files(tmp_path)) < 5):
        time.sleep(0.2)
    pg_cluster.stop()
    done_at_stop = len(tile_files(tmp_path))
    time.sleep(4)
    pg_cluster.start()
    out = finish(proc)
    assert proc.returncode == 0, out
    status_json(tmp_path, url)  # the status command replays whatever is still spooled
    store = StatusStore(url)
    files = tile_files(tmp_path)
    kinds = dict(store.query("SELECT kind, COUNT(*) FROM events GROUP BY kind"))
    rows = store.query("SELECT status, COUNT(*) FROM tiles GROUP BY status")
    record(f"status postgresql stopped 4 s mid-run ({done_at_stop}/{len(files)} tiles done at the stop): "
           f"events {kinds}, tiles {rows}")
    assert kinds["tile_started"] == kinds["tile_finished"] == kinds["tile_measured"] == len(files)
    assert rows == [("done", len(files))]
    assert store.query("SELECT status FROM runs") == [("finished",)]
    said = [p for p in (tmp_path / "logs").rglob("*.log") if "unreachable" in p.read_text()]
    assert said, "jobs that ran during the outage say so in their logs"


def test_failed_and_killed_tile_jobs_are_recorded_as_failed_with_their_message(tmp_path):
    # A raster whose header is fine and whose pixel data is corrupt: its tile jobs fail on read.
    path = tmp_path / "corrupt.tif"
    write_raster(path, smooth_field(512, 512), "EPSG:32632", Affine(10, 0, 500000, 0, -10, 5200000), -9999.0,
                 blockxsize=256, blockysize=256)
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.seek(size // 3)
        f.write(b"\x00\xff" * (size // 4))
    config = synthetic_config(tmp_path)
    config["datasets"]["corrupt"] = {"path": str(path), "method": "average"}
    write_config(tmp_path, config)
    proc = snakemake(tmp_path, "--cores", "2", "--keep-going", check=False)
    assert proc.returncode != 0
    store = StatusStore(f"sqlite:///{tmp_path}/results/status.sqlite")
    failed = store.query("SELECT tile, error FROM tiles WHERE dataset = 'corrupt' AND status = 'failed'")
    assert failed, store.query("SELECT * FROM tiles WHERE dataset = 'corrupt'")
    assert all("dataset 'corrupt'" in e and "corrupt.tif" in e for _, e in failed), failed
    # --keep-going: the other datasets still complete.
    for name in ("dem", "landcover", "temperature"):
        assert (tmp_path / "results" / "mosaics" / f"{name}.tif").exists()
    assert store.query("SELECT status FROM runs") == [("failed",)]


def test_batch_job_killed_with_sigkill_is_recorded_as_failed(tmp_path):
    """The tile a batch was making when it was killed failed; the tiles it had not started are still
    pending. Its input's pixels sit behind a named pipe that nobody writes, so the first tile stays
    running until the kill."""
    from .helpers import STALLING_VRT

    os.mkfifo(tmp_path / "pipe.tif")
    (tmp_path / "stalling.vrt").write_text(STALLING_VRT)
    write_config(tmp_path, {"target": {"crs": "EPSG:32632", "resolution": 40}, "tile_size": 32, "tiles_per_job": 16,
                            "datasets": {"stuck": {"path": str(tmp_path / "stalling.vrt"), "method": "average"}}})
    proc = start(tmp_path, "--cores", "1", "--keep-going")
    store = StatusStore(f"sqlite:///{tmp_path}/results/status.sqlite")
    victim = None
    deadline = time.monotonic() + 120
    while victim is None and time.monotonic() < deadline:
        for child in psutil.Process(proc.pid).children(recursive=True):
            try:
                if any("resample_batch" in part for part in child.cmdline()) and \
                        store.query("SELECT COUNT(*) FROM tiles WHERE status = 'running'") == [(1,)]:
                    victim = child
                    break
            except psutil.Error:
                continue
        time.sleep(0.1)
    assert victim is not None, "no batch job seen making a tile"
    victim.send_signal(signal.SIGKILL)
    out = finish(proc)
    failed = store.query("SELECT dataset, tile, error, batch FROM tiles WHERE status = 'failed'")
    assert len(failed) == 1, (failed, out)
    assert failed[0][2].startswith("the job ended without an error message (killed by a signal"), failed
    assert failed[0][3] == "b0000_0000_4x4"
    assert dict(store.query("SELECT status, COUNT(*) FROM tiles GROUP BY status")) == {"failed": 1, "pending": 15}
    assert store.query("SELECT status FROM runs") == [("failed",)]


def test_run_stopped_by_sigterm_is_recorded_as_failed_with_no_tile_left_running(tmp_path):
    config = synthetic_config(tmp_path)
    config["tile_size"] = 16
    write_config(tmp_path, config)
    proc = start(tmp_path, "--cores", "2")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (not (tmp_path / "results" / "tiles").exists()
                                           or len(tile_files(tmp_path)) < 3):
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)  # to snakemake alone, as `kill PID` does
    out = finish(proc)
    store = StatusStore(f"sqlite:///{tmp_path}/results/status.sqlite")
    assert store.query("SELECT status FROM runs") == [("failed",)], out
    assert store.query("SELECT COUNT(*) FROM tiles WHERE status = 'running'") == [(0,)]
    done = store.query("SELECT dataset, tile FROM tiles WHERE status = 'done'")
    assert set(done) <= tile_files(tmp_path)


def test_tile_job_out_of_memory_is_retried_with_more_memory_and_succeeds(tmp_path):
    """memory.enforce makes a job's mem_mb a hard limit on its data memory. The dem is one deflate
    strip of 8,000 x 4,000 float32 (128 MB decoded), which GDAL must decode whole to read any window
    of it, whatever chunk size the job plans: with the smallest tile_mb allowed (256 MB) the tile
    jobs fail with an out-of-memory error that says so, and the retry (512 MB, as mem_mb grows with
    the attempt) succeeds with the same pixels as an unconstrained run."""
    config = synthetic_config(tmp_path)
    config["tile_size"] = 256
    # Rounded values: the strip compresses to a few MB.
    config["datasets"]["dem"]["path"] = write_raster(tmp_path / "dem.tif", np.round(smooth_field(8000, 4000)),
                                                     "EPSG:32632", Affine(10, 0, 500000, 0, -10, 5200000), -9999.0,
                                                     tiled=False, blockxsize=None, blockysize=8000)
    config["datasets"]["dem"]["engine"] = "gdal"
    reference = copy.deepcopy(config)  # the same inputs, without the memory limit
    config["memory"] = {"tile_mb": 256}
    write_config(tmp_path, config)
    proc = snakemake(tmp_path, "--cores", "2", "--retries", "1")
    assert "ran out of memory: its limit is 256 MB (mem_mb)" in proc.stdout + proc.stderr
    store = StatusStore(f"sqlite:///{tmp_path}/results/status.sqlite")
    failures = store.query("SELECT dataset, tile, payload FROM events WHERE kind = 'tile_failed'")
    assert failures and all("ran out of memory: its limit is 256 MB" in json.loads(p)["error"]
                            for *_, p in failures), failures
    rows = store.query("SELECT dataset, tile, status, attempt FROM tiles")
    assert {(d, t) for d, t, *_ in rows} == tile_files(tmp_path) and {r[2] for r in rows} == {"done"}
    # Exactly the tiles that ran out of memory were run a second time, and only those. Under a tight
    # limit GDAL may also fail an allocation without checking it and die of SIGSEGV: then the tiles
    # its job was making had no tile_failed event, but started and never finished in their first
    # job, and its batch_ended event says so.
    events = store.query("SELECT dataset, tile, kind, pid FROM events WHERE tile IS NOT NULL ORDER BY at")
    first_job = {}
    for d, t, kind, pid in events:
        if kind == "tile_started":
            first_job.setdefault((d, t), pid)
    finished_first = {(d, t) for d, t, kind, pid in events if kind == "tile_finished" and first_job[(d, t)] == pid}
    crashed = {key for key in first_job if key not in finished_first} - {(d, t) for d, t, _ in failures}
    assert {(d, t) for d, t, _, a in rows if a == 2} == {(d, t) for d, t, _ in failures} | crashed
    if crashed:
        assert store.query("SELECT COUNT(*) FROM events WHERE kind = 'batch_ended'")[0][0] >= 1
    assert {r[3] for r in rows} <= {1, 2}
    # Each tile's second attempt ran under 512 MB and stayed inside it.
    assert all(rss <= 512 for (rss,) in store.query("SELECT peak_rss_mb FROM tiles")), store.query(
        "SELECT tile, peak_rss_mb FROM tiles")
    _, expected = run_tiles_and_mosaics(reference, tmp_path / "reference")
    for name, path in expected.items():
        got, want = read_band(str(tmp_path / "results" / "mosaics" / f"{name}.tif")), read_band(path)
        # Real outputs of integer inputs have NaN as nodata now (temperature: int16 to float32).
        assert np.array_equal(got, want, equal_nan=got.dtype.kind == "f"), name
