"""What the status logger plugin and the jobs share about a run: the run context written at parse
time, the rules the plugin watches, the planned tiles with what is already on disk, and a failed
job's message from its log. Each of these facts is defined here once; the plugin imports them."""

from __future__ import annotations

import json
import os
import socket

import psutil

from workflow_lib.atomic import write_json_atomic
from workflow_lib.secrets import redact
from workflow_lib.domain import tile_dir
from workflow_lib.planning.plan import DatasetPlan, Plan
from workflow_lib.status.events import DatasetRecorded, RunFinished
from workflow_lib.status.queries import RunRecord, StatusQueries

# Written at parse time by the Snakefile in Snakemake's main process, read by the logger plugin:
# which plan, which database, where to spool.
RUN_CONTEXT = os.path.join(".cache", "status", "run.json")
RUN_ID_ENV = "WORKFLOW_RUN_ID"  # set by the status logger in Snakemake's process, inherited by jobs
# Set by the controller (onegrid run) for the Snakemake it starts: the run's id in the
# status database is then the one the controller prints, not Snakemake's own workflow id.
CONTROLLER_RUN_ENV = "WORKFLOW_CONTROLLER_RUN_ID"
# The rules (rules/*.smk) whose failures the plugin records against a batch's tiles or a dataset.
BATCH_RULE = "resample_batch"
REGISTER_RULE = "register_dataset"
# A batch job's last word, and its exit status, when SIGTERM made it stop before all its tiles:
# the plugin then keeps the missing tiles pending, not failed.
PAUSED_MARK = "paused by SIGTERM"
PAUSED_EXIT_CODE = 75  # EX_TEMPFAIL: try again later


# A run whose Snakemake process is gone without saying so (SIGKILL, a crash, a reboot).
INTERRUPTED = "interrupted"


def process_gone(host: str | None, pid: int | None, process_started_at: float | None) -> bool:
    """Whether the process that started a run is known to be gone: no live process with its pid on
    this host, or one with another start time (its pid used again). A run of another host cannot be
    told from here: not gone."""
    if host != socket.gethostname() or pid is None:
        return False
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return True
        return process_started_at is not None and abs(process.create_time() - process_started_at) > 1.0
    except psutil.NoSuchProcess:
        return True
    except psutil.Error:
        return False


def interrupted_run(store: StatusQueries) -> RunRecord | None:
    """The latest run, if the database says it is running while its process is gone."""
    run = store.latest_run()
    if run is None or run.status != "running":
        return None
    return run if process_gone(*store.run_process(run.id)) else None


def record_interrupted(store) -> RunRecord | None:
    """Store the latest run as interrupted if its process is gone (its unfinished tiles become
    pending again); the run, or None."""
    run = interrupted_run(store)
    if run is not None:
        store.record(RunFinished(run_id=run.id, status=INTERRUPTED))
    return run


def write_run_context(plan_path: str, database_url: str, spool_dir: str) -> None:
    """Written by the Snakefile in the main process only (cluster jobs do not touch it)."""
    # The database's password is masked (secrets.py): the logger plugin, in the process that wrote
    # this, finds it again in that process's environment.
    context = {"plan": plan_path, "database_url": redact(database_url), "spool_dir": spool_dir}
    try:
        with open(RUN_CONTEXT) as f:
            if json.load(f) == context:
                return
    except (OSError, ValueError):
        pass
    write_json_atomic(RUN_CONTEXT, context)
    os.chmod(RUN_CONTEXT, 0o600)  # it may hold a database URL


def read_run_context(cwd: str) -> dict | None:
    """The run context of the workflow in ``cwd``, or None when it has none (not this workflow)."""
    try:
        with open(os.path.join(cwd, RUN_CONTEXT)) as f:
            return json.load(f)
    except FileNotFoundError:
        return None


def dataset_recorded(dataset: DatasetPlan, status: str, **envelope) -> DatasetRecorded:
    """What the status database keeps of a planned (or registered) dataset."""
    h = dataset.header
    return DatasetRecorded(
        dataset=dataset.name, status=status, path=h.path, file_size=h.size_bytes, crs=h.crs.to_string(),
        width=h.width, height=h.height, dtype=h.dtype, nodata=h.nodata,
        block_size=f"{h.block_shape[1]}x{h.block_shape[0]}", tile_count=dataset.tile_count, **envelope)


def planned_tiles(context: dict, cwd: str):
    """(dataset plan, [[tile, status, batch, work]]) per dataset; tiles whose file exists are done
    (a tile made with other settings shows as done until its batch makes it again); work is the
    tile's estimated source pixels, the weight of the ETA."""
    with open(os.path.join(cwd, context["plan"])) as f:
        plan = Plan.from_dict(json.load(f))
    for name, d in plan.datasets.items():
        folder = os.path.join(cwd, tile_dir(name))
        on_disk = set(os.listdir(folder)) if os.path.isdir(folder) else set()
        work = d.tile_work_of(plan.grid)
        tiles = [[t.id, "done" if t.file_name in on_disk else "pending", b.id, round(work(t))]
                 for b in d.batches for t in b.tiles]
        yield d, tiles


SILENT_END = "the job ended without an error message"


def error_from_logs(paths: list[str]) -> str:
    """What a failed job's log says went wrong, or that it said nothing (a job killed by a signal
    or the out-of-memory killer stops mid-sentence)."""
    last = ""
    texts = []
    for path in paths:
        try:
            with open(path) as f:
                texts.append([line.strip() for line in f if line.strip()])
        except OSError:
            continue
    for lines in texts:
        # A cluster's out-of-memory kill explains everything after it (SLURM: "slurmstepd: error:
        # Detected 1 oom-kill event(s) in StepId=..."), so it comes first.
        for line in lines:
            if "oom-kill" in line or "Out Of Memory" in line:
                return line[-2000:]
    for lines in texts:
        for line in lines:
            if PAUSED_MARK in line:
                return line[-2000:]
    for lines in texts:
        for line in reversed(lines):
            if "Error" in line or "Exception" in line:
                return line[-2000:]
        last = lines[-1] if lines else last
    message = f"{SILENT_END} (killed by a signal or the out-of-memory killer?)"
    return f"{message}; its log ends with: {last[-500:]}" if last else message


def cancellation(logs_say: str, controller_state: str | None) -> str | None:
    """Why a failed job was in fact cancelled, or None when it really failed.

    A job that the controller's stop cancels, or a queued SLURM job that its pause cancels (it never
    ran, so it has no log), is no tile failure: its tiles are still to make. Known from the state
    of the controller that runs this very Snakemake process (``controller_state``: stopping, or
    pausing and the job said nothing; None when no controller runs it), or from SLURM's own words
    in the job's log.
    """
    over_time = "TIME LIMIT" in logs_say or "TIMEOUT" in logs_say  # a job over its runtime failed: it needs more
    if "CANCELLED AT" in logs_say and "slurmstepd" in logs_say and not over_time:
        return "cancelled on SLURM"
    if PAUSED_MARK in logs_say and not over_time:
        return "paused: the batch's running tiles were finished, the others are still to make"
    if controller_state == "stopping":
        return "cancelled by stop"
    if controller_state == "pausing" and logs_say.startswith(SILENT_END):
        return "cancelled by pause before it started"
    return None
