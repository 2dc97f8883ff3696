"""Work-arounds for Snakemake itself, applied by the Snakefile in Snakemake's main process.

Two of them replace code of Snakemake or of its SLURM plugin, reaching into their internals: each
is applied only to the version it was written for (the versions pyproject.toml pins), and says so
on the console, without applying, when another version is installed.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import signal
import sys
import threading
import time

# The versions the patches below were written for and tested with (tests/test_snakemake_fixes.py).
SNAKEMAKE_VERSION = "9.27.1"
SLURM_PLUGIN_VERSION = "2.8.0"


def installed_version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def written_for(package: str, version: str, patch: str, without: str) -> bool:
    """Whether ``package`` is installed at the ``version`` that ``patch`` was written for; if it is
    installed at another, say on the console that the patch is not applied and what that means."""
    found = installed_version(package)
    if found is None or found == version:
        return found is not None
    print(f"workflow_lib: {patch} was written for {package} {version}, but {found} is installed: it is not "
          f"applied ({without})", file=sys.stderr)
    return False


def graceful_sigterm_without_deadlock() -> bool:
    """Make SIGTERM's pause safe; True if applied.

    Snakemake 9.27's SIGTERM handler takes the scheduler's non-reentrant lock. A signal handler
    runs in the main thread, so a SIGTERM that lands while the main thread holds that lock (as it
    does whenever a job finishes) hangs the run forever; seen in CI. Setting the flag needs no
    lock, and waking the scheduler is left to another thread, which may wait for the lock
    without blocking the main one.
    """
    if not written_for("snakemake", SNAKEMAKE_VERSION, "the fix of SIGTERM's deadlock",
                       "a pause may hang if SIGTERM lands while a job finishes"):
        return False
    from snakemake.scheduling.job_scheduler import JobScheduler

    def exit_gracefully(self, *args):
        self._user_kill = "graceful"
        threading.Thread(target=self._open_jobs.release, name="sigterm", daemon=True).start()

    JobScheduler.exit_gracefully = exit_gracefully
    return True


def exit_without_waiting_for_the_rate_timer() -> bool:
    """Let Snakemake's process exit as soon as its run is over; True if applied.

    After every round of scheduling, Snakemake 9.27 starts a ``threading.Timer`` of the rate
    limit's timespan (``--max-jobs-per-timespan``, 1 s by default) that only wakes the scheduler.
    Such a timer is not a daemon thread, so the interpreter waits for the last one before it exits:
    up to a second after the last job, on every run (measured: 0.85 s of a 1,000-pixel run's 10 s).
    The same timer as a daemon thread wakes the scheduler exactly as before while the run goes on.
    """
    if not written_for("snakemake", SNAKEMAKE_VERSION, "the fix of the exit's wait for the rate timer",
                       "every run ends up to a second after its last job"):
        return False
    from snakemake.scheduling.job_scheduler import JobScheduler

    def _schedule_reevalutation(self, delay: int) -> None:
        timer = threading.Timer(delay, lambda: self._open_jobs.release())
        timer.daemon = True
        timer.start()

    JobScheduler._schedule_reevalutation = _schedule_reevalutation
    return True


def no_pandas_import_for_params() -> bool:
    """Let Snakemake's process start the first job without importing pandas; True if applied.

    Snakemake 9.27 imports pandas (and tries polars) in its own process to store a job's params
    for its script, and to record them in its metadata, only to ask whether a param is a pandas or
    polars object: 0.5 s of its process before the first job starts (measured). An object of a
    module that was never imported cannot exist, so the same question is asked of the modules
    already imported, and the answers are the same.
    """
    if not written_for("snakemake", SNAKEMAKE_VERSION, "the fix of the params' pandas import",
                       "the first job of every run starts 0.5 s later"):
        return False
    from snakemake.iocontainers import Params, Snakemake
    from snakemake.persistence import PersistenceBase

    def _safely_store_params(self, params) -> None:
        # Snakemake 9.27.1's Snakemake._safely_store_params, with its three imports replaced.
        pd, np, pl = (sys.modules.get(name) for name in ("pandas", "numpy", "polars"))
        self._params_store = Params(toclone=list(params))
        self._params_types = dict()
        for i, value in enumerate(params):
            if pd:
                if isinstance(value, pd.DataFrame):
                    self._params_store[i] = value.to_dict()
                    self._params_types[i] = "pd.DataFrame"
                elif isinstance(value, pd.Series):
                    self._params_store[i] = value.to_dict()
                    self._params_types[i] = "pd.Series"
            if np and isinstance(value, np.ndarray):
                self._params_store[i] = value.tolist()
                self._params_types[i] = "np.ndarray"
            if pl:
                if isinstance(value, pl.LazyFrame):
                    self._params_store[i] = value.collect().to_dict(as_series=False)
                    self._params_types[i] = "pl.LazyFrame"
                if isinstance(value, pl.DataFrame):
                    self._params_store[i] = value.to_dict(as_series=False)
                    self._params_types[i] = "pl.DataFrame"
                elif isinstance(value, pl.Series):
                    self._params_store[i] = {"name": value.name, "values": value.to_list()}
                    self._params_types[i] = "pl.Series"
        self._params_store._take_names(params._get_names())

    def _serialize_param(self):
        # The pandas serializer hashes pandas objects and hands every other value to the builtin one.
        return self._serialize_param_pandas if "pandas" in sys.modules else self._serialize_param_builtin

    Snakemake._safely_store_params = _safely_store_params
    PersistenceBase._serialize_param = property(_serialize_param)
    return True


def status_snapshot_on_sigusr1(url: str) -> None:
    """SIGUSR1 to Snakemake's process writes the status report (as `onegrid status`
    prints it) to its console, which the controller keeps in logs/run/console.log.

    The report is built in a thread: a signal handler runs in the main thread, which may be inside
    the scheduler or the status database when the signal lands.
    """
    from workflow_lib.status import StatusStore
    from workflow_lib.views.status import build_report, render

    def snapshot():
        try:
            with contextlib.closing(StatusStore(url)) as store:
                store.replay()
                text = render(build_report(store))
        except Exception as exc:  # a snapshot must never stop the run; say why it failed
            text = f"status snapshot failed: {type(exc).__name__}: {exc}"
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        sys.stderr.write(f"\n--- status snapshot {stamp} (SIGUSR1) ---\n{text}\n--- end of snapshot ---\n")
        sys.stderr.flush()

    signal.signal(signal.SIGUSR1, lambda signum, frame: threading.Thread(
        target=snapshot, name="status-snapshot", daemon=True).start())


def slurm_cancelled_by_user_is_cancelled() -> bool:
    """Let Snakemake see a SLURM job that someone cancelled as failed, not as running forever; True
    if applied (False also where the plugin is not installed).

    sacct reports such a job as ``CANCELLED by <uid>``; snakemake-executor-plugin-slurm 2.8.0
    compares the state with the exact word ``CANCELLED``, so the job stays "running" to it and the
    run never ends (measured on the CI's SLURM: a pause that cancels queued jobs hung for 15
    minutes until killed; the old Snakemake-Profiles/slurm had the same bug, fixed in its PR 22).
    Only the first word of a state is kept.
    """
    if not written_for("snakemake-executor-plugin-slurm", SLURM_PLUGIN_VERSION,
                       "the fix of SLURM jobs cancelled by a user",
                       "a run whose queued SLURM jobs are cancelled, by a pause or by hand, may never end"):
        return False
    import snakemake_executor_plugin_slurm as plugin

    original = getattr(plugin, "query_job_status", None)
    if original is None:
        print("workflow_lib: snakemake-executor-plugin-slurm has no query_job_status: the fix of SLURM jobs "
              "cancelled by a user is not applied", file=sys.stderr)
        return False
    if hasattr(original, "__wrapped_original__"):
        return True  # applied already

    async def query_job_status(command, logger):
        states, duration = await original(command, logger)
        if states is not None:
            states = {job: (state.split()[0] if state.strip() else state) for job, state in states.items()}
        return states, duration

    query_job_status.__wrapped_original__ = original
    plugin.query_job_status = query_job_status
    return True
