"""Named errors whose messages say which dataset, which file, and what to do."""

from rasterio._err import CPLE_BaseError
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
