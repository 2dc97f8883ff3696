"""The run file's idea of a live run: the same process on this host, not merely the same id."""

import os
import socket

import psutil

from workflow_lib.controller.runfile import RunInfo, read_run, write_run
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
