"""Which tiles of the target grid an input raster touches, from its header alone."""

from __future__ import annotations

import numpy as np
from rasterio.crs import CRS
from rasterio.features import rasterize
from rasterio.warp import transform as transform_points

from workflow_lib.planning.grid import TargetGrid, tile_id
from workflow_lib.sources.header import RasterHeader

# Points per edge of the footprint: enough for the curvature of a continental raster seen from
# another projection to stay well inside one tile.
_EDGE_POINTS = 256


def footprint_ring(header: RasterHeader, dst_crs: CRS, margin_px: float) -> list[tuple[float, float]]:
    """The raster's outline, densified and moved into ``dst_crs``.

    The outline is taken ``margin_px`` source pixels outside the raster so that target pixels whose
    area only grazes the raster's edge are not lost to rounding. Points that cannot be transformed
    (beyond the target projection's domain) are dropped.
    """
    w, h = header.width, header.height
    t = np.linspace(0.0, 1.0, _EDGE_POINTS, endpoint=False)
    lo, hi_x, hi_y = -margin_px, w + margin_px, h + margin_px
    cols = np.concatenate([lo + t * (hi_x - lo), np.full_like(t, hi_x), hi_x - t * (hi_x - lo), np.full_like(t, lo)])
    rows = np.concatenate([np.full_like(t, lo), lo + t * (hi_y - lo), np.full_like(t, hi_y), hi_y - t * (hi_y - lo)])
    a, b, c, d, e, f = header.transform
    xs = a * cols + b * rows + c
    ys = d * cols + e * rows + f
    if header.crs == dst_crs:
        tx, ty = xs, ys
    else:
        tx, ty = (np.asarray(v) for v in transform_points(header.crs, dst_crs, xs, ys))
    keep = np.isfinite(tx) & np.isfinite(ty)
    ring = list(zip(tx[keep].tolist(), ty[keep].tolist()))
    if ring:
        ring.append(ring[0])
    return ring


def ring_bounds(ring: list[tuple[float, float]]) -> tuple[float, float, float, float] | None:
    if len(ring) < 4:
        return None
    xs, ys = zip(*ring)
    return min(xs), min(ys), max(xs), max(ys)


def touched_tiles(grid: TargetGrid, ring: list[tuple[float, float]]) -> list[str]:
    """Ids of the tiles that the footprint polygon touches, in row-major order."""
    if len(ring) < 4:
        return []
    mask = rasterize(
        [({"type": "Polygon", "coordinates": [ring]}, 1)],
        out_shape=(grid.tile_rows, grid.tile_cols),
        transform=grid.tile_transform,
        all_touched=True,
        dtype="uint8",
    )
    return [tile_id(int(r), int(c)) for r, c in np.argwhere(mask)]


def pixel_scale(header: RasterHeader, grid: TargetGrid) -> tuple[float, float]:
    """Target pixels per source pixel along x and y, measured at the raster's centre.

    This is GDAL's warper XSCALE/YSCALE. GDAL would derive it anew for every chunk it warps; fixing
    it once per dataset is what makes tiles join without seams.
    """
    src = header.affine
    cx, cy = src @ (header.width / 2.0, header.height / 2.0)
    res_x, res_y = grid.resolution
    if header.crs == grid.crs:
        tx, ty = [cx, cx + res_x, cx], [cy, cy, cy - res_y]
    else:
        (gx,), (gy,) = transform_points(header.crs, grid.crs, [cx], [cy])
        tx, ty = transform_points(grid.crs, header.crs, [gx, gx + res_x, gx], [gy, gy, gy - res_y])
    inverse = ~src
    (c0, r0), (c1, r1), (c2, r2) = (inverse @ (x, y) for x, y in zip(tx, ty))
    # Source pixels spanned by one target pixel along the target's x and y axes.
    span_x = float(np.hypot(c1 - c0, r1 - r0))
    span_y = float(np.hypot(c2 - c0, r2 - r0))
    if not (span_x > 0 and span_y > 0 and np.isfinite(span_x) and np.isfinite(span_y)):
        return 1.0, 1.0
    return 1.0 / span_x, 1.0 / span_y


def union_bounds(rings: list[list[tuple[float, float]]]) -> tuple[float, float, float, float] | None:
    boxes = [b for b in (ring_bounds(r) for r in rings) if b is not None]
    if not boxes:
        return None
    return (
        min(b[0] for b in boxes),
        min(b[1] for b in boxes),
        max(b[2] for b in boxes),
        max(b[3] for b in boxes),
    )

