"""The NumPy window engine: every area method onto unaligned grids within one CRS.

When target pixels are not whole blocks of input pixels (30 m land cover onto a 100 m grid: 3.33
pixels), each target pixel still covers a rectangle of input pixels in one CRS with north-up
grids: along each axis, the input pixels whose extent overlaps the target pixel's. GDAL's warper
finds them from coordinates computed relative to each chunk it warps, so a pixel whose overlap is
zero may come out 1e-12 and count or not depending on where the chunk began (measured: 1-3 % of
the picks onto a 30.8 m grid over 10 m pixels changed with the tiling). Here the ranges come from
the whole grid's transform, the same for every tile, and an overlap counts only above
``OVERLAP_TOL`` pixels. The picks (min, max, mode, med) then reduce the pixels exactly as
blocks are (engines.blocks: the same missing-pixel, tie and rounding rules), visited row by row as
GDAL does. ``average`` and ``sum`` weight each valid pixel by its overlap with the target pixel
(along y times along x, in input pixels) and add in the same fixed order for every pixel, so the
result does not depend on the tiling: GDAL's own weighted sum moved by 0.5 (174.8 against 174.3)
between tile sizes 16 and 64 on world.byte.tif onto a 2.1 degree grid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from workflow_lib.domain import Method
from workflow_lib.engines.blocks import reduce_views, to_output

# Overlaps of a target pixel with an input pixel below this, in input pixels, are rounding noise.
OVERLAP_TOL = 1e-9


@dataclass(frozen=True)
class AxisRanges:
    """Along one axis: target pixel i covers input pixels [start[i], end[i]), and spans [lo[i],
    hi[i]) in input pixel coordinates."""

    start: np.ndarray
    end: np.ndarray
    lo: np.ndarray
    hi: np.ndarray

    def weights(self, position: int) -> np.ndarray:
        """How much of input pixel start + position each target pixel covers (0 to 1)."""
        s = self.start + position
        w = np.minimum(self.hi, s + 1.0) - np.maximum(self.lo, s)
        return np.where(position < self.end - self.start, np.clip(w, 0.0, 1.0), 0.0)


def axis_ranges(src_origin: float, src_step: float, dst_origin: float, dst_step: float, first: int, count: int,
                raster_size: int) -> AxisRanges:
    """Input pixels under target pixels ``first .. first + count - 1`` of the whole grid, clipped to
    the raster. Computed from the grid's own origin and the pixel's index in it, so a pixel gets the
    same range whatever tile or chunk it is in."""
    index = first + np.arange(count, dtype=np.float64)
    lo = (dst_origin + index * dst_step - src_origin) / src_step
    hi = (dst_origin + (index + 1) * dst_step - src_origin) / src_step
    lo, hi = np.minimum(lo, hi), np.maximum(lo, hi)
    start = np.floor(lo + OVERLAP_TOL).astype(np.int64)
    end = np.ceil(hi - OVERLAP_TOL).astype(np.int64)
    return AxisRanges(np.clip(start, 0, raster_size), np.clip(end, 0, raster_size), lo, hi)


def reduce_windows(data: np.ndarray, valid: np.ndarray | None, rows: AxisRanges, cols: AxisRanges,
                   offset: tuple[int, int], method: Method, dst_dtype: str, dst_nodata: float) -> np.ndarray:
    """Reduce each target pixel's rectangle of input pixels. ``data`` holds the input from row
    ``offset[0]`` and column ``offset[1]``; ``valid`` where it holds values (None: everywhere)."""
    method = Method(method)
    shape = (rows.start.size, cols.start.size)
    height = int((rows.end - rows.start).max(initial=0))
    width = int((cols.end - cols.start).max(initial=0))
    if height == 0 or width == 0:
        return to_output(np.zeros(shape), np.zeros(shape, bool), dst_dtype, dst_nodata)
    r0 = rows.start - offset[0]
    c0 = cols.start - offset[1]
    if method.is_weighted:
        return _weighted(data, valid, rows, cols, r0, c0, height, width, method, dst_dtype, dst_nodata)
    views, masks = [], []
    for dy in range(height):
        in_rows = dy < rows.end - rows.start
        r = np.minimum(r0 + dy, data.shape[0] - 1)
        for dx in range(width):
            in_cols = dx < cols.end - cols.start
            c = np.minimum(c0 + dx, data.shape[1] - 1)
            views.append(data[r[:, None], c[None, :]])
            inside = in_rows[:, None] & in_cols[None, :]
            masks.append(inside if valid is None else inside & valid[r[:, None], c[None, :]])
    values, found = reduce_views(method, views, masks, shape)
    return to_output(values, found, dst_dtype, dst_nodata)


def _weighted(data, valid, rows, cols, r0, c0, height, width, method, dst_dtype, dst_nodata) -> np.ndarray:
    """Area-weighted sum (and mean) of the valid pixels under each target pixel, in float64."""
    shape = (rows.start.size, cols.start.size)
    total = np.zeros(shape)
    weight = np.zeros(shape)
    col_weights = [cols.weights(dx) for dx in range(width)]
    for dy in range(height):
        wy = rows.weights(dy)
        r = np.minimum(r0 + dy, data.shape[0] - 1)
        for dx in range(width):
            c = np.minimum(c0 + dx, data.shape[1] - 1)
            w = wy[:, None] * col_weights[dx][None, :]
            if valid is not None:
                w = np.where(valid[r[:, None], c[None, :]], w, 0.0)
            values = data[r[:, None], c[None, :]].astype(np.float64)
            total += np.where(w > 0, values, 0.0) * w  # NaN under a zero weight must not spread
            weight += w
    found = weight > 0
    if method is Method.AVERAGE:
        with np.errstate(invalid="ignore", divide="ignore"):
            total = np.where(found, total / np.where(found, weight, 1.0), 0.0)
    return to_output(total, found, dst_dtype, dst_nodata)


def window_cost(src_dtype: str, kx: float, ky: float) -> float:
    """Bytes per target pixel: its rectangle of input pixels gathered once per position (values
    and masks), the method's working arrays, and the read they come from."""
    n = (math.ceil(kx) + 1) * (math.ceil(ky) + 1)
    return n * (np.dtype(src_dtype).itemsize * 2 + 2 + 9) + 48 + kx * ky * (np.dtype(src_dtype).itemsize + 1)
