"""One call of GDAL's warper on one chunk held in memory.

Within one CRS the source-to-target mapping is affine and ``rasterio.warp.reproject`` computes it
exactly. Across CRSs GDAL approximates the mapping to within an error threshold (gdalwarp's
``-et``), and rasterio 1.4's ``reproject`` fixes that threshold at 0.125 pixel whatever it is
asked; ``WarpedVRT`` honours it, so cross-CRS chunks are warped through a ``WarpedVRT`` over an
in-memory copy of the chunk's source.
"""

from __future__ import annotations

import dataclasses
import math
import warnings

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.vrt import WarpedVRT
from rasterio.warp import reproject

from workflow_lib.engines.blocks import to_output
from workflow_lib.planning.settings import WarpSettings, rounded_from_float64

# rasterio 1.4.4 cannot build a WarpedVRT with an explicit transform and a threshold of exactly 0;
# at 1e-6 pixel GDAL's approximation subdivides down to exact transformations.
EXACT_THRESHOLD = 1e-6

# Significant bits kept before rounding a computed value to an integer (see stable_round).
KEPT_BITS = 30


def stable_round(values: np.ndarray) -> np.ndarray:
    """``values`` with their last bits cleared: keep KEPT_BITS significant bits.

    GDAL computes a chunk's kernel weights from the chunk's own origin, so one target pixel comes
    out 1e-12 apart (relative) depending on where its chunk began; a mean that sits on x.5 would
    then round either way and an integer result would depend on the tiling. 30 bits hold every
    x.5 below 2**29 exactly and are far coarser than that noise, so the value snaps back to x.5
    and rounds (half up, as GDAL) the same way in every tiling.
    """
    mantissa, exponent = np.frexp(values)
    return np.ldexp(np.round(mantissa * 2.0 ** KEPT_BITS) / 2.0 ** KEPT_BITS, exponent)


def warp_chunk(
    data: np.ndarray,
    src_transform: Affine,
    src_crs: CRS,
    src_nodata: float | None,
    dst_transform: Affine,
    dst_crs: CRS,
    shape: tuple[int, int],
    settings: WarpSettings,
    threads: int,
    mem_limit_mb: int,
    valid: np.ndarray | None = None,
) -> np.ndarray:
    """Warp ``data`` (one band) onto ``shape`` pixels of ``dst_transform``; nodata where nothing maps.

    ``valid``: where ``data`` holds values, instead of ``src_nodata``: given to GDAL as the source's
    mask band. (Not as a NumPy masked array: rasterio turns that into an alpha band, and GDAL
    weights sums by alpha, so a uint16 sum came out 257 times too small.)
    """
    if rounded_from_float64(settings):
        # Warp into float64, round here: the same integer whatever the chunk (stable_round).
        real = dataclasses.replace(settings, dst_dtype="float64", dst_nodata=math.nan)
        values = warp_chunk(data, src_transform, src_crs, src_nodata, dst_transform, dst_crs, shape, real,
                            threads, mem_limit_mb, valid)
        found = ~np.isnan(values)
        return to_output(stable_round(np.where(found, values, 0.0)), found, settings.dst_dtype,
                         settings.dst_nodata)
    warp_options = {"XSCALE": repr(settings.x_scale), "YSCALE": repr(settings.y_scale)}
    resampling = Resampling[settings.method.value]
    if settings.same_crs and valid is None:
        out = np.full(shape, settings.dst_nodata, dtype=settings.dst_dtype)
        reproject(
            data, out, src_transform=src_transform, src_crs=src_crs, src_nodata=src_nodata,
            dst_transform=dst_transform, dst_crs=dst_crs, dst_nodata=settings.dst_nodata,
            resampling=resampling, num_threads=threads, init_dest_nodata=True,
            warp_mem_limit=mem_limit_mb, **warp_options,
        )
        return out
    height, width = data.shape
    with warnings.catch_warnings():
        # A MEM dataset is only reachable in write mode in rasterio 1.4; reading it is what we do.
        warnings.filterwarnings("ignore", message="Source dataset should be opened in read-only mode")
        with rasterio.open(
            "/vsimem/workflow_lib_chunk", "w", driver="MEM", width=width, height=height, count=1,
            dtype=data.dtype, crs=src_crs, transform=src_transform, nodata=src_nodata,
        ) as mem:
            mem.write(data, 1)
            if valid is not None:
                mem.write_mask(valid)
            if settings.same_crs:
                out = np.full(shape, settings.dst_nodata, dtype=settings.dst_dtype)
                reproject(
                    rasterio.band(mem, 1), out, dst_transform=dst_transform, dst_crs=dst_crs,
                    dst_nodata=settings.dst_nodata, resampling=resampling, num_threads=threads,
                    init_dest_nodata=True, warp_mem_limit=mem_limit_mb, **warp_options,
                )
                return out
            with WarpedVRT(
                mem, crs=dst_crs, transform=dst_transform, width=shape[1], height=shape[0],
                src_nodata=src_nodata, nodata=settings.dst_nodata, dtype=settings.dst_dtype,
                resampling=resampling, tolerance=max(settings.error_threshold, EXACT_THRESHOLD),
                warp_mem_limit=mem_limit_mb, init_dest_nodata=True, num_threads=threads, **warp_options,
            ) as vrt:
                return vrt.read(1)
