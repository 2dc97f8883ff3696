"""Start, pause, freeze, resume and stop the Snakemake run of this folder.

Snakemake runs in its own session and process group (so that a closed terminal or a Ctrl-C meant
for something else never reaches it), its console goes to ``logs/run/console.log``, and the run
file (runfile.py) says which process it is. The verbs are signals, as docs/running.md's "Stopping and
resuming" describes them:

- pause: SIGTERM to Snakemake: no new job starts, running jobs finish, Snakemake exits;
- stop: SIGINT to the whole group (Ctrl-C): running jobs are cancelled, their temporary files
  removed;
- freeze: SIGSTOP to the whole group, and SIGCONT to resume: nothing is lost or redone;
- on SLURM, pause also cancels the run's queued jobs and freeze holds them (slurm.py says why);
- resume: SIGCONT when frozen, else the same command line again, after removing Snakemake's lock
  if (and only if) the run that held it is gone.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid

import psutil

from workflow_lib.controller import slurm
from workflow_lib.controller.runfile import CONSOLE_LOG, RunInfo, read_run, set_state, write_run
from workflow_lib.status.run import CONTROLLER_RUN_ENV


class ControlError(Exception):
    """A verb that cannot be carried out; the message says why and what to do."""


def snakemake_command(args: list[str]) -> list[str]:
    """Snakemake from the same environment as this Python."""
    beside = os.path.join(os.path.dirname(sys.executable), "snakemake")
    exe = beside if os.path.exists(beside) else shutil.which("snakemake")
    return [exe, *args] if exe else [sys.executable, "-m", "snakemake", *args]


def _say(message: str) -> None:
    print(message, flush=True)


def _log_line(message: str) -> None:
    os.makedirs(os.path.dirname(CONSOLE_LOG), exist_ok=True)
    with open(CONSOLE_LOG, "a") as log:
        log.write(f"[controller {time.strftime('%Y-%m-%d %H:%M:%S')}] {message}\n")


def live_run() -> RunInfo | None:
    info = read_run()
    return info if info is not None and info.alive() else None


def clear_stale_lock(args: list[str]) -> bool:
    """Remove Snakemake's lock when the run that took it is gone; never while it is alive."""
    info = read_run()
    if info is not None and info.alive():
        return False
    lock_dir = os.path.join(".snakemake", "locks")
    if not (os.path.isdir(lock_dir) and os.listdir(lock_dir)):
        return False
    if info is None:
        # Nothing says whose lock it is: it may be a run on another machine sharing the folder.
        raise ControlError(
            "Snakemake's lock (.snakemake/locks) is held by a run that the controller did not start; "
            "if no Snakemake runs in this folder on any machine, remove it with `snakemake --unlock`")
    others = _other_snakemakes()
    if others:
        raise ControlError(
            "Snakemake's lock is held and a Snakemake process runs in this folder outside the "
            f"controller (pid {', '.join(map(str, others))}): not unlocking; stop it first")
    who = f"run {info.run_id} (pid {info.pid})"
    _say(f"removing the stale lock left by {who}, which is no longer running (snakemake --unlock)")
    _log_line(f"stale lock of {who} removed")
    done = subprocess.run(snakemake_command(["--unlock", *_unlock_args(args)]), capture_output=True, text=True)
    if done.returncode != 0:
        raise ControlError(f"snakemake --unlock failed:\n{done.stdout}{done.stderr}")
    return True


def _unlock_args(args: list[str]) -> list[str]:
    """The options that say which workflow and config the lock belongs to."""
    keep, out, i = {"--snakefile", "-s", "--configfile", "--configfiles", "--directory", "-d", "--config"}, [], 0
    while i < len(args):
        if args[i] in keep:
            out.append(args[i])
            i += 1
            while i < len(args) and not args[i].startswith("-"):
                out.append(args[i])
                i += 1
        else:
            i += 1
    return out


def _other_snakemakes() -> list[int]:
    """Snakemake main processes working in this folder (started by hand, not by the controller)."""
    here, found = os.path.realpath("."), []
    for proc in psutil.process_iter(["pid", "cmdline", "cwd"]):
        try:
            cmd = proc.info["cmdline"] or []
            if proc.info["cwd"] and os.path.realpath(proc.info["cwd"]) == here and \
                    any(os.path.basename(c) == "snakemake" or c == "snakemake" for c in cmd[:3]) and \
                    "--unlock" not in cmd and proc.pid != os.getpid():
                parent = proc.parent()
                parent_cmd = parent.cmdline() if parent else []
                if not any(os.path.basename(c) == "snakemake" for c in parent_cmd[:3]):
                    found.append(proc.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def start(args: list[str], detach: bool) -> int:
    """Start Snakemake with ``args``; wait for it unless ``detach``. Returns its exit status."""
    running = live_run()
    if running is not None:
        raise ControlError(f"a run is already going in this folder: {running.describe()}; "
                           "`onegrid pause`, `stop` or `logs -f`")
    clear_stale_lock(args)
    os.makedirs(os.path.dirname(CONSOLE_LOG), exist_ok=True)
    command = snakemake_command(args)
    run_id = uuid.uuid4().hex[:12]
    log = open(CONSOLE_LOG, "a")
    log.write(f"\n=== run {run_id} on {socket.gethostname()} at {time.strftime('%Y-%m-%d %H:%M:%S')}: "
              f"{' '.join(command)}\n")
    log.flush()
    env = dict(os.environ, **{CONTROLLER_RUN_ENV: run_id})
    proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True, env=env)
    log.close()
    info = RunInfo(pid=proc.pid, command=args, host=socket.gethostname(),
                   started_at=psutil.Process(proc.pid).create_time(), run_id=run_id, detached=detach,
                   controller_pid=None if detach else os.getpid())
    write_run(info)
    _say(f"started {info.describe()}")
    _say(f"console log: {CONSOLE_LOG} (`onegrid logs -f`)")
    if detach:
        return 0
    return _follow_foreground(proc, info)


def _follow_foreground(proc: subprocess.Popen, info: RunInfo) -> int:
    """Show the console log while Snakemake runs; Ctrl-C stops the run, SIGTERM pauses it and
    SIGUSR1 writes a status snapshot into the log, as the same signals to Snakemake would."""
    def on_int(signum, frame):
        _signal_group(info, signal.SIGINT)

    def on_term(signum, frame):
        os.kill(info.pid, signal.SIGTERM)

    def on_usr1(signum, frame):
        os.kill(info.pid, signal.SIGUSR1)

    signal.signal(signal.SIGINT, on_int)
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGUSR1, on_usr1)
    with open(info.log) as log:
        log.seek(0, os.SEEK_END)
        while True:
            chunk = log.read()
            if chunk:
                sys.stdout.write(chunk)
                sys.stdout.flush()
            if proc.poll() is not None:
                sys.stdout.write(log.read())
                break
            time.sleep(0.3)
    return proc.returncode


def _signal_group(info: RunInfo, sig: int) -> None:
    try:
        os.killpg(info.pid, sig)
    except ProcessLookupError:
        pass


def _require_live(verb: str) -> RunInfo:
    info = read_run()
    if info is None:
        raise ControlError(f"nothing to {verb}: no run was started here with `onegrid run`")
    if not info.alive():
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.started_at))
        raise ControlError(f"nothing to {verb}: run {info.run_id} (started {started}) has {info.outcome()} "
                           f"(its console: {info.log}; `onegrid resume` starts it again)")
    if info.host != socket.gethostname():
        raise ControlError(f"the run belongs to host {info.host}: run `{verb}` there")
    return info


def wait_for_exit(info: RunInfo, timeout: float | None) -> bool:
    deadline = None if timeout is None else time.monotonic() + timeout
    while info.alive():
        if deadline is not None and time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def pause(freeze: bool, wait: bool) -> int:
    info = _require_live("pause")
    if freeze:
        if info.state == "frozen":
            _say(f"already frozen: {info.describe()}")
            return 0
        set_state(info, "frozen")
        _log_line("frozen (SIGSTOP to the process group): `onegrid resume` lets it go on")
        _signal_group(info, signal.SIGSTOP)
        # Snakemake is stopped now and submits nothing more: hold what it queued on SLURM.
        held = _slurm("hold", slurm.hold_queued, info)
        if held:
            info.held_jobs = held
            write_run(info)
            _log_line(f"held {len(held)} queued SLURM job(s): {' '.join(held)}")
            _say(f"held {len(held)} queued SLURM job(s) so that none starts while frozen; "
                 "SLURM jobs already running go on")
        _say(f"frozen: {info.describe()}; `onegrid resume` lets it go on where it was")
        return 0
    if info.state == "frozen":
        _thaw(info)
    uses_slurm = bool(slurm.submitted_jobs(info))
    set_state(info, "pausing")
    _log_line("pause asked (SIGTERM): running jobs finish, no new job starts")
    os.kill(info.pid, signal.SIGTERM)
    _say("pausing: running jobs finish their tiles, no new job starts; `onegrid resume` "
         "goes on later")
    if uses_slurm:
        # Snakemake would wait for every SLURM job it submitted, queued ones too (each would still
        # start). Queued jobs have done nothing: cancel them. A submission that was under way when
        # SIGTERM came lands in the log within moments.
        time.sleep(SUBMISSION_GRACE_S)
        cancelled, running = _slurm("cancel", slurm.cancel_queued, info) or ([], [])
        _log_line(f"pause: cancelled {len(cancelled)} queued SLURM job(s) {' '.join(cancelled)}; "
                  f"{len(running)} running SLURM job(s) finish: {' '.join(running)}")
        _say(f"cancelled {len(cancelled)} queued SLURM job(s) that had not started; "
             f"{len(running)} running SLURM job(s) finish their tiles")
    if wait:
        wait_for_exit(info, None)
        _say("paused: Snakemake has exited")
    return 0


SUBMISSION_GRACE_S = 2.0


def _slurm(what: str, action, info: RunInfo):
    try:
        return action(info)
    except (slurm.SlurmCommandError, OSError, subprocess.SubprocessError) as exc:
        _say(f"warning: could not {what} the run's queued SLURM jobs: {exc}")
        _log_line(f"could not {what} the queued SLURM jobs: {exc}")
        return None


def _thaw(info: RunInfo) -> None:
    _signal_group(info, signal.SIGCONT)
    if info.held_jobs:
        released = _slurm("release", lambda i: slurm.release(i.held_jobs), info) or []
        _log_line(f"released {len(released)} held SLURM job(s): {' '.join(released)}")
        info.held_jobs = []
        write_run(info)


def stop(timeout: float = 120.0) -> int:
    info = _require_live("stop")
    if info.state == "frozen":
        _thaw(info)
    set_state(info, "stopping")
    _log_line("stop asked (SIGINT to the process group): running jobs are cancelled")
    _signal_group(info, signal.SIGINT)
    if not wait_for_exit(info, timeout):
        _log_line(f"still running {timeout:.0f} s after SIGINT: SIGKILL to the process group")
        _signal_group(info, signal.SIGKILL)
        wait_for_exit(info, 30)
    left = _slurm("cancel", slurm.cancel_left, info)
    if left:
        _log_line(f"stop: cancelled {len(left)} SLURM job(s) that Snakemake left: {' '.join(left)}")
        _say(f"cancelled {len(left)} SLURM job(s) that Snakemake had left queued or running")
    # Snakemake exits as soon as it has cancelled its jobs; SLURM may still be killing their
    # processes (COMPLETING). The stop is over when none is left, so that no tile appears after it.
    still = _slurm("wait for", slurm.wait_until_gone, info)
    if still:
        _log_line(f"stop: SLURM still lists {len(still)} job(s) of the run: {' '.join(still)}")
        _say(f"warning: SLURM still lists {len(still)} job(s) of the run a minute after the stop "
             f"({' '.join(still)}); `squeue -j {','.join(still)}` shows them")
    _say("stopped; `onegrid resume` goes on from the tiles on disk")
    return 0


def resume(detach: bool | None) -> int:
    info = read_run()
    if info is None:
        raise ControlError("nothing to resume: no run was started here with `onegrid run`")
    if info.alive():
        if info.state == "frozen":
            _thaw(info)
            set_state(info, "running")
            _log_line("thawed (SIGCONT to the process group)")
            _say(f"resumed: {info.describe()}")
            return 0
        raise ControlError(f"the run is still going: {info.describe()}")
    return start(info.command, info.detached if detach is None else detach)


def logs(follow: bool, out=None) -> int:
    out = out or sys.stdout
    if not os.path.exists(CONSOLE_LOG):
        raise ControlError(f"no console log yet ({CONSOLE_LOG}): start a run with `onegrid run`")
    with open(CONSOLE_LOG) as log:
        out.write(log.read())
        out.flush()
        if not follow:
            return 0
        try:
            while True:
                chunk = log.read()
                if chunk:
                    out.write(chunk)
                    out.flush()
                elif live_run() is None:
                    out.write(log.read())
                    return 0
                time.sleep(0.3)
        except KeyboardInterrupt:
            return 0
