"""The controller's verbs on the synthetic example: run (detached or not), a second run refused,
pause and resume, freeze for a minute, stop, SIGKILL then resume without a manual step, a SIGUSR1
snapshot, and the smallest datasets first. Every interrupted run ends with the results of an
uninterrupted one."""

import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from workflow_lib.planning.plan import build_plan
from workflow_lib.config import validate_config
from workflow_lib.status import StatusStore

from .helpers import (REPO, SNAKEMAKE_ARGS, alive, console, control, interruptible_config, results_digests, run_info,
                      temporaries, tiles, wait_for_end, wait_until, write_config)


pytestmark = pytest.mark.integration

def prepare(workdir, **overrides):
    cfg = interruptible_config(workdir, **overrides)
    write_config(workdir, cfg)
    return cfg


def job_running(workdir):
    try:
        children = psutil.Process(run_info(workdir)["pid"]).children(recursive=True)
        return any("resample_batch" in " ".join(c.cmdline()) for c in children)
    except psutil.Error:
        return False


def mid_run(workdir):
    wait_until(lambda: len(tiles(workdir)) >= 8 and job_running(workdir), what="tile jobs to be running")


def nothing_left(workdir):
    for p in psutil.process_iter(["cmdline", "cwd"]):
        try:
            if p.info["cwd"] == str(workdir) and p.pid != os.getpid():
                return False
        except psutil.Error:
            continue
    return True


def test_detached_run_completes_and_logs_show_it(uninterrupted_run):
    workdir = uninterrupted_run.workdir
    assert "started run" in uninterrupted_run.started.stdout
    assert "Finished job" in console(workdir) or "steps (100%) done" in console(workdir)
    assert (workdir / "results" / "stack.tif").exists()
    logs = control(workdir, "logs")
    assert "100%) done" in logs.stdout
    # The run's id in the status database is the one the controller printed (issue 36).
    runs = StatusStore(f"sqlite:///{workdir}/results/status.sqlite").query("SELECT id FROM runs")
    assert (uninterrupted_run.info["run_id"],) in runs, runs


def test_a_second_run_beside_a_live_one_is_refused(uninterrupted_run):
    second = uninterrupted_run.second
    assert second.returncode == 1
    assert "a run is already going in this folder" in second.stderr
    assert str(uninterrupted_run.info["pid"]) in second.stderr
    assert "Traceback" not in second.stderr


def test_pause_then_resume_gives_the_uninterrupted_result(tmp_path, uninterrupted_run, record):
    prepare(tmp_path)
    control(tmp_path, "run", "--detach", "--", *SNAKEMAKE_ARGS)
    mid_run(tmp_path)
    paused = control(tmp_path, "pause", "--wait")
    assert "paused" in paused.stdout
    store = StatusStore(f"sqlite:///{tmp_path}/results/status.sqlite")
    assert store.query("SELECT COUNT(*) FROM tiles WHERE status = 'failed'")[0][0] == 0
    done_at_pause = len(tiles(tmp_path))
    assert not (tmp_path / "results" / "stack.tif").exists()
    control(tmp_path, "resume", "--detach")
    wait_for_end(tmp_path)
    record(f"controller: pause with {done_at_pause} tiles on disk, resume: identical "
           f"{results_digests(tmp_path) == uninterrupted_run.digests}")
    assert results_digests(tmp_path) == uninterrupted_run.digests
    assert temporaries(tmp_path) == []


def test_a_minute_frozen_fails_no_job_and_changes_nothing(tmp_path, uninterrupted_run, record):
    # stall_timeout 20 s: a watchdog that took the frozen minute for a hang would end the jobs.
    prepare(tmp_path, stall_timeout=20)
    control(tmp_path, "run", "--detach", "--", *SNAKEMAKE_ARGS)
    mid_run(tmp_path)
    control(tmp_path, "pause", "--freeze")
    pid = run_info(tmp_path)["pid"]
    frozen_tiles = tiles(tmp_path)
    time.sleep(60)
    assert psutil.Process(pid).status() == psutil.STATUS_STOPPED
    assert tiles(tmp_path) == frozen_tiles, "nothing moves while frozen"
    status = control(tmp_path, "status").stdout
    assert "controller: frozen" in status and "STALLED" not in status, status
    control(tmp_path, "resume")
    wait_for_end(tmp_path)
    store = StatusStore(f"sqlite:///{tmp_path}/results/status.sqlite")
    failed = store.query("SELECT COUNT(*) FROM tiles WHERE status = 'failed'")[0][0]
    record(f"controller: frozen 60 s with {len(frozen_tiles)} tiles on disk; failed jobs {failed}; identical "
           f"{results_digests(tmp_path) == uninterrupted_run.digests}")
    assert failed == 0
    assert "StallError" not in console(tmp_path)
    assert results_digests(tmp_path) == uninterrupted_run.digests


def test_stop_leaves_no_temporary_file_and_resume_completes(tmp_path, uninterrupted_run):
    prepare(tmp_path)
    control(tmp_path, "run", "--detach", "--", *SNAKEMAKE_ARGS)
    mid_run(tmp_path)
    stopped = control(tmp_path, "stop")
    assert "stopped" in stopped.stdout
    assert not alive(tmp_path)
    wait_until(lambda: nothing_left(tmp_path), 30, "the run's jobs to end")
    assert temporaries(tmp_path) == []
    # The cancelled tiles are still to make, not failures; the run is recorded as stopped.
    store = StatusStore(f"sqlite:///{tmp_path}/results/status.sqlite")
    store.replay()
    assert store.query("SELECT COUNT(*) FROM tiles WHERE status IN ('failed', 'running')") == [(0,)]
    assert store.query("SELECT status FROM runs") == [("stopped",)]
    control(tmp_path, "resume", "--detach")
    wait_for_end(tmp_path)
    assert results_digests(tmp_path) == uninterrupted_run.digests


def test_sigkill_of_the_whole_run_then_resume_needs_no_manual_step(tmp_path, uninterrupted_run, record):
    prepare(tmp_path)
    control(tmp_path, "run", "--detach", "--", *SNAKEMAKE_ARGS)
    mid_run(tmp_path)
    os.killpg(run_info(tmp_path)["pid"], signal.SIGKILL)
    wait_until(lambda: not alive(tmp_path), 30, "the kill")
    assert os.listdir(tmp_path / ".snakemake" / "locks"), "a killed Snakemake leaves its lock"
    resumed = control(tmp_path, "resume", "--detach")
    assert "removing the stale lock" in resumed.stdout, resumed.stdout
    wait_for_end(tmp_path)
    record(f"controller: SIGKILL of the process group, resume: {resumed.stdout.splitlines()[0]}")
    assert results_digests(tmp_path) == uninterrupted_run.digests
    assert temporaries(tmp_path) == []


def test_a_live_run_is_never_unlocked(tmp_path):
    prepare(tmp_path)
    control(tmp_path, "run", "--detach", "--", *SNAKEMAKE_ARGS)
    wait_until(lambda: (tmp_path / ".snakemake" / "locks").is_dir()
               and os.listdir(tmp_path / ".snakemake" / "locks"), 120, "the lock")
    again = control(tmp_path, "resume", check=False)
    assert again.returncode == 1 and "still going" in again.stderr
    assert os.listdir(tmp_path / ".snakemake" / "locks")
    control(tmp_path, "stop")


def test_sigusr1_writes_a_status_snapshot_into_the_log_and_ctrl_c_stops(tmp_path):
    prepare(tmp_path)
    fg = subprocess.Popen([sys.executable, "-m", "workflow_lib", "run", "--", *SNAKEMAKE_ARGS], cwd=tmp_path,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_until(lambda: (tmp_path / ".workflow" / "run.json").exists() and len(tiles(tmp_path)) >= 4, 120,
               "tiles")
    fg.send_signal(signal.SIGUSR1)  # to the controller, which passes it on
    wait_until(lambda: "--- status snapshot" in console(tmp_path), 30, "the snapshot")
    os.kill(run_info(tmp_path)["pid"], signal.SIGUSR1)  # straight to Snakemake
    wait_until(lambda: console(tmp_path).count("--- status snapshot") >= 2, 30, "the second snapshot")
    text = console(tmp_path)
    snapshot = text[text.index("--- status snapshot"):text.index("--- end of snapshot")]
    assert "dataset" in snapshot and "progress" in snapshot and "dem" in snapshot, snapshot
    fg.send_signal(signal.SIGINT)  # Ctrl-C in the controller's terminal: stop now
    out, _ = fg.communicate(timeout=120)
    assert not alive(tmp_path)
    assert "status snapshot" in out  # the foreground controller shows the console
    wait_until(lambda: nothing_left(tmp_path), 30, "the run's jobs to end")
    assert temporaries(tmp_path) == []


def test_smallest_datasets_first(tmp_path, record):
    cfg = prepare(tmp_path)
    plan = build_plan(validate_config(dict(cfg)))
    expected = sorted(plan.datasets, key=plan.estimated_work)
    assert expected != list(cfg["datasets"]), "the example must tell the two orders apart"
    control(tmp_path, "run", "--", "--snakefile", os.path.join(REPO, "Snakefile"), "--cores", "1", timeout=900)
    mosaics = tmp_path / "results" / "mosaics"
    finished = sorted(cfg["datasets"], key=lambda n: os.stat(mosaics / f"{n}.tif").st_mtime_ns)
    record(f"controller: mosaics finished in the order {finished} (estimated work: "
           f"{ {n: int(plan.estimated_work(n)) for n in plan.datasets} })")
    assert finished == expected
    assert plan.priorities("config") == {n: len(cfg["datasets"]) - i for i, n in enumerate(cfg["datasets"])}


def test_a_stop_waits_for_slurm_to_let_its_cancelled_jobs_go(monkeypatch):
    """A cancelled SLURM job stays COMPLETING while SLURM kills its processes: stop returns once
    SLURM lists none of the run's jobs, or says which it still lists after its timeout."""
    from workflow_lib.controller import slurm

    listed = [{"560": ("COMPLETING", "None"), "561": ("COMPLETING", "None")}, {"561": ("COMPLETING", "None")}, {}]
    looks = []
    monkeypatch.setattr(slurm, "submitted_jobs", lambda info: ["560", "561", "562"])

    def job_states(ids):
        looks.append(ids)
        return listed[min(len(looks), len(listed)) - 1]

    monkeypatch.setattr(slurm, "job_states", job_states)
    assert slurm.wait_until_gone(None, timeout=10, poll=0.01) == []
    assert looks == [["560", "561", "562"]] * 3
    # One that never goes: given up after the timeout, and named.
    monkeypatch.setattr(slurm, "job_states", lambda ids: {"561": ("COMPLETING", "None")})
    started = time.monotonic()
    assert slurm.wait_until_gone(None, timeout=0.2, poll=0.01) == ["561"]
    assert 0.2 <= time.monotonic() - started < 5
