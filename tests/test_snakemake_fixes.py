"""The patches of Snakemake and of its SLURM plugin: what each fixes, and that each applies only to
the version it was written for (and says so otherwise)."""

import asyncio
import re
import subprocess
import sys
import threading
import time

import pytest
from snakemake.scheduling.job_scheduler import JobScheduler

from workflow_lib import snakemake_fixes
from workflow_lib.snakemake_fixes import (exit_without_waiting_for_the_rate_timer, graceful_sigterm_without_deadlock,
                                         no_pandas_import_for_params, slurm_cancelled_by_user_is_cancelled)
from workflow_lib.status.run import BATCH_RULE, REGISTER_RULE

from .helpers import REPO


class Scheduler:
    """What JobScheduler.exit_gracefully touches of a scheduler."""

    def __init__(self):
        self._lock = threading.Lock()
        self._open_jobs = threading.Semaphore(0)
        self._user_kill = None


def handler_returns_while_the_lock_is_held(exit_gracefully, scheduler) -> bool:
    """Call the SIGTERM handler as a signal does: in the thread that holds the scheduler's lock
    (here another thread stands for it, holding the lock as the main thread does when a job ends)."""
    done = threading.Event()
    with scheduler._lock:
        thread = threading.Thread(target=lambda: (exit_gracefully(scheduler), done.set()), daemon=True)
        thread.start()
        returned = done.wait(2.0)
    thread.join(5)
    return returned


def test_sigterm_while_the_scheduler_holds_its_lock_pauses_instead_of_hanging(monkeypatch):
    original = JobScheduler.exit_gracefully
    # Snakemake's own handler waits for the lock: while the main thread holds it, forever.
    assert not handler_returns_while_the_lock_is_held(original, Scheduler())
    monkeypatch.setattr(JobScheduler, "exit_gracefully", original)  # restored after the test
    assert graceful_sigterm_without_deadlock()
    scheduler = Scheduler()
    assert handler_returns_while_the_lock_is_held(JobScheduler.exit_gracefully, scheduler)
    assert scheduler._user_kill == "graceful"  # no new job starts
    assert scheduler._open_jobs.acquire(timeout=5)  # and the scheduler is woken to see it


# A process whose scheduler has just started its rate timer (of 2 s), then ends its script.
RATE_TIMER_EXIT = """
import sys, threading, time
from snakemake.scheduling.job_scheduler import JobScheduler
from workflow_lib.snakemake_fixes import exit_without_waiting_for_the_rate_timer
if sys.argv[1] == "patched":
    assert exit_without_waiting_for_the_rate_timer()
class Scheduler:
    _open_jobs = threading.Semaphore(0)
JobScheduler._schedule_reevalutation(Scheduler(), 2)
print(time.monotonic())
"""


def seconds_to_exit(variant: str) -> float:
    """From the end of the script to the end of its process (one monotonic clock for both)."""
    done = subprocess.run([sys.executable, "-c", RATE_TIMER_EXIT, variant], check=True, cwd=REPO, timeout=60,
                          capture_output=True, text=True)
    return time.monotonic() - float(done.stdout)


def test_snakemake_exits_without_waiting_for_its_rate_timer(monkeypatch):
    # Unpatched, the process waits for the timer before it exits; patched, it exits at once.
    assert seconds_to_exit("unpatched") > 1.5
    assert seconds_to_exit("patched") < 1.0
    # And the timer still wakes the scheduler when it fires.
    monkeypatch.setattr(JobScheduler, "_schedule_reevalutation", JobScheduler._schedule_reevalutation)
    assert exit_without_waiting_for_the_rate_timer()
    scheduler = Scheduler()
    JobScheduler._schedule_reevalutation(scheduler, 0.05)
    assert not scheduler._open_jobs.acquire(timeout=0.01)
    assert scheduler._open_jobs.acquire(timeout=5)


PARAMS_WITHOUT_PANDAS = """
import sys
import numpy as np
from snakemake.iocontainers import Params, Snakemake
from snakemake.persistence import PersistenceBase
from workflow_lib.snakemake_fixes import no_pandas_import_for_params
assert "pandas" not in sys.modules
original = Snakemake._safely_store_params
assert no_pandas_import_for_params()
class Persistence(PersistenceBase):  # what _serialize_param needs of Snakemake's metadata store
    pass
Persistence.__abstractmethods__ = frozenset()
job, persistence = Snakemake.__new__(Snakemake), Persistence.__new__(Persistence)
job._safely_store_params(Params(toclone=[3, "a", np.arange(3)]))
stored = list(job.params)
assert stored[:2] == [3, "a"] and stored[2].tolist() == [0, 1, 2] and job._params_types == {2: "np.ndarray"}
assert persistence._serialize_param(7) == "7"
print("pandas imported" if "pandas" in sys.modules else "pandas not imported")
original(job, Params(toclone=[3]))  # Snakemake's own
print("pandas imported" if "pandas" in sys.modules else "pandas not imported")
import pandas as pd
job._safely_store_params(Params(toclone=[pd.Series([1.5])]))  # once imported, its objects are stored as before
assert job._params_types == {0: "pd.Series"} and isinstance(job.params[0], pd.Series)
assert persistence._serialize_param(pd.Series([1.5])) == persistence._serialize_param_pandas(pd.Series([1.5]))
"""


def test_snakemake_starts_a_job_without_importing_pandas():
    """Snakemake imports pandas in its own process to store a script job's params (0.5 s before
    the first job); patched, it stores the same params without, and pandas objects as before."""
    done = subprocess.run([sys.executable, "-c", PARAMS_WITHOUT_PANDAS], capture_output=True, text=True, cwd=REPO,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:2] == ["pandas not imported", "pandas imported"], done.stdout


def test_a_patch_is_not_applied_to_another_version_and_says_so(monkeypatch, capsys):
    original = JobScheduler.exit_gracefully
    monkeypatch.setattr(JobScheduler, "exit_gracefully", original)
    monkeypatch.setattr(snakemake_fixes, "installed_version", lambda package: "99.0.0")
    assert not graceful_sigterm_without_deadlock()
    assert JobScheduler.exit_gracefully is original
    assert not slurm_cancelled_by_user_is_cancelled()
    assert not exit_without_waiting_for_the_rate_timer()
    assert not no_pandas_import_for_params()
    said = capsys.readouterr().err
    assert "written for snakemake 9.27.1, but 99.0.0 is installed: it is not applied" in said
    assert "written for snakemake-executor-plugin-slurm 2.8.0, but 99.0.0 is installed" in said


def test_the_patches_are_written_for_the_pinned_versions():
    with open(f"{REPO}/pyproject.toml") as f:
        pins = f.read()
    assert f'"snakemake=={snakemake_fixes.SNAKEMAKE_VERSION}"' in pins
    assert f'"snakemake-executor-plugin-slurm=={snakemake_fixes.SLURM_PLUGIN_VERSION}"' in pins


def test_the_rules_the_status_logger_watches_exist():
    rules = set()
    for name in ("register.smk", "batches.smk"):
        with open(f"{REPO}/rules/{name}") as f:
            rules |= set(re.findall(r"^rule (\w+):", f.read(), re.M))
    assert {BATCH_RULE, REGISTER_RULE} <= rules


def test_a_slurm_job_cancelled_by_someone_is_cancelled_to_snakemake():
    """sacct says "CANCELLED by 0"; the SLURM plugin would wait for such a job forever."""
    plugin = pytest.importorskip("snakemake_executor_plugin_slurm")
    original = plugin.query_job_status

    async def sacct_says(command, logger):
        return {"7": "CANCELLED by 0", "8": "COMPLETED", "9": "RUNNING"}, 0.01

    try:
        plugin.query_job_status = sacct_says
        assert slurm_cancelled_by_user_is_cancelled()
        assert slurm_cancelled_by_user_is_cancelled()  # applied twice: still one wrapper
        states, _ = asyncio.run(plugin.query_job_status("sacct ...", None))
        assert states == {"7": "CANCELLED", "8": "COMPLETED", "9": "RUNNING"}
        assert plugin.query_job_status.__wrapped_original__ is sacct_says
    finally:
        plugin.query_job_status = original
