"""Named errors whose messages say which dataset, which file, and what to do."""

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


class OutputWriteError(WorkflowLibError):
    """An output could not be written (disk full, file size limit, permissions)."""

    def __init__(self, path: str, cause: BaseException):
        self.path = path
        super().__init__(f"writing {path} failed: {cause}; nothing was left under that name")


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
    seen = set()
    while exc is not None and id(exc) not in seen:
        text = str(exc).lower()
        # No memory left for a new thread's stack (under RLIMIT_DATA): Python's "can't start new
        # thread", GDAL's "CPLCreateJoinableThread() failed" (its multithreaded warp).
        if isinstance(exc, (MemoryError, CPLE_OutOfMemoryError)) or "out of memory" in text or \
                "can't start new thread" in text or "cplcreatejoinablethread() failed" in text:
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False
