"""The run file's idea of a live run: the same process on this host, not merely the same id."""

import os
import socket

import psutil

from workflow_lib.controller.runfile import RunInfo, own_state, read_run, write_run
from workflow_lib.watchdog import Watchdog


def info(**changes):
    me = psutil.Process(os.getpid())
    base = dict(pid=me.pid, command=["--cores", "1"], host=socket.gethostname(), started_at=me.create_time(),
                run_id="abc", detached=True)
    base.update(changes)
    return RunInfo(**base)


def test_the_same_process_is_alive():
    assert info().alive()


def test_a_recycled_process_id_is_not_the_run():
    assert not info(started_at=psutil.Process(os.getpid()).create_time() - 3600).alive()


def test_a_process_that_is_gone_is_not_alive():
    assert not info(pid=2 ** 22 + 12345).alive()


def test_a_run_on_another_host_is_never_taken_for_dead():
    assert info(host="another-host", pid=2 ** 22 + 12345).alive()


def test_the_run_file_round_trips_and_a_damaged_one_proves_nothing(tmp_path):
    write_run(info(state="frozen"), str(tmp_path))
    assert read_run(str(tmp_path)).state == "frozen"
    (tmp_path / ".workflow" / "run.json").write_text("{not json")
    assert read_run(str(tmp_path)) is None


def test_the_watchdog_does_not_count_time_frozen(monkeypatch):
    """A process stopped for longer than stall_timeout wakes up with a large jump of the monotonic
    clock; that time is not the job's."""
    import workflow_lib.watchdog as wd

    now = [1000.0]
    monkeypatch.setattr(wd.time, "monotonic", lambda: now[0])
    fired = []
    dog = Watchdog(timeout=10, what="tile")
    monkeypatch.setattr(dog, "_fire", lambda idle: fired.append(idle))
    monkeypatch.setattr(dog._stop, "wait", lambda period: (now.__setitem__(0, now[0] + steps.pop(0)),
                                                          not steps)[1])
    steps = [1.0, 1.0, 3600.0, 1.0, 1.0]  # a wake-up an hour late: frozen
    dog._last = now[0]
    dog._watch()
    assert fired == []
    steps = [1.0] * 12  # twelve seconds of real silence: a stall
    dog._last = now[0]
    dog._watch()
    assert fired and fired[0] > 10


def test_the_slurm_jobs_of_a_run_are_those_of_its_own_section_of_the_log(tmp_path):
    from workflow_lib.controller.slurm import submitted_jobs

    log = tmp_path / "console.log"
    log.write_text(
        "\n=== run old on vm at 2026-12-01 10:00:00: snakemake\n"
        "Job 3 has been submitted with SLURM jobid 11 (log: x/11.log).\n"
        "\n=== run abc on vm at 2026-12-01 11:00:00: snakemake\n"
        "Job 3 has been submitted with SLURM jobid 20 (log: x/20.log).\n"
        "Job a-b has been submitted with SLURM jobid 21 (log: x/21.log).\n"
        "Job 3 has been submitted with SLURM jobid 20 (log: x/20.log).\n")
    assert submitted_jobs(info(log=str(log))) == ["20", "21"]
    assert submitted_jobs(info(log=str(log), run_id="unknown")) == []
    assert submitted_jobs(info(log=str(tmp_path / "missing.log"))) == []


def test_a_tile_cancelled_by_the_controller_is_no_failure(tmp_path):
    from workflow_lib.status.run import SILENT_END, cancellation

    silent = f"{SILENT_END} (killed by a signal or the out-of-memory killer?)"
    write_run(info(state="pausing"), str(tmp_path))
    assert cancellation(silent, own_state(str(tmp_path))) == "cancelled by pause before it started"
    assert cancellation("MemoryError: out of memory", own_state(str(tmp_path))) is None  # a real failure
    write_run(info(state="stopping"), str(tmp_path))
    assert cancellation("KeyboardInterrupt", own_state(str(tmp_path))) == "cancelled by stop"
    write_run(info(state="stopping", pid=2 ** 22 + 12345), str(tmp_path))  # another process's run
    assert cancellation(silent, own_state(str(tmp_path))) is None
    assert cancellation("slurmstepd: error: *** JOB 87 ON n1 CANCELLED AT 2026-12-02T04:30:43 ***",
                        own_state(str(tmp_path))) == "cancelled on SLURM"
    assert cancellation("slurmstepd: error: *** JOB 87 ON n1 CANCELLED AT 2026-12-02T04:30:43 DUE TO TIME LIMIT ***",
                        own_state(str(tmp_path))) is None  # out of runtime: a failure, retried with the resources asked


def test_stop_after_a_run_ended_says_how_it_ended(tmp_path, monkeypatch):
    """`stop` or `pause` after the run: not its stale "running" state, but finished or failed."""
    import pytest

    from workflow_lib.controller import control

    monkeypatch.chdir(tmp_path)
    log = tmp_path / "console.log"
    gone = info(pid=2 ** 22 + 12345, log=str(log))
    write_run(gone)
    for tail, outcome in (("12 of 12 steps (100%) done\nComplete log(s): x\n", "finished"),
                          ("Nothing to be done (all requested files are present and up to date).\n", "finished"),
                          ("Exiting because a job execution failed. Look above for error message\n", "failed"),
                          ("rule resample_batch:\n", "ended")):
        log.write_text("Building DAG of jobs...\n" + tail)
        with pytest.raises(control.ControlError) as err:
            control._require_live("stop")
        assert "nothing to stop: run abc (started " in str(err.value) and f") has {outcome} (" in str(err.value)
        assert "(running)" not in str(err.value)
