"""Moving points between CRSs when some of them cannot be moved.

``rasterio.warp.transform`` raises for the whole batch when a single point lies outside the target
projection's domain ("Point outside of projection domain"), and PROJ returns wrapped or wild values
for points far outside it without complaint. Planning moves global outlines into local projections
and local grids into global CRSs, so it needs, for each point, a position and whether to trust it:
``transform_points`` marks the points that failed, ``trusted_transform`` also those that do not
come back where they started (a round trip), and wraps longitudes where a geographic raster
extends beyond -180..180 (0..360 climate grids, Pacific rasters).
"""

from __future__ import annotations

import math

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.errors import CRSError
from rasterio.warp import transform as _rasterio_transform

from workflow_lib.errors import GDAL_ERRORS

# A point that comes back from a round trip further than this, in pixels, is not trusted.
ROUND_TRIP_PX = 0.01
# PROJ's answer for some points outside a projection's domain; nothing real is this far.
_HUGE = 1e15


def transform_points(src_crs: CRS, dst_crs: CRS, xs, ys) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``xs, ys`` moved from ``src_crs`` into ``dst_crs``, and where that succeeded.

    A batch that fails is split in halves until the points that fail are found (they are
    usually contiguous, so this costs a few calls per region of failures, ~0.15 ms each).
    """
    xs = np.asarray(xs, dtype=np.float64)
    ys = np.asarray(ys, dtype=np.float64)
    out_x = np.full(xs.shape, np.nan)
    out_y = np.full(ys.shape, np.nan)
    if src_crs == dst_crs:
        out_x[...], out_y[...] = xs, ys
    else:
        finite = np.isfinite(xs) & np.isfinite(ys)
        index = np.flatnonzero(finite.ravel())
        with rasterio.Env():  # GDAL's messages go to Python's logging, not to the console
            _transform_into(src_crs, dst_crs, xs.ravel(), ys.ravel(), index, out_x.reshape(-1), out_y.reshape(-1))
    ok = np.isfinite(out_x) & np.isfinite(out_y) & (np.abs(out_x) < _HUGE) & (np.abs(out_y) < _HUGE)
    out_x[~ok] = np.nan
    out_y[~ok] = np.nan
    return out_x, out_y, ok


def _transform_into(src_crs, dst_crs, xs, ys, index, out_x, out_y) -> None:
    stack = [index]
    while stack:
        part = stack.pop()
        if part.size == 0:
            continue
        try:
            tx, ty = _rasterio_transform(src_crs, dst_crs, xs[part], ys[part])
        except GDAL_ERRORS:
            if part.size > 1:
                half = part.size // 2
                stack.extend((part[half:], part[:half]))
            continue
        out_x[part] = tx
        out_y[part] = ty


def wrap_longitudes(lon: np.ndarray, centre: float) -> np.ndarray:
    """Longitudes moved by whole turns to within 180 degrees of ``centre``."""
    return lon - 360.0 * np.round((lon - centre) / 360.0)


def trusted_transform(
    src_crs: CRS, src_pixel: Affine, dst_crs: CRS, dst_pixel: Affine, cols, rows, lon_centre: float | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pixel positions (``cols``, ``rows``) of ``src_pixel`` moved to pixel positions of ``dst_pixel``.

    Returns (cols, rows, trusted). A point is trusted when it transforms and comes back within
    ``ROUND_TRIP_PX`` pixels of where it started. ``lon_centre``: when ``dst_crs`` is geographic,
    longitudes are wrapped to within 180 degrees of it (the centre of a raster in that CRS).
    """
    with np.errstate(invalid="ignore", over="ignore"):  # points that did not move are NaN: they stay so
        return _trusted_transform(src_crs, src_pixel, dst_crs, dst_pixel, cols, rows, lon_centre)


def _trusted_transform(src_crs, src_pixel, dst_crs, dst_pixel, cols, rows, lon_centre):
    cols = np.asarray(cols, dtype=np.float64)
    rows = np.asarray(rows, dtype=np.float64)
    x, y = src_pixel @ (cols, rows)
    tx, ty, ok = transform_points(src_crs, dst_crs, x, y)
    if lon_centre is not None and dst_crs.is_geographic:
        tx = np.where(ok, wrap_longitudes(tx, lon_centre), tx)
    if src_crs != dst_crs:
        bx, by, back = transform_points(dst_crs, src_crs, tx, ty)
        if src_crs.is_geographic:
            bx = np.where(back, wrap_longitudes(bx, np.where(np.isfinite(x), x, 0.0)), bx)
        back_cols, back_rows = ~src_pixel @ (bx, by)
        error = np.hypot(back_cols - cols, back_rows - rows)
        if src_crs.is_geographic:
            # At a pole every longitude is the same point: only the latitude must come back.
            polar = np.abs(y) >= 90.0 - 1e-9
            error = np.where(polar, np.abs(by - y) / _degree_per_px(src_pixel), error)
        ok &= back & (error <= ROUND_TRIP_PX)
    dst_cols, dst_rows = ~dst_pixel @ (tx, ty)
    dst_cols = np.where(ok, dst_cols, np.nan)
    dst_rows = np.where(ok, dst_rows, np.nan)
    return dst_cols, dst_rows, ok


def _degree_per_px(pixel: Affine) -> float:
    return max(math.hypot(pixel.b, pixel.e), 1e-12)


def parse_crs(text: str) -> CRS:
    """A CRS from user input, with GDAL's and PROJ's complaints kept off the console."""
    with rasterio.Env():
        return CRS.from_user_input(text)


__all__ = ["CRSError", "parse_crs", "transform_points", "trusted_transform", "wrap_longitudes"]
