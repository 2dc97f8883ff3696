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
