"""Stop a run in every way at several moments, resume it, and get exactly the uninterrupted result."""

import hashlib
import os
import signal
import time

import psutil
import pytest
import rasterio

from workflow_lib.status import StatusStore

from .test_workflow import finish, snakemake, start, synthetic_config, write_config

pytestmark = pytest.mark.integration


def digest(path):
    """Pixels and georeferencing of a raster, as one hash."""
    with rasterio.open(path) as src:
        h = hashlib.sha256()
        h.update(repr((src.crs.to_wkt(), tuple(src.transform), src.shape, src.count, src.dtypes, src.nodatavals,
                       src.descriptions)).encode())
        for i in range(1, src.count + 1):
            h.update(src.read(i).tobytes())
        return h.hexdigest()


def results_digests(workdir):
    root = workdir / "results"
    names = sorted(os.listdir(root / "mosaics"))
    return {**{f"mosaics/{n}": digest(root / "mosaics" / n) for n in names}, "stack.tif": digest(root / "stack.tif")}


def tiles(workdir):
    root = workdir / "results" / "tiles"
    if not root.exists():
        return {}
    return {f"{d}/{f}": os.stat(root / d / f).st_mtime_ns for d in os.listdir(root)
            for f in os.listdir(root / d) if f.endswith(".tif") and not f.startswith(".tmp-")}


def temporaries(workdir):
    return [os.path.join(d, f) for d, _, files in os.walk(workdir / "results") for f in files
            if f.startswith(".tmp-")]


def config(folder):
    cfg = synthetic_config(folder)
    cfg["tile_size"] = 16  # many short tiles, in batches of 6: the signals fall in the middle of batches
    cfg["tiles_per_job"] = 6
    return cfg


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("uninterrupted")
    write_config(workdir, config(workdir))
    snakemake(workdir, "--cores", "2", "--resources", "mem_mb=2000")
    return results_digests(workdir), set(tiles(workdir))


def wait_for(condition, proc, timeout=180):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        if condition():
            return True
        time.sleep(0.02)
    return False


def job_running(proc, script):
    try:
        return any(script in " ".join(c.cmdline()) for c in psutil.Process(proc.pid).children(recursive=True))
    except psutil.Error:
        return False


SIGNALS = {"SIGINT": signal.SIGINT, "SIGTERM": signal.SIGTERM, "SIGKILL": signal.SIGKILL}


@pytest.mark.parametrize("moment", ["tile jobs", "mosaic"])
@pytest.mark.parametrize("name", list(SIGNALS))
def test_stop_and_resume_gives_the_uninterrupted_result(tmp_path, reference, record, name, moment):
    reference, reference_tiles = reference
    # The inputs are made anew in this folder: same content, so the same results are expected.
    write_config(tmp_path, config(tmp_path))
    proc = start(tmp_path, "--cores", "2", "--resources", "mem_mb=2000")
    if moment == "tile jobs":
        hit = wait_for(lambda: len(tiles(tmp_path)) >= 8 and job_running(proc, "resample_batch"), proc)
    else:
        hit = wait_for(lambda: job_running(proc, ".mosaic.py"), proc)
    assert hit, "the moment to interrupt was not reached"
    stopped_at = time.monotonic()
    os.killpg(proc.pid, SIGNALS[name])
    out = finish(proc)
    stop_seconds = time.monotonic() - stopped_at
    for p in psutil.process_iter(["cmdline"]):  # nothing of the run may survive the stop
        assert str(tmp_path) not in " ".join(p.info["cmdline"] or []) or p.pid == os.getpid()
    # Complete before the stop: tiles whose jobs Snakemake saw finish (the status database records
    # it). A job still running at the stop may have written its file, yet Snakemake rightly marks
    # it incomplete and --rerun-incomplete makes it again.
    store = StatusStore(f"sqlite:///{tmp_path}/results/status.sqlite")
    finished = {f"{d}/{t}.tif" for d, t in store.query("SELECT dataset, tile FROM tiles WHERE status = 'done'")}
    on_disk = tiles(tmp_path)
    before = {t: m for t, m in on_disk.items() if t in finished}
    if name == "SIGTERM":
        assert "Will exit after finishing currently running jobs" in out, out
        failed = store.query("SELECT COUNT(*) FROM tiles WHERE status = 'failed'")[0][0]
        assert failed == 0, "SIGTERM lets running jobs finish: none fails"
    if name == "SIGKILL":
        snakemake(tmp_path, "--unlock")  # a killed run cannot remove its lock
    resumed = snakemake(tmp_path, "--cores", "2", "--resources", "mem_mb=2000", "--rerun-incomplete")
    text = resumed.stdout + resumed.stderr
    after = tiles(tmp_path)
    kept = sum(after[t] == m for t, m in before.items())
    record(f"interrupt {name:<7} during {moment:<9}: stopped in {stop_seconds:4.1f} s with {len(before):>3} "
           f"tiles done ({len(on_disk) - len(before)} more on disk, unfinished), {kept:>3} kept on resume, "
           f"{len(after) - kept:>3} made; results identical: "
           f"{results_digests(tmp_path) == reference}; temporaries left: {len(temporaries(tmp_path))}")
    assert "Nothing to be done" not in text or len(before) == len(after)
    assert kept == len(before), "tiles complete before the stop are not computed again"
    # Exactly the missing tiles were made: every tile file on disk at the stop (complete, since a
    # tile appears under its name only when whole) was kept, even if its job was cut short.
    assert {t: after[t] for t in on_disk} == on_disk
    assert set(after) == set(reference_tiles)
    assert results_digests(tmp_path) == reference
    assert temporaries(tmp_path) == []
