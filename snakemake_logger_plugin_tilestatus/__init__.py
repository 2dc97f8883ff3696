"""Snakemake logger plugin that records the run and every job's lifecycle in the status database.

Switched on by the default profile (``logger: [tilestatus]``). It runs in Snakemake's main process,
which sees every job start, finish and fail, including jobs killed by the OOM killer or SIGKILL
(Snakemake reports them as errors), so no tile is left "running" forever. Batch jobs record each
of their tiles as they start and finish it, with its measurements (workflow_lib.jobs). The database never stops the run: see workflow_lib.status.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from typing import Optional

from snakemake_interface_logger_plugins.base import LogHandlerBase
from snakemake_interface_logger_plugins.common import LogEvent
from snakemake_interface_logger_plugins.settings import LogHandlerSettingsBase

RUN_CONTEXT = os.path.join(".cache", "status", "run.json")
BATCH_RULE = "resample_batch"
REGISTER_RULE = "register_dataset"

log = logging.getLogger("workflow_lib.status")


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
        event = getattr(record, "event", None)
        if event is None or self.common_settings.dryrun:
            return
        try:
            if event == LogEvent.WORKFLOW_STARTED:
                self._started(record)
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
        from workflow_lib.status import Event, StatusStore
        from workflow_lib.status.run import RUN_ID_ENV, planned_tiles

        cwd = os.getcwd()  # Snakemake has changed into --directory by now
        path = os.path.join(cwd, RUN_CONTEXT)
        if not os.path.exists(path):
            return  # not this project's workflow
        with open(path) as f:
            context = json.load(f)
        self.store = StatusStore(context["database_url"], spool_dir=os.path.join(cwd, context["spool_dir"]))
        self.run_id = str(getattr(record, "workflow_id", "")) or None
        if self.run_id:
            # Batch jobs (local, or on SLURM, which passes the environment on) tag their tiles with it.
            os.environ[RUN_ID_ENV] = self.run_id
        self.store.record(Event("run_started", run_id=self.run_id, payload={
            "config_digest": getattr(record, "config_md5", None),
            "snakemake_version": getattr(record, "snakemake_version", None),
            "user": getattr(record, "user", None),
        }))
        for name, dataset, tiles in planned_tiles(context, cwd):
            self.store.record(Event("dataset", run_id=self.run_id, dataset=name, payload=dataset))
            self.store.record(Event("tiles_planned", run_id=self.run_id, dataset=name, payload={"tiles": tiles}))

    def _job_error(self, record) -> None:
        from workflow_lib.status import Event
        from workflow_lib.status.run import cancellation, error_from_logs

        job = self.jobs.get(record.jobid, {"rule": record.rule_name, "wildcards": {}, "log": []})
        logs = list(getattr(record, "log", None) or job["log"]) + self.group_logs.pop(record.jobid, [])
        message = error_from_logs(logs)
        cancelled = cancellation(message, os.getcwd())
        # The executor's word on the failure (on SLURM: "SLURM-job '12' failed, SLURM status is:
        # 'OUT_OF_MEMORY'") comes first: the job itself may have been killed before it could say anything.
        executor_says = getattr(record, "rule_msg", None)
        if executor_says:
            message = f"{executor_says} {message}"
        if job["rule"] == BATCH_RULE:
            # The tiles it was making when it ended (a kill, the OOM killer, a cancellation); those it
            # finished or that failed on their own were recorded by the job.
            w = job["wildcards"]
            self.store.record(Event("batch_ended", run_id=self.run_id, dataset=w.get("dataset"), payload={
                "batch": w.get("batch"), "cancelled": cancelled, "error": message}))
        elif job["rule"] == REGISTER_RULE:
            name = job["wildcards"].get("dataset")
            self.store.record(Event("dataset", run_id=self.run_id, dataset=name,
                                    payload={"status": "failed", "error": message}))
        self.store.record(Event("note", run_id=self.run_id, dataset=job["wildcards"].get("dataset"),
                                payload={"rule": job["rule"], "batch": job["wildcards"].get("batch"),
                                         "error": message}))

    def _end_status(self) -> str:
        """finished, failed, or paused / stopped when the controller paused or stopped this run."""
        from workflow_lib.controller.runfile import read_run

        info = read_run(os.getcwd())
        if info is not None and info.pid == os.getpid() and info.state in ("pausing", "stopping"):
            return {"pausing": "paused", "stopping": "stopped"}[info.state]
        return "failed" if self.errors else "finished"

    def close(self) -> None:
        if self.store is not None and not self.finished:
            from workflow_lib.status import Event

            self.finished = True
            try:
                self.store.record(Event("run_finished", run_id=self.run_id, payload={"status": self._end_status()}))
                self.store.replay()
            except Exception:  # noqa: BLE001
                log.exception("status logger: could not record the end of the run")
            self.store.close()
        super().close()
