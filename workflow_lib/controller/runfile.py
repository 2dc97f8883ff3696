"""The run file: which Snakemake process runs in this folder, started how, and in what state.

``.workflow/run.json`` holds the process id of Snakemake (the leader of its own session and
process group), the command line, the host, the process's start time and a run id. A process id
alone is not proof of life: after a reboot or a SIGKILL the id may belong to another program, so a
run is alive only if a process with that id exists on this host *and* started when the file says.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import asdict, dataclass, field

import psutil

from workflow_lib.atomic import write_json_atomic

RUN_DIR = ".workflow"
RUN_FILE = os.path.join(RUN_DIR, "run.json")
CONSOLE_LOG = os.path.join("logs", "run", "console.log")
# Start times are compared to this precision (psutil reads them from /proc in clock ticks).
START_TOLERANCE_S = 1.0


@dataclass
class RunInfo:
    pid: int  # Snakemake's process; also its process group and session
    command: list[str]
    host: str
    started_at: float  # the process's own start time (psutil), not when the file was written
    run_id: str
    detached: bool
    log: str = CONSOLE_LOG
    state: str = "running"  # running, pausing, frozen, stopping
    state_since: float = field(default_factory=time.time)
    controller_pid: int | None = None  # the foreground controller, if any
    held_jobs: list[str] = field(default_factory=list)  # queued SLURM jobs that freeze held

    def alive(self) -> bool:
        """The process of this run still runs (on this host, the same process)."""
        if self.host != socket.gethostname():
            return True  # cannot tell from here: assume it runs, never unlock another host's run
        try:
            proc = psutil.Process(self.pid)
            same = abs(proc.create_time() - self.started_at) <= START_TOLERANCE_S
            return same and proc.status() != psutil.STATUS_ZOMBIE
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return False

    def outcome(self) -> str:
        """How a run that is no longer alive ended, from the last lines of its console log:
        finished, failed, or ended (killed, or its log gone)."""
        try:
            with open(self.log, "rb") as f:
                f.seek(max(os.fstat(f.fileno()).st_size - 8192, 0))
                tail = f.read().decode("utf-8", "replace")
        except OSError:
            return "ended"
        if "steps (100%) done" in tail or "Nothing to be done" in tail:
            return "finished"
        if "Error" in tail or "Exiting because" in tail:
            return "failed"
        return "ended"

    def describe(self) -> str:
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started_at))
        return (f"run {self.run_id} (pid {self.pid} on {self.host}, started {started}, {self.state}): "
                f"{' '.join(self.command)}")


def read_run(folder: str = ".") -> RunInfo | None:
    path = os.path.join(folder, RUN_FILE)
    try:
        with open(path) as f:
            data = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return None  # a damaged run file proves nothing about a live process
    known = {k: v for k, v in data.items() if k in RunInfo.__dataclass_fields__}
    return RunInfo(**known)


def own_state(folder: str = ".") -> str | None:
    """The state the controller gave the run that is this very process (pausing, stopping, ...):
    read by the status logger inside Snakemake's process. None when no controller runs it."""
    info = read_run(folder)
    return info.state if info is not None and info.pid == os.getpid() else None


def write_run(info: RunInfo, folder: str = ".") -> None:
    os.makedirs(os.path.join(folder, RUN_DIR), exist_ok=True)
    write_json_atomic(os.path.join(folder, RUN_FILE), asdict(info))


def set_state(info: RunInfo, state: str, folder: str = ".") -> RunInfo:
    info.state, info.state_since = state, time.time()
    write_run(info, folder)
    return info
