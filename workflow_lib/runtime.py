"""The process a job runs in: its memory limit, GDAL's threads, its resident memory, its log, and
what SIGTERM does to it. Nothing here knows about Snakemake: the job adapters (workflow_lib.jobs)
pass in what the ``snakemake`` object says."""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import signal
import sys
import threading
import warnings
from collections.abc import Iterator

import numpy as np
import rasterio
import rasterio.shutil

from workflow_lib.errors import JobMemoryError, out_of_memory

log = logging.getLogger("workflow_lib.jobs")

# Resident memory of a job before it touches data: Python, NumPy, GDAL and Snakemake's script
# preamble (measured at about 120 MB; kept above that).
BASELINE_MB = 160
# What numba, llvmlite and one dataset's compiled kernels add to a job, resident (VmRSS: +103 MB,
# mostly the libraries' code; VmData, which RLIMIT_DATA counts, +33 MB), measured 2026-12-03 with
# numba 0.68.1. Kept above that. Jobs whose mem_mb cannot hold it use the NumPy reductions.
KERNELS_MB = 112
# The least memory, beyond the interpreter's, that one tile is given: fewer tiles run at once
# when the job's mem_mb cannot give each this much.
MIN_TILE_SHARE_MB = 96
# The least mem_mb a job can be given (memory.tile_mb, memory.mosaic_mb): the interpreter and one
# tile's share. With less, the interpreter's own memory leaves a tile no room to work in chunks
# of a planned size, and jobs fail for memory whatever the input (config.check_config).
MIN_JOB_MB = BASELINE_MB + MIN_TILE_SHARE_MB

# Stack of the job's own threads (tile workers, watchdogs, heartbeat). Linux counts a thread's whole
# stack mapping against RLIMIT_DATA (memory.enforce) though little of it is ever touched, and
# the default is 8 MB: with 64-128 MB jobs, threads would use up the limit before any pixel does.
THREAD_STACK_BYTES = 4 * 2**20

# Set on SIGTERM: a batch job starts no new tile (engines.batch) and ends once its running ones are
# written, so that a pause waits for tiles, not for whole batches.
STOP_STARTING = threading.Event()


def peak_rss_mb() -> float:
    """This process's peak resident memory since it started its program, in MB.

    Not getrusage's ru_maxrss: Linux carries the parent's peak over a fork and exec into it, so a
    job started by a 200 MB Snakemake would report at least 200 MB. VmHWM belongs to the process's
    own address space.
    """
    peak = _status_mb("VmHWM")
    if peak is None:  # not Linux: the best there is
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    return peak


def cpu_seconds() -> float:
    """CPU time (user and system) of this process's threads and its waited-for children so far: a
    job's own figure, exact where Snakemake's benchmark polls it at intervals (bench/makespan.py)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def rss_mb() -> float:
    """This process's resident memory now, in MB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


# Set in a job's process that restart_after_compiling started again: it never restarts twice, and
# its log goes on after the first start's.
RESTARTED_ENV = "ONEGRID_JOB_RESTARTED"
# What a job's data segment (RLIMIT_DATA's measure) may hold beyond what it plans for before any
# tile (BASELINE_MB + KERNELS_MB) without being started again.
COMPILE_SLACK_MB = 64


def data_mb() -> float | None:
    """This process's data segment (VmData: what RLIMIT_DATA bounds), in MB; None where unknown."""
    return _status_mb("VmData")


def _status_mb(field: str) -> float | None:
    """A field of /proc/self/status (in kB there), in MB; None where there is no such file."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(f"{field}:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def restart_after_compiling(what: str) -> None:
    """Start this job's process again (the same program and arguments, the same PID) when loading
    its kernels compiled them: a kernel that is not in numba's cache yet (a fresh checkout, changed
    kernel code) is compiled by LLVM, which leaves the process's data segment about 700 MB large
    where the same kernels loaded from the cache leave it at about 160 MB (measured 2026-12-07).
    Under its memory limit the job could then not even start a thread. The kernels are in numba's
    cache now, so the new process loads them from there. Call it after the kernels are prepared and
    before the limit; once only."""
    size = data_mb()
    if size is None or size <= BASELINE_MB + KERNELS_MB + COMPILE_SLACK_MB or os.environ.get(RESTARTED_ENV):
        return
    log.info("%s: numba compiled its kernels in this process, which now holds %.0f MB of data; starting "
             "it again to load them from numba's cache", what, size)
    for handler in logging.getLogger().handlers:
        handler.flush()
    os.environ[RESTARTED_ENV] = "1"
    # Ignored until the new process installs its own handler (job_logging): an ignored signal stays
    # ignored across exec, a handled one would kill it.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    os.execv(sys.executable, [sys.executable, *sys.argv])


@contextlib.contextmanager
def job_logging(log_path: str | None) -> Iterator[None]:
    """Send the library's log to the job's log file (Snakemake shows it when the job fails; the
    console keeps to Snakemake's own progress); record any failure there before re-raising."""
    mode = "a" if os.environ.get(RESTARTED_ENV) else "w"  # a restarted job keeps its first start's lines
    handler = logging.FileHandler(log_path, mode=mode) if log_path else logging.StreamHandler(sys.stderr)
    logging.basicConfig(
        level=logging.INFO, handlers=[handler], force=True,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # SIGTERM (also sent to a whole process group, or by a cluster before its time limit) pauses
    # the run: Snakemake starts no new job, and this one finishes its output rather than lose it.
    # Ctrl-C (SIGINT) and SIGKILL still stop it at once.
    signal.signal(signal.SIGTERM, _finish_first)
    try:
        yield
    except Exception:
        log.exception("job failed")
        raise
    finally:
        log.info("peak RSS %.0f MB, CPU %.2f s", peak_rss_mb(), cpu_seconds())
        # The work is done; ignore SIGTERM while exiting. At shutdown CPython resets handlers it
        # installed to the default (die on SIGTERM), but leaves an ignored signal ignored.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)


def exit_job_process() -> None:
    """End a job's process at once, its work done: every output is written and closed, and the
    log is flushed here. The interpreter's own shutdown (tearing down numba, GDAL, matplotlib and
    every module, 0.15-0.25 s measured) would only delay the next job of the run, each job in turn.
    Call it last in a job's script, never in a process that goes on (a test, a library caller)."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _finish_first(signum, frame) -> None:
    STOP_STARTING.set()
    log.warning("SIGTERM received: finishing the running tiles, starting no new one (Ctrl-C or SIGKILL "
                "stop at once)")


def start_gdal_threads(threads: int) -> None:
    """Start GDAL's worker threads (its global pool, which decodes, compresses and warps) now,
    before the memory limit: a thread that cannot start under the limit leaves GDAL waiting for
    its work forever (seen: a read stuck in CPLJobQueue::WaitCompletion at 100 MB). Decoding a
    small tiled file with ``threads`` threads starts them; later reads and warps reuse them."""
    if threads < 2:
        return
    path = "/vsimem/workflow_lib_threads.tif"
    profile = {"driver": "GTiff", "width": 512, "height": 512, "count": 1, "dtype": "uint8", "tiled": True,
               "blockxsize": 256, "blockysize": 256, "compress": "deflate"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(np.zeros((1, 512, 512), np.uint8))
        with rasterio.Env(GDAL_NUM_THREADS=threads), rasterio.open(path) as src:
            src.read(1)
    rasterio.shutil.delete(path)


@contextlib.contextmanager
def memory_limit(mem_mb: int, enforce: bool, threads: int, what: str) -> Iterator[None]:
    """Hold the job to the ``mem_mb`` it was granted when ``enforce`` (the config's memory.enforce),
    and turn an out-of-memory error inside into a JobMemoryError naming ``what`` and the limit.

    RLIMIT_DATA bounds the heap and private mappings, where the pixel buffers, GDAL's block cache and
    the interpreter live: a job that needs more than its mem_mb gets an out-of-memory error, which is
    reported as such (Snakemake's --retries then runs it again with more), instead of growing until
    the machine swaps or the kernel's OOM killer picks some other process.
    """
    if enforce:
        start_gdal_threads(threads)
        _, hard = resource.getrlimit(resource.RLIMIT_DATA)
        limit = mem_mb * 2**20  # mem_mb is MiB to Snakemake's executors and to SLURM's --mem
        if hard != resource.RLIM_INFINITY:
            limit = min(limit, hard)
        resource.setrlimit(resource.RLIMIT_DATA, (limit, hard))
        log.info("memory limit: %d MB (mem_mb granted to this job)", mem_mb)
    try:
        yield
    except Exception as exc:
        if out_of_memory(exc):
            raise JobMemoryError(what, mem_mb, exc) from exc
        raise
