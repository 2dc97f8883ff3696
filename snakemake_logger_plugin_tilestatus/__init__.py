"""Snakemake logger plugin that records the run and every job's lifecycle in the status database.

Switched on by the default profile (``logger: [tilestatus]``). It runs in Snakemake's main process,
which sees every job start, finish and fail, including jobs killed by the OOM killer or SIGKILL
(Snakemake reports them as errors), so no tile is left "running" forever. Batch jobs record each
of their tiles as they start and finish it, with its measurements (workflow_lib.status.reporter).
The database never stops the run: see workflow_lib.status. What it shares with the workflow (the
run context, the rule names, the run id's variable) is defined in workflow_lib.status.run.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import Optional

import psutil
from snakemake.common import NOTHING_TO_BE_DONE_MSG
from snakemake_interface_logger_plugins.base import LogHandlerBase
from snakemake_interface_logger_plugins.common import LogEvent
from snakemake_interface_logger_plugins.settings import LogHandlerSettingsBase

from workflow_lib.controller.runfile import own_state
from workflow_lib.status import StatusStore, resolve_url
from workflow_lib.status.events import BatchEnded, DatasetFailed, Note, RunFinished, RunStarted, TilesPlanned
from workflow_lib.status.run import (BATCH_RULE, CONTROLLER_RUN_ENV, REGISTER_RULE, RUN_ID_ENV, cancellation,
                                     dataset_recorded, error_from_logs, planned_tiles, read_run_context,
                                     record_interrupted)

log = logging.getLogger("workflow_lib.status")

# What Snakemake says when another Snakemake holds the folder's lock (snakemake.exceptions).
LOCK_REFUSED = "Directory cannot be locked"


@dataclass
class LogHandlerSettings(LogHandlerSettingsBase):
    pass


class LogHandler(LogHandlerBase):
    def __post_init__(self) -> None:
        self.store = None
        self.run_id: Optional[str] = None
        self.jobs: dict[int, dict] = {}
        self.group_logs: dict[int, list[str]] = {}  # jobid -> logs of the cluster job it ran in
        self.errors = 0
        self.finished = False
        # WORKFLOW_STARTED comes before Snakemake takes the folder's lock: a second Snakemake that
        # is refused the lock must record nothing (not a run, not its plan's tiles). The start is
        # recorded once the run is known to hold the lock (its job stats, its first job, "nothing
        # to be done"), or at its end if it failed for another reason.
        self.pending_start: Optional[logging.LogRecord] = None
        self.lock_refused = False

    @property
    def writes_to_stream(self) -> bool:
        return False

    @property
    def writes_to_file(self) -> bool:
        return False

    @property
    def has_filter(self) -> bool:
        return True  # it takes every record it needs itself, whatever the verbosity

    @property
    def has_formatter(self) -> bool:
        return True

    @property
    def needs_rulegraph(self) -> bool:
        return False

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.ERROR:
            # Whatever the error (a job, the scheduler, a stop by signal): the run did not succeed.
            self.errors += 1
            if self.pending_start is not None and LOCK_REFUSED in str(record.msg):
                self.lock_refused = True
        event = getattr(record, "event", None)
        if self.common_settings.dryrun:
            return
        try:
            if self.pending_start is not None and (event in (LogEvent.RUN_INFO, LogEvent.JOB_INFO)
                                                   or str(record.msg) == NOTHING_TO_BE_DONE_MSG):
                self._record_start()
            if event is None:
                return
            if event == LogEvent.WORKFLOW_STARTED:
                self.pending_start = record
            elif self.store is None:
                return
            elif event == LogEvent.JOB_INFO:
                # Logged as the job is handed to the executor: kept to know the job's rule and batch
                # when it fails. Its tiles are recorded by the batch job itself as it starts and ends
                # each (a batch queued on a cluster has no tile running yet).
                self.jobs[record.jobid] = {
                    "rule": record.rule_name,
                    "wildcards": dict(record.wildcards or {}),
                    "log": list(record.log or []),
                }
            elif event == LogEvent.GROUP_ERROR:
                # A cluster job running a group of jobs failed: the executor's own log (SLURM's
                # output, where an out-of-memory kill is reported) belongs to each job of the group,
                # whose JOB_ERROR records follow.
                for info in getattr(record, "job_error_info", None) or []:
                    self.group_logs[info.get("jobid")] = list(getattr(record, "aux_logs", None) or [])
            elif event == LogEvent.JOB_ERROR:
                self._job_error(record)
        except Exception:  # noqa: BLE001 - the status database must never stop the run
            log.exception("status logger: could not record %s", event)

    def _started(self, record) -> None:
        cwd = os.getcwd()  # Snakemake has changed into --directory by now
        context = read_run_context(cwd)
        if context is None:
            return  # not this project's workflow
        # The URL in the run context is masked; resolve_url takes WORKFLOW_STATUS_DB when set, and
        # the store puts back a config's password, kept in this process's environment at parse time.
        self.store = StatusStore(resolve_url(context["database_url"]),
                                 spool_dir=os.path.join(cwd, context["spool_dir"]))
        record_interrupted(self.store)  # an earlier run whose process is gone: say so before this one
        self.run_id = os.environ.get(CONTROLLER_RUN_ENV) or str(getattr(record, "workflow_id", "")) or None
        if self.run_id:
            # Batch jobs (local, or on SLURM, which passes the environment on) tag their tiles with it.
            os.environ[RUN_ID_ENV] = self.run_id
        # At the time Snakemake said it started (recorded later, once it holds the folder's lock).
        started = RunStarted(run_id=self.run_id, at=getattr(record, "created", None) or time.time(),
                             process_started_at=psutil.Process().create_time(),
                             config_digest=getattr(record, "config_md5", None),
                             snakemake_version=getattr(record, "snakemake_version", None),
                             user=getattr(record, "user", None))

        def record_run() -> None:
            # Also when the database was deleted or replaced during the run: in the new one, the run
            # (its first event's time and id again) and its tiles as the files on disk say.
            self.store.record(started)
            for dataset, tiles in planned_tiles(context, cwd):
                self.store.record(dataset_recorded(dataset, "planned", run_id=self.run_id))
                self.store.record(TilesPlanned(run_id=self.run_id, dataset=dataset.name, tiles=tiles))

        self.store.on_new_database = record_run
        record_run()

    def _job_error(self, record) -> None:
        job = self.jobs.get(record.jobid, {"rule": record.rule_name, "wildcards": {}, "log": []})
        logs = list(getattr(record, "log", None) or job["log"]) + self.group_logs.pop(record.jobid, [])
        message = error_from_logs(logs)
        cancelled = cancellation(message, own_state(os.getcwd()))
        # The executor's word on the failure (on SLURM: "SLURM-job '12' failed, SLURM status is:
        # 'OUT_OF_MEMORY'") comes first: the job itself may have been killed before it could say anything.
        executor_says = getattr(record, "rule_msg", None)
        if executor_says:
            message = f"{executor_says} {message}"
        if job["rule"] == BATCH_RULE:
            # The tiles it was making when it ended (a kill, the OOM killer, a cancellation); those it
            # finished or that failed on their own were recorded by the job.
            w = job["wildcards"]
            self.store.record(BatchEnded(run_id=self.run_id, dataset=w.get("dataset"), batch=w.get("batch"),
                                         cancelled=cancelled, error=message))
        elif job["rule"] == REGISTER_RULE:
            self.store.record(DatasetFailed(run_id=self.run_id, dataset=job["wildcards"].get("dataset"),
                                            error=message))
        self.store.record(Note(run_id=self.run_id, dataset=job["wildcards"].get("dataset"),
                               details={"rule": job["rule"], "batch": job["wildcards"].get("batch"),
                                        "error": message}))

    def _end_status(self) -> str:
        """finished, failed, or paused / stopped when the controller paused or stopped this run."""
        state = own_state(os.getcwd())
        if state in ("pausing", "stopping"):
            return {"pausing": "paused", "stopping": "stopped"}[state]
        return "failed" if self.errors else "finished"

    def _record_start(self) -> None:
        record, self.pending_start = self.pending_start, None
        self._started(record)

    def close(self) -> None:
        if self.pending_start is not None and not self.lock_refused:
            try:
                self._record_start()  # a run that failed before it had any job
            except Exception:  # noqa: BLE001
                log.exception("status logger: could not record the start of the run")
        if self.store is not None and not self.finished:
            self.finished = True
            try:
                self.store.record(RunFinished(run_id=self.run_id, status=self._end_status()))
                self.store.replay()
            except Exception:  # noqa: BLE001
                log.exception("status logger: could not record the end of the run")
            self.store.close()
        super().close()
