"""Named errors whose messages say which dataset, which file, and what to do."""

import errno
import os
import shutil
from collections.abc import Iterator

from rasterio._err import CPLE_BaseError, CPLE_OutOfMemoryError
from rasterio.errors import RasterioError

# What GDAL raises through rasterio: most calls raise RasterioError subclasses, but some (copies,
# block reads) surface GDAL's own error classes, which live in rasterio's private _err module
# (rasterio 1.4.4 is pinned).
GDAL_ERRORS = (RasterioError, CPLE_BaseError)


class WorkflowLibError(Exception):
    """Base class of every error this library raises on purpose."""


class ConfigError(WorkflowLibError):
    """The configuration is wrong; raised before any job runs."""


class InputRasterError(WorkflowLibError):
    """An input raster cannot be used as it is."""

    def __init__(self, dataset: str, path: str, problem: str):
        self.dataset = dataset
        self.path = path
        self.problem = problem
        super().__init__(f"dataset '{dataset}' ({path}): {problem}")


# Free space below which a failed write is put down to a full file system: GDAL's GeoTIFF writer
# reports only "Write error at scanline N" (libtiff prints the errno to stderr, not into the error).
FULL_DISK_BYTES = 4 * 2**20


def exception_chain(exc: BaseException | None) -> Iterator[BaseException]:
    """``exc`` and the errors it was raised from (its cause, else its context), each once."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def gdal_cause(exc: BaseException) -> str:
    """What went wrong, in GDAL's own words: rasterio raises "Read failed. See previous exception
    for details." from the errors GDAL reported, the first of which (the deepest) names the cause."""
    messages = [text for text in (str(e).strip() for e in exception_chain(exc))
                if text and "see previous exception" not in text.lower()]
    return messages[-1] if messages else "no reason given"


def write_failure(path: str, cause: BaseException) -> str:
    """Why writing ``path`` failed: the system's words for an OSError, "No space left on device"
    when the file system is (nearly) full, else GDAL's cause."""
    if isinstance(cause, OSError) and cause.errno is not None:
        return f"{os.strerror(cause.errno)} (on {os.path.dirname(path) or '.'})"
    folder = os.path.dirname(os.path.abspath(path))
    while folder and not os.path.isdir(folder):
        folder = os.path.dirname(folder)
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        free = None
    if free is not None and free < FULL_DISK_BYTES:
        return f"{os.strerror(errno.ENOSPC)} ({free // 1024} kB free on {folder}; GDAL: {gdal_cause(cause)})"
    return gdal_cause(cause)


class OutputWriteError(WorkflowLibError):
    """An output could not be written (disk full, file size limit, permissions)."""

    def __init__(self, path: str, cause: BaseException):
        self.path = path
        super().__init__(f"writing {path} failed: {write_failure(path, cause)}; nothing was left under that name")


class TileReadError(WorkflowLibError):
    """A tile that a batch made cannot be read back by a later job (removed or damaged since)."""


class BatchError(WorkflowLibError):
    """Some tiles of a batch failed (each with its own message in the job's log and the database)."""


class JobMemoryError(WorkflowLibError):
    """A job needed more memory than the limit it was given (its granted mem_mb)."""

    def __init__(self, what: str, mem_mb: int, cause: BaseException):
        self.mem_mb = mem_mb
        super().__init__(
            f"{what} ran out of memory: its limit is {mem_mb} MB (mem_mb) and it needed more ({cause!r}); "
            "run with --retries N to retry it with more memory (mem_mb grows with each attempt), "
            "or raise memory.tile_mb / memory.mosaic_mb in the config"
        )


def out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc``, or an error it was raised from, is Python's or GDAL's out-of-memory error."""
    for error in exception_chain(exc):
        text = str(error).lower()
        # No memory left for a new thread's stack (under RLIMIT_DATA): Python's "can't start new
        # thread", GDAL's "CPLCreateJoinableThread() failed" (its multithreaded warp).
        # libtiff's failed allocations: "TIFFFillStrip:No space for data buffer at scanline N".
        if isinstance(error, (MemoryError, CPLE_OutOfMemoryError)) or "out of memory" in text or \
                "can't start new thread" in text or "cplcreatejoinablethread() failed" in text or \
                ":no space for " in text:
            return True
    return False
