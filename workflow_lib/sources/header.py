"""What the workflow knows of an input raster without reading a single pixel."""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from functools import cached_property

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.errors import RasterioIOError

from workflow_lib.errors import InputRasterError
from workflow_lib.sources.paths import absolute, local_file, stamp
from workflow_lib.sources.remote import explain, gdal_options, is_remote

# GDAL's warper cannot resample complex numbers with most methods, and nothing in this workflow's
# field (elevation, climate, land cover, ranges) needs them.
_SUPPORTED_KINDS = "biuf"


@dataclass(frozen=True)
class RasterHeader:
    path: str
    size_bytes: int
    mtime_ns: int
    driver: str
    crs_wkt: str  # as the file declares it; ``crs`` is it parsed (once)
    transform: Affine
    width: int
    height: int
    count: int
    dtype: str  # of the selected band
    nodata: float | None  # declared nodata of the selected band; NaN stays NaN
    block_shape: tuple[int, int]  # (rows, cols) of the selected band
    descriptions: tuple[str, ...] = ()  # of every band ("" where none)

    @cached_property
    def crs(self) -> CRS:
        return CRS.from_wkt(self.crs_wkt)

    @property
    def is_north_up(self) -> bool:
        t = self.transform
        return t.b == 0 and t.d == 0 and t.a > 0 and t.e < 0

    @property
    def pixel_size(self) -> tuple[float, float]:
        """Lengths of a pixel's sides in CRS units (also for rotated transforms)."""
        t = self.transform
        return math.hypot(t.a, t.d), math.hypot(t.b, t.e)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["transform"] = list(self.transform)[:6]  # GDAL's order: a, b, c, d, e, f
        data["nodata"] = json_number(self.nodata)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "RasterHeader":
        data = dict(data)
        data["transform"] = Affine(*data["transform"][:6])
        data["block_shape"] = tuple(data["block_shape"])
        data["descriptions"] = tuple(data.get("descriptions", ()))
        data["nodata"] = number_from_json(data["nodata"])
        return cls(**data)


def read_header(dataset: str, path: str, band: int = 1) -> RasterHeader:
    """Read one raster's header and check that the workflow can use it.

    Raises InputRasterError naming the dataset, the file and the problem.
    """
    local = local_file(path)
    if local is not None and not os.path.exists(local):
        raise InputRasterError(dataset, path, "file not found; check datasets.%s.path in the config" % dataset)
    try:
        size, mtime = stamp(path)
        with rasterio.Env(**gdal_options(path)), rasterio.open(absolute(path)) as src:
            if not 1 <= band <= src.count:
                raise InputRasterError(dataset, path, f"band {band} requested but the file has {src.count} band(s)")
            if src.transform.is_identity:
                # Ground control points or RPCs alone would need another kind of warp; an identity
                # transform would silently put the raster at the origin of its CRS.
                how = "only by ground control points" if src.gcps[0] else "by no geotransform"
                raise InputRasterError(
                    dataset, path, f"the raster is georeferenced {how}; warp it onto a geotransform first "
                    "(gdalwarp in.tif out.tif)",
                )
            if src.crs is None:
                raise InputRasterError(
                    dataset, path, "the raster has no CRS; assign one (gdal_edit.py -a_srs EPSG:...) before using it"
                )
            dtype = src.dtypes[band - 1]
            if np.dtype(dtype).kind not in _SUPPORTED_KINDS:
                raise InputRasterError(dataset, path, f"data type {dtype} is not supported (use integer or real data)")
            nodata = src.nodatavals[band - 1]
            header = RasterHeader(
                path=absolute(path),
                size_bytes=size,
                mtime_ns=mtime,
                driver=src.driver,
                crs_wkt=src.crs.to_wkt(),
                transform=src.transform,
                width=src.width,
                height=src.height,
                count=src.count,
                dtype=dtype,
                nodata=None if nodata is None else float(nodata),
                # Not the overviews: for a VRT, counting them opens every source file, which on a
                # hung mount would hang the plan; the workflow never reads overviews anyway.
                block_shape=tuple(src.block_shapes[band - 1]),
                descriptions=tuple(d or "" for d in src.descriptions),
            )
    except RasterioIOError as exc:
        if is_remote(path):
            raise InputRasterError(dataset, path, explain(path, str(exc))) from exc
        raise InputRasterError(dataset, path, f"cannot be opened as a raster: {exc}") from exc
    check_nodata_fits(dataset, path, header.nodata, header.dtype, "declared nodata")
    return header


def check_nodata_fits(dataset: str, path: str, nodata: float | None, dtype: str, what: str) -> None:
    """A nodata value outside the range of the data type can never match a pixel: refuse it."""
    if nodata is None or math.isnan(nodata):
        if nodata is not None and np.dtype(dtype).kind in "iu":
            raise InputRasterError(dataset, path, f"{what} NaN is impossible for integer type {dtype}")
        return
    kind = np.dtype(dtype).kind
    if kind in "iu":
        info = np.iinfo(dtype)
        if nodata != int(nodata) or not info.min <= nodata <= info.max:
            raise InputRasterError(
                dataset, path, f"{what} {nodata:g} does not fit data type {dtype} (range {info.min}..{info.max})"
            )
    elif kind == "f" and abs(nodata) > np.finfo(dtype).max:
        raise InputRasterError(dataset, path, f"{what} {nodata:g} does not fit data type {dtype}")


def json_number(value: float | None):
    # JSON has no NaN; keep it as a string so that headers round-trip exactly.
    if value is not None and math.isnan(value):
        return "nan"
    return value


def number_from_json(value):
    return float("nan") if value == "nan" else value


def changed_since_planning(header: RasterHeader) -> str | None:
    """Why the file under ``header`` is no longer the one the run planned with (another size or
    modification time, or gone), or None. A job checks before and after it reads, so that a file
    replaced during a run never gives tiles made from the new pixels on the old header. A remote
    object is asked for its size, ETag and Last-Modified (one HEAD request)."""
    try:
        size, mtime = stamp(header.path)
    except OSError as exc:
        return f"is gone since the run was planned ({exc.strerror}); run again"
    if (size, mtime) == (header.size_bytes, header.mtime_ns):
        return None
    if is_remote(header.path) and (size, mtime) == (-1, -1):
        return ("cannot be asked whether it is still the object the run planned with (the server answered no "
                "HEAD request, after GDAL's retries): run again")
    if is_remote(header.path):
        return ("changed since the run was planned (another size, ETag or Last-Modified on the server): run again, "
                "and the next run plans with it")
    return (f"changed since the run was planned (size {header.size_bytes} -> {size} bytes, modification time "
            f"{'moved' if mtime != header.mtime_ns else 'the same'}): run again, and the next run plans with it")
