"""Work-arounds for Snakemake itself, applied by the Snakefile in Snakemake's main process."""

from __future__ import annotations

import threading


def graceful_sigterm_without_deadlock() -> None:
    """Make SIGTERM's pause safe.

    Snakemake 9.27's SIGTERM handler takes the scheduler's non-reentrant lock. A signal handler
    runs in the main thread, so a SIGTERM that lands while the main thread holds that lock (as it
    does whenever a job finishes) hangs the run forever; seen in CI. Setting the flag needs no
    lock, and waking the scheduler is left to another thread, which may wait for the lock
    without blocking the main one.
    """
    from snakemake.scheduling.job_scheduler import JobScheduler

    def exit_gracefully(self, *args):
        self._user_kill = "graceful"
        threading.Thread(target=self._open_jobs.release, name="sigterm", daemon=True).start()

    JobScheduler.exit_gracefully = exit_gracefully


def status_snapshot_on_sigusr1(url: str) -> None:
    """SIGUSR1 to Snakemake's process writes the status report (as `python -m workflow_lib status`
    prints it) to its console, which the controller keeps in logs/run/console.log.

    The report is built in a thread: a signal handler runs in the main thread, which may be inside
    the scheduler or the status database when the signal lands.
    """
    import signal
    import sys
    import time

    def snapshot():
        from workflow_lib.status import StatusStore
        from workflow_lib.views.status import build_report, render

        try:
            store = StatusStore(url)
            store.replay()
            text = render(build_report(store))
        except Exception as exc:  # a snapshot must never stop the run; say why it failed
            text = f"status snapshot failed: {type(exc).__name__}: {exc}"
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        sys.stderr.write(f"\n--- status snapshot {stamp} (SIGUSR1) ---\n{text}\n--- end of snapshot ---\n")
        sys.stderr.flush()

    signal.signal(signal.SIGUSR1, lambda signum, frame: threading.Thread(
        target=snapshot, name="status-snapshot", daemon=True).start())


def slurm_cancelled_by_user_is_cancelled() -> None:
    """Let Snakemake see a SLURM job that someone cancelled as failed, not as running forever.

    sacct reports such a job as ``CANCELLED by <uid>``; snakemake-executor-plugin-slurm 2.8.0
    compares the state with the exact word ``CANCELLED``, so the job stays "running" to it and the
    run never ends (measured on the CI's SLURM: a pause that cancels queued jobs hung for 15
    minutes until killed; the old Snakemake-Profiles/slurm had the same bug, fixed in its PR 22).
    Only the first word of a state is kept. Nothing happens where the plugin is not installed.
    """
    try:
        import snakemake_executor_plugin_slurm as plugin
    except ImportError:
        return
    original = getattr(plugin, "query_job_status", None)
    if original is None or hasattr(original, "__wrapped_original__"):
        return  # not this plugin's layout, or patched already

    async def query_job_status(command, logger):
        states, duration = await original(command, logger)
        if states is not None:
            states = {job: (state.split()[0] if state.strip() else state) for job, state in states.items()}
        return states, duration

    query_job_status.__wrapped_original__ = original
    plugin.query_job_status = query_job_status
