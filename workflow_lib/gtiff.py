"""GeoTIFF creation options shared by tiles, mosaics and the stack, and writing them."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import rasterio
from workflow_lib.errors import GDAL_ERRORS, OutputWriteError

BLOCK_SIZE = 256
# Tiles are intermediates, written once and read by the mosaic (twice, by GDAL's COG driver) and
# the stack: ZSTD at level 1 with the same predictor writes a 1024 x 1024 float32 tile 1.5-3x
# faster than DEFLATE at level 1 and reads it about 1.3x faster, for files of the same size
# (bench/README.md). The mosaics and the stack keep the codec of output.compress, which any
# GeoTIFF reader may need.
TILE_CODEC = "zstd"


def compression_options(compress: str, dtype: str, threads: int = 1, fast: bool = False,
                        level: int | None = None) -> dict:
    """Creation options (GeoTIFF driver) for ``compress``; ``fast``: the quickest level, for
    intermediate files (tiles are read by the mosaic and the stack: their size matters less than
    the time to write them); else ``level`` (None: GDAL's own default, DEFLATE 6 and ZSTD 9)."""
    if compress == "none":
        return {}
    options = {"compress": compress, "num_threads": str(max(threads, 1))}
    # Horizontal differencing shrinks smooth rasters by a third or more; floats need predictor 3.
    options["predictor"] = "3" if np.dtype(dtype).kind == "f" else "2"
    if fast:
        level = 1
    if compress == "zstd":
        options["zstd_level"] = str(level or 9)
    elif compress == "deflate" and level:
        options["zlevel"] = str(level)
    return options


def tile_profile(width: int, height: int, transform, crs, dtype: str, nodata: float, compress: str) -> dict:
    """A tiled single-band GeoTIFF on an exact target-grid window, compressed with TILE_CODEC unless
    ``compress`` is "none"."""
    return {
        "driver": "GTiff",
        "width": width,
        "height": height,
        "count": 1,
        "dtype": dtype,
        "crs": crs,
        "transform": transform,
        "nodata": nodata,
        "tiled": True,
        "blockxsize": BLOCK_SIZE,
        "blockysize": BLOCK_SIZE,
        "bigtiff": "if_safer",
        **compression_options("none" if compress == "none" else TILE_CODEC, dtype, fast=True),
    }


@contextlib.contextmanager
def open_output(tmp: str, out_path: str, profile: dict) -> Iterator:
    """Open ``tmp`` for writing; any failure to create, write or close it names ``out_path`` and
    the cause. The file is read back after closing: GDAL's GeoTIFF writer reports a failed block
    write (a full disk) only to its error log, raises nothing, and leaves a file of 0 bytes or with
    blocks missing, which must never be renamed into a tile."""
    try:
        dst = rasterio.open(tmp, "w", **profile)
    except (*GDAL_ERRORS, OSError) as exc:
        raise OutputWriteError(out_path, exc) from exc
    try:
        yield dst
    except BaseException:
        with contextlib.suppress(Exception):
            dst.close()
        raise
    try:
        dst.close()
        with rasterio.open(tmp) as written:
            for _, window in written.block_windows(1):
                written.read(window=window)
    except (*GDAL_ERRORS, OSError) as exc:
        raise OutputWriteError(out_path, exc) from exc
