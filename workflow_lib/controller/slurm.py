"""The SLURM jobs of a run: which ones it submitted, and what pause and freeze do to them.

SLURM jobs do not live in Snakemake's process group, so the signals that steer a local run do not
reach them. Measured on the CI's one-node SLURM with Snakemake 9 and its SLURM executor:

- SIGTERM (pause) makes Snakemake wait for *every* job it submitted, queued ones included: each
  of them still starts and runs. A pause would then last as long as the whole queue. Queued jobs
  have done nothing yet, so pause cancels them (``scancel --state=PENDING``) and only the running
  ones finish; Snakemake reports the cancelled ones as failed, and the next run makes their tiles.
- SIGINT (stop) makes Snakemake ``scancel`` every job it submitted, running or queued; SLURM then
  sends SIGTERM to a running job's processes and SIGKILL after its KillWait. Tiles finished
  before are kept; a tile killed half-way leaves a temporary file, which is removed when the tile
  is made again.
- SIGSTOP (freeze) stops only the processes on this machine. Freeze therefore also holds the
  run's queued jobs (``scontrol hold``) so that none starts while frozen, and resume releases the
  ones it held. Jobs already running go on (SLURM offers users no way to suspend them).

The job ids come from the run's own section of the console log ("submitted with SLURM jobid N"),
so jobs that other runs or other people submitted are never touched.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time

from workflow_lib.controller.runfile import RunInfo


class SlurmCommandError(Exception):
    """scancel or scontrol failed."""


SUBMITTED = re.compile(r"submitted with SLURM jobid (\d+)")


def submitted_jobs(info: RunInfo) -> list[str]:
    """SLURM job ids submitted by this run (none when it does not use SLURM)."""
    try:
        with open(info.log) as f:
            text = f.read()
    except FileNotFoundError:
        return []
    start = text.rfind(f"=== run {info.run_id} ")
    return list(dict.fromkeys(SUBMITTED.findall(text[start:]))) if start >= 0 else []


def job_states(ids: list[str]) -> dict[str, tuple[str, str]]:
    """State and reason of those jobs that SLURM still knows as queued or running."""
    if not ids or shutil.which("squeue") is None:
        return {}
    out = subprocess.run(["squeue", "-h", "-j", ",".join(ids), "-o", "%i %T %r"], capture_output=True,
                         text=True, timeout=60)
    states = {}
    for line in out.stdout.splitlines():
        parts = line.split(None, 2)
        if len(parts) >= 2:
            states[parts[0]] = (parts[1], parts[2] if len(parts) > 2 else "")
    return states


def cancel_queued(info: RunInfo) -> tuple[list[str], list[str]]:
    """Cancel the run's jobs that have not started; returns (cancelled, still running)."""
    states = job_states(submitted_jobs(info))
    queued = [i for i, (s, _) in states.items() if s == "PENDING"]
    running = [i for i, (s, _) in states.items() if s in ("RUNNING", "CONFIGURING", "COMPLETING")]
    if queued:
        # --state=PENDING: a job that started in the meantime is left to finish.
        _run(["scancel", "--state=PENDING", *queued])
    return queued, running


def cancel_left(info: RunInfo) -> list[str]:
    """Cancel whatever the run submitted that SLURM still has queued or running (after a stop,
    Snakemake has cancelled them itself, unless it had to be killed)."""
    left = [i for i, (state, _) in job_states(submitted_jobs(info)).items() if state != "COMPLETING"]
    if left:
        _run(["scancel", *left])
    return left


def wait_until_gone(info: RunInfo, timeout: float = 60.0, poll: float = 0.5) -> list[str]:
    """Wait until SLURM lists none of the jobs the run submitted; returns those still listed after
    ``timeout`` seconds. A cancelled job stays COMPLETING while SLURM kills its processes (some
    may still be at work), so a stop is over only once it is gone."""
    ids = submitted_jobs(info)
    deadline = time.monotonic() + timeout
    while True:
        left = sorted(job_states(ids))
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(poll)


def hold_queued(info: RunInfo) -> list[str]:
    """Hold the run's jobs that have not started, so that none starts while the run is frozen."""
    states = job_states(submitted_jobs(info))
    queued = [i for i, (s, reason) in states.items() if s == "PENDING" and not reason.startswith("JobHeld")]
    if queued:
        _run(["scontrol", "hold", ",".join(queued)])
    return queued


def release(ids: list[str]) -> list[str]:
    """Release the jobs that freeze held (and only those) that are still queued."""
    states = job_states(ids)
    held = [i for i in ids if i in states and states[i][0] == "PENDING"]
    if held:
        _run(["scontrol", "release", ",".join(held)])
    return held


def _run(cmd: list[str]) -> None:
    # A job may finish between squeue and this command: SLURM then says so and that is no error.
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if done.returncode != 0 and "already finished" not in done.stderr + done.stdout \
            and "Invalid job id" not in done.stderr + done.stdout:
        raise SlurmCommandError(f"{' '.join(cmd)} failed: {done.stderr.strip() or done.stdout.strip()}")
