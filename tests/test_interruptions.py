"""Stop a run in every way at several moments, resume it, and get exactly the uninterrupted result."""

import os
import signal
import time

import psutil
import pytest

from workflow_lib.status import StatusStore

from .helpers import finish, interruptible_config, results_digests, snakemake, start, temporaries, tiles, write_config

pytestmark = pytest.mark.integration


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
def test_stop_and_resume_gives_the_uninterrupted_result(tmp_path, uninterrupted_run, record, name, moment):
    reference, reference_tiles = uninterrupted_run.digests, uninterrupted_run.tiles
    # The inputs are made anew in this folder: same content, so the same results are expected.
    write_config(tmp_path, interruptible_config(tmp_path))
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
    # The statistics too, to the last bit (each batch merges its tiles' figures in tile order).
    for path in sorted((uninterrupted_run.workdir / "results" / "statistics").iterdir()):
        assert (tmp_path / "results" / "statistics" / path.name).read_text() == path.read_text(), path.name
