"""What the status logger needs from the workflow: the run context written at parse time, the
planned tiles with what is already on disk, and a failed job's message from its log."""

from __future__ import annotations

import json
import os

from workflow_lib.atomic import write_json_atomic

RUN_CONTEXT = os.path.join(".cache", "status", "run.json")
RUN_ID_ENV = "WORKFLOW_RUN_ID"  # set by the status logger in Snakemake's process, inherited by jobs
# A batch job's last word when SIGTERM made it stop before all its tiles (workflow_lib.jobs).
PAUSED_MARK = "paused by SIGTERM"


def write_run_context(plan_path: str, database_url: str, spool_dir: str) -> None:
    """Written by the Snakefile in the main process only (cluster jobs do not touch it)."""
    context = {"plan": plan_path, "database_url": database_url, "spool_dir": spool_dir}
    try:
        with open(RUN_CONTEXT) as f:
            if json.load(f) == context:
                return
    except (OSError, ValueError):
        pass
    write_json_atomic(RUN_CONTEXT, context)
    os.chmod(RUN_CONTEXT, 0o600)  # it may hold a database URL


def dataset_payload(dataset, status: str) -> dict:
    """What the status database keeps of a planned dataset (a plan.DatasetPlan)."""
    h = dataset.header
    return {
        "path": h.path, "file_size": h.size_bytes, "crs": h.crs.to_string(), "width": h.width,
        "height": h.height, "dtype": h.dtype, "nodata": h.nodata,
        "block_size": f"{h.block_shape[1]}x{h.block_shape[0]}", "tile_count": dataset.tile_count, "status": status,
    }


def planned_tiles(context: dict, cwd: str):
    """(name, dataset payload, [[tile, status, batch, work]]) per dataset; tiles whose file exists
    are done (a tile made with other settings shows as done until its batch makes it again); work
    is the tile's estimated source pixels, the weight of the ETA."""
    from workflow_lib.planning.plan import Plan

    with open(os.path.join(cwd, context["plan"])) as f:
        plan = Plan.from_dict(json.load(f))
    for name, d in plan.datasets.items():
        folder = os.path.join(cwd, "results", "tiles", name)
        on_disk = set(os.listdir(folder)) if os.path.isdir(folder) else set()
        work = d.tile_work_of(plan.grid)
        tiles = [[t, "done" if f"{t}.tif" in on_disk else "pending", b.id, round(work(t))]
                 for b in d.batches for t in b.tiles]
        yield name, dataset_payload(d, "planned"), tiles


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


def cancellation(logs_say: str, cwd: str) -> str | None:
    """Why a failed job was in fact cancelled, or None when it really failed.

    A job that the controller's stop cancels, or a queued SLURM job that its pause cancels (it never
    ran, so it has no log), is no tile failure: its tiles are still to make. Known from the run
    file of the controller that runs this very Snakemake process (stopping, or pausing and the job
    said nothing), or from SLURM's own words in the job's log.
    """
    over_time = "TIME LIMIT" in logs_say or "TIMEOUT" in logs_say  # a job over its runtime failed: it needs more
    if "CANCELLED AT" in logs_say and "slurmstepd" in logs_say and not over_time:
        return "cancelled on SLURM"
    if PAUSED_MARK in logs_say and not over_time:
        return "paused: the batch's running tiles were finished, the others are still to make"
    from workflow_lib.controller.runfile import read_run

    info = read_run(cwd)
    if info is None or info.pid != os.getpid():
        return None
    if info.state == "stopping":
        return "cancelled by stop"
    if info.state == "pausing" and logs_say.startswith(SILENT_END):
        return "cancelled by pause before it started"
    return None
