"""Where an input raster lands on the target grid, from its header alone.

Two directions, because neither alone is right everywhere:

- **backwards**, from the target: every tile corner is moved into the raster's pixel space and
  tested against the raster (plus a margin). This is how GDAL's warper itself works (target pixel
  to source pixel), it is defined wherever the target grid is, and it finds every tile that lies
  inside the raster, however large the raster and whatever happens to its outline far away (a
  global layer onto a UTM zone: most of its outline is outside the zone's projection domain);
- **forwards**, from the raster: its outline, densified until consecutive points are less than a
  quarter of a tile apart on the target grid, is moved onto the grid and every tile it crosses is
  marked. This finds the tiles the outline passes through, including a raster smaller than one
  target pixel (no tile corner falls inside it).

A tile that meets the raster either contains part of its outline or lies wholly inside it, so the
two together find every tile where data can land. Only points that survive a round trip are
trusted (workflow_lib.coords): a projection far outside its domain may return numbers that do not
mean anything.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np
from affine import Affine
from rasterio.coords import BoundingBox
from rasterio.crs import CRS
from rasterio.windows import Window

from workflow_lib.coords import transform_points, trusted_transform, wrap_longitudes
from workflow_lib.domain import Method
from workflow_lib.planning.grid import TargetGrid
from workflow_lib.sources.header import RasterHeader

GEOGRAPHIC = CRS.from_epsg(4326)
# Outline points per edge before refinement, and the refinement's limits.
_EDGE_POINTS = 64
_MAX_ROUNDS = 40
_MAX_POINTS = 4_000_000
# Consecutive outline points on the grid must be closer than this, in tiles.
_STEP_TILES = 0.25
# Sample points across the raster (per side) for its bounds in the target CRS: the bounds of a
# curved footprint may lie inside it (a pole, a fold), not only on its outline.
_INTERIOR_POINTS = 33
_BBOX = re.compile(r"BBOX\[\s*(-?[\d.]+)\s*,\s*(-?[\d.]+)\s*,\s*(-?[\d.]+)\s*,\s*(-?[\d.]+)\s*\]")


@dataclass(frozen=True)
class AreaOfUse:
    """Where a CRS is meant to be used, in degrees; ``west`` > ``east`` across the antimeridian."""

    west: float
    south: float
    east: float
    north: float

    def contains(self, lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
        lon = wrap_longitudes(np.asarray(lon, dtype=float), 0.0)
        inside_lat = (lat >= self.south) & (lat <= self.north)
        if self.west <= self.east:
            return inside_lat & (lon >= self.west) & (lon <= self.east)
        return inside_lat & ((lon >= self.west) | (lon <= self.east))

    def outline(self, points_per_edge: int = 256) -> tuple[np.ndarray, np.ndarray]:
        """Points along its edges and across it, longitudes increasing eastwards across 180."""
        east = self.east if self.east >= self.west else self.east + 360.0
        t = np.linspace(0.0, 1.0, points_per_edge)
        lon, lat = np.meshgrid(self.west + t * (east - self.west), self.south + t * (self.north - self.south))
        return lon.ravel(), lat.ravel()

    def __str__(self) -> str:
        return f"lon {self.west:g}..{self.east:g}, lat {self.south:g}..{self.north:g}"


def area_of_use(crs: CRS) -> AreaOfUse | None:
    """The CRS's area of use from PROJ's database (its WKT2 BBOX), or None for a custom CRS."""
    try:
        wkt = crs.to_wkt(version="WKT2_2019")
    except Exception:  # noqa: BLE001 - a CRS that cannot be written as WKT2 has no known area of use
        return None
    found = _BBOX.findall(wkt)
    if not found:
        return None
    south, west, north, east = map(float, found[-1])  # the CRS's own usage comes last
    return AreaOfUse(west, south, east, north)


@dataclass(frozen=True)
class Bounds:
    """A raster's footprint in the target CRS: its bounding box, and whether (and to what) it had
    to be clipped because part of the raster lies where the target CRS is not defined."""

    box: BoundingBox | None
    clipped_to: AreaOfUse | None = None
    untrusted: bool = False  # part of the outline could not be moved and no area of use is known


def raster_centre_lon(header: RasterHeader) -> float | None:
    """For a geographic raster, the longitude of its centre: longitudes moved into the raster are
    wrapped around it (a raster may span 0..360 or 120..240)."""
    if not header.crs.is_geographic:
        return None
    x, _ = header.transform @ (header.width / 2.0, header.height / 2.0)
    return float(x)


def _grid_centre_lon(grid: TargetGrid) -> float | None:
    if not grid.crs.is_geographic:
        return None
    left, _, right, _ = grid.bounds
    return (left + right) / 2.0


def _outline_pixels(width: int, height: int, margin: float, n: int) -> tuple[np.ndarray, np.ndarray]:
    """A closed ring (last point not repeated) around a raster, in its pixel coordinates."""
    t = np.linspace(0.0, 1.0, n, endpoint=False)
    lo, hx, hy = -margin, width + margin, height + margin
    cols = np.concatenate([lo + t * (hx - lo), np.full(n, hx), hx - t * (hx - lo), np.full(n, lo)])
    rows = np.concatenate([np.full(n, lo), lo + t * (hy - lo), np.full(n, hy), hy - t * (hy - lo)])
    return cols, rows


def _sample_pixels(header: RasterHeader) -> tuple[np.ndarray, np.ndarray]:
    """The outline and a lattice across the raster, in its pixel coordinates."""
    cols, rows = _outline_pixels(header.width, header.height, 0.0, 256)
    t = np.linspace(0.0, 1.0, _INTERIOR_POINTS)
    gc, gr = np.meshgrid(t * header.width, t * header.height)
    cols, rows = np.concatenate([cols, gc.ravel()]), np.concatenate([rows, gr.ravel()])
    if header.crs.is_geographic:
        # Keep latitudes on the globe: a header a hair beyond the pole would fail everywhere.
        x, y = header.transform @ (cols, rows)
        y = np.clip(y, -90.0, 90.0)
        cols, rows = ~header.transform @ (x, y)
    return cols, rows


def footprint_bounds(header: RasterHeader, dst_crs: CRS, lon_centre: float | None = None) -> Bounds:
    """The raster's bounding box in ``dst_crs``.

    When part of the raster cannot be expressed in ``dst_crs`` (outside its projection's domain,
    or not coming back from a round trip), or its footprint there is more than twice as wide or
    tall as the CRS's area of use (a global layer onto a UTM zone, a pole onto Mercator), the
    footprint is clipped to the area of use; if the CRS declares none, ``box`` is None and
    ``untrusted`` is set, so that the caller can ask for an explicit extent.
    """
    if header.crs == dst_crs:
        return Bounds(_affine_bounds(header.transform, header.width, header.height))
    if lon_centre is None and dst_crs.is_geographic:  # keep the footprint in one piece around the raster
        cx, cy = header.transform @ (header.width / 2.0, header.height / 2.0)
        lon, _, found = transform_points(header.crs, dst_crs, [cx], [cy])
        lon_centre = float(lon[0]) if found[0] else None
    cols, rows = _sample_pixels(header)
    x, y, ok = trusted_transform(header.crs, header.transform, dst_crs, Affine.identity(), cols, rows, lon_centre)
    use = area_of_use(dst_crs)
    use_box = None if use is None else _area_of_use_box(use, dst_crs, lon_centre)
    box = _box(x[ok], y[ok])
    if ok.all() and (use_box is None or not _much_larger(box, use_box)):
        return Bounds(box)
    if use is None or use_box is None:
        return Bounds(None, untrusted=True)
    # The part of the raster inside the area of use: the raster's own points there, and the
    # area of use's points that fall inside the raster.
    lon, lat, geo_ok = transform_points(header.crs, GEOGRAPHIC, *(header.transform @ (cols, rows)))
    keep = ok & geo_ok & use.contains(lon, lat)
    ulon, ulat = use.outline()
    centre = raster_centre_lon(header)
    src_x, src_y, src_ok = transform_points(GEOGRAPHIC, header.crs, ulon, ulat)
    if centre is not None:
        src_x = wrap_longitudes(src_x, centre)
    ucols, urows = ~header.transform @ (src_x, src_y)
    inside = src_ok & (ucols >= 0) & (ucols <= header.width) & (urows >= 0) & (urows <= header.height)
    ux, uy, u_ok = trusted_transform(header.crs, header.transform, dst_crs, Affine.identity(), ucols[inside],
                                     urows[inside], lon_centre)
    xs = np.concatenate([x[keep], ux[u_ok]])
    ys = np.concatenate([y[keep], uy[u_ok]])
    return Bounds(_box(xs, ys) if xs.size else None, clipped_to=use)


def _area_of_use_box(use: AreaOfUse, crs: CRS, lon_centre: float | None) -> BoundingBox | None:
    lon, lat = use.outline()
    x, y, ok = transform_points(GEOGRAPHIC, crs, lon, lat)
    if lon_centre is not None and crs.is_geographic:
        x = wrap_longitudes(x, lon_centre)
    return _box(x[ok], y[ok])


def _much_larger(box: BoundingBox | None, use_box: BoundingBox) -> bool:
    """Whether a footprint is more than twice as wide or as tall as the CRS's area of use: the
    projection is then used far outside where it is meant to be (a global layer onto a UTM zone,
    a pole onto Mercator), and its numbers there (up to infinity) make no sensible extent."""
    if box is None:
        return False
    width, height = box.right - box.left, box.top - box.bottom
    return width > 2 * (use_box.right - use_box.left) or height > 2 * (use_box.top - use_box.bottom)


def _affine_bounds(affine: Affine, width: int, height: int) -> BoundingBox:
    xs, ys = affine @ (np.array([0, width, width, 0], float), np.array([0, 0, height, height], float))
    return _box(xs, ys)


def _box(xs: np.ndarray, ys: np.ndarray) -> BoundingBox | None:
    if xs.size == 0:
        return None
    return BoundingBox(float(np.min(xs)), float(np.min(ys)), float(np.max(xs)), float(np.max(ys)))


def tile_mask(header: RasterHeader, grid: TargetGrid, margin_px: float) -> np.ndarray:
    """Boolean (tile_rows, tile_cols): the tiles that meet the raster grown by ``margin_px`` of
    its pixels (room for resampling kernels and rounding at its edges)."""
    mask = _tiles_inside(header, grid, margin_px)
    mask |= _tiles_on_outline(header, grid, margin_px)
    return mask


def _tiles_inside(header: RasterHeader, grid: TargetGrid, margin: float) -> np.ndarray:
    """Tiles with a corner inside the raster, found from the target side."""
    ts = grid.tile_size
    corner_cols = np.minimum(np.arange(grid.tile_cols + 1) * ts, grid.width).astype(float)
    corner_rows = np.minimum(np.arange(grid.tile_rows + 1) * ts, grid.height).astype(float)
    cc, rr = np.meshgrid(corner_cols, corner_rows)
    cols, rows, ok = trusted_transform(grid.crs, grid.transform, header.crs, header.transform, cc, rr,
                                       raster_centre_lon(header))
    inside = ok & (cols >= -margin) & (cols <= header.width + margin) & (rows >= -margin) & (
        rows <= header.height + margin)
    # A tile is in if any of its four corners is.
    return inside[:-1, :-1] | inside[:-1, 1:] | inside[1:, :-1] | inside[1:, 1:]


def _tiles_on_outline(header: RasterHeader, grid: TargetGrid, margin: float) -> np.ndarray:
    """Tiles that the raster's outline passes through, found from the raster's side."""
    mask = np.zeros((grid.tile_rows, grid.tile_cols), bool)
    src_cols, src_rows = _outline_pixels(header.width, header.height, margin, _EDGE_POINTS)
    if header.crs.is_geographic:
        x, y = header.transform @ (src_cols, src_rows)
        src_cols, src_rows = ~header.transform @ (x, np.clip(y, -90.0, 90.0))
    tile_px = grid.transform @ Affine.scale(grid.tile_size)  # one "pixel" per tile
    lon_centre = _grid_centre_lon(grid)

    def onto_tiles(c, r):
        return trusted_transform(header.crs, header.transform, grid.crs, tile_px, c, r, lon_centre)

    tc, tr, ok = onto_tiles(src_cols, src_rows)
    rows_n, cols_n = grid.tile_rows, grid.tile_cols
    for _ in range(_MAX_ROUNDS):
        nc, nr, nok = np.roll(tc, -1), np.roll(tr, -1), np.roll(ok, -1)
        length = np.hypot(nc - tc, nr - tr)
        lo_c, hi_c = np.fmin(tc, nc), np.fmax(tc, nc)
        lo_r, hi_r = np.fmin(tr, nr), np.fmax(tr, nr)
        near = (hi_c >= -1) & (lo_c <= cols_n + 1) & (hi_r >= -1) & (lo_r <= rows_n + 1)
        long_ok = ok & nok & (length > _STEP_TILES) & near
        # One end could not be moved: the other may still be on the grid, and the part of the
        # outline between them too (the edge of a projection's domain).
        one_end = (ok ^ nok) & np.where(ok, _on_grid(tc, tr, rows_n, cols_n), _on_grid(nc, nr, rows_n, cols_n))
        src_len = np.hypot(np.roll(src_cols, -1) - src_cols, np.roll(src_rows, -1) - src_rows)
        split = (long_ok & (src_len > 1e-6)) | (one_end & (src_len > 1e-3))
        if not split.any() or tc.size + int(split.sum()) > _MAX_POINTS:
            break
        at = np.flatnonzero(split)
        mid_c = (src_cols[at] + np.roll(src_cols, -1)[at]) / 2.0
        mid_r = (src_rows[at] + np.roll(src_rows, -1)[at]) / 2.0
        mc, mr, mok = onto_tiles(mid_c, mid_r)
        src_cols = np.insert(src_cols, at + 1, mid_c)
        src_rows = np.insert(src_rows, at + 1, mid_r)
        tc, tr, ok = np.insert(tc, at + 1, mc), np.insert(tr, at + 1, mr), np.insert(ok, at + 1, mok)
    # Mark the tiles at both ends of every short segment and, where it steps diagonally, the two
    # tiles beside it (a segment shorter than a tile crosses at most those). Longer segments are
    # jumps across a discontinuity of the target projection (its antimeridian): not outline.
    nc, nr, nok = np.roll(tc, -1), np.roll(tr, -1), np.roll(ok, -1)
    seg = ok & nok & (np.hypot(nc - tc, nr - tr) <= 2 * _STEP_TILES)
    single = ok & ~seg & ~np.roll(seg, 1)  # isolated points still mark their tile
    for c0, r0, c1, r1 in ((tc[seg], tr[seg], nc[seg], nr[seg]), (tc[single], tr[single], tc[single], tr[single])):
        ic0, ir0, ic1, ir1 = (np.floor(v).astype(np.int64) for v in (c0, r0, c1, r1))
        for ci, ri in ((ic0, ir0), (ic1, ir1), (ic0, ir1), (ic1, ir0)):
            keep = (ci >= 0) & (ci < cols_n) & (ri >= 0) & (ri < rows_n)
            mask[ri[keep], ci[keep]] = True
    return mask


def _on_grid(c: np.ndarray, r: np.ndarray, rows: int, cols: int) -> np.ndarray:
    return (c >= -1) & (c <= cols + 1) & (r >= -1) & (r <= rows + 1)


def footprint_window(header: RasterHeader, grid: TargetGrid, bounds: Bounds) -> Window | None:
    """The part of the grid under the raster's footprint, in whole target pixels."""
    if bounds.box is None:
        return None
    left, bottom, right, top = bounds.box
    inverse = ~grid.transform
    c0, r0 = inverse @ (left, top)
    c1, r1 = inverse @ (right, bottom)
    eps = 1e-6
    c0, c1 = max(math.floor(min(c0, c1) + eps), 0), min(math.ceil(max(c0, c1) - eps), grid.width)
    r0, r1 = max(math.floor(min(r0, r1) + eps), 0), min(math.ceil(max(r0, r1) - eps), grid.height)
    if c1 <= c0 or r1 <= r0:
        return None
    return Window(c0, r0, c1 - c0, r1 - r0)


def whole_image_scale(header: RasterHeader, grid: TargetGrid, window: Window | None,
                      method: Method) -> tuple[float, float]:
    """GDAL's warper XSCALE/YSCALE for a warp of the raster onto ``window`` of the grid in one piece.

    GDAL derives them for each piece it warps, from the source window that the piece needs
    (GDALWarpOperation::ComputeSourceWindow and GDALWarpKernel::PerformWarp, GDAL 3.10): the
    piece's width over the source width it spans, clamped to the raster, snapped to 1/n when
    within 0.05 of it. Computed once for the footprint's window and fixed for every chunk, tiles
    then equal GDAL's whole-image warp of the dataset onto its footprint (the whole grid, when
    the extent is the union of one dataset), and never depend on where chunks begin.
    """
    if window is None:
        return 1.0, 1.0
    x0, y0, w, h = int(window.col_off), int(window.row_off), int(window.width), int(window.height)
    found = _source_extent(header, grid, x0, y0, w, h)
    if found is None:
        return 1.0, 1.0
    min_x, min_y, max_x, max_y = (_round_if_close(v) for v in found)
    radius = Method(method).kernel_radius
    x_scale = _kernel_scale(w, min_x, max_x, header.width, radius)
    y_scale = _kernel_scale(h, min_y, max_y, header.height, radius)
    return x_scale, y_scale


def _source_extent(header: RasterHeader, grid: TargetGrid, x0: int, y0: int, w: int, h: int):
    """Source pixel bounds of the target window, sampled as ComputeSourceWindow does: 21 points
    per edge, or a 23 x 23 grid (and the raster's own 23 x 23 grid moved forwards) when any fails."""
    steps = 21
    step = 1.0 / (steps - 1)
    ratios = []
    ratio = 0.0
    while ratio <= 1.0 + step * 0.5:  # GDAL's loop, float steps and all
        ratios.append(ratio)
        ratio += step
    r = np.array(ratios)
    xs = np.concatenate([r * w + x0, r * w + x0, np.full_like(r, x0), np.full_like(r, x0 + w)])
    ys = np.concatenate([np.full_like(r, y0), np.full_like(r, y0 + h), r * h + y0, r * h + y0])
    centre = raster_centre_lon(header)
    cols, rows, ok = trusted_transform(grid.crs, grid.transform, header.crs, header.transform, xs, ys, centre)
    if ok.all():
        return cols.min(), rows.min(), cols.max(), rows.max()
    # GDAL's grid: ratios 0.5 / size, then the steps, then 1 - 0.5 / size (it uses the width for
    # both axes).
    g = np.concatenate([[0.5 / w], (np.arange(steps)) * step, [1 - 0.5 / w]])
    gx, gy = np.meshgrid(g * w + x0, g * h + y0)
    cols, rows, ok = trusted_transform(grid.crs, grid.transform, header.crs, header.transform, gx.ravel(), gy.ravel(),
                                       centre)
    bounds = [cols[ok].min(), rows[ok].min(), cols[ok].max(), rows[ok].max()] if ok.sum() >= 5 else None
    # From the source side: the raster's own grid points that land inside the window.
    sx, sy = np.meshgrid(np.concatenate([[0.5 / header.width], np.arange(steps) * step, [1 - 0.5 / header.width]])
                         * header.width,
                         np.concatenate([[0.5 / header.height], np.arange(steps) * step, [1 - 0.5 / header.height]])
                         * header.height)
    dc, dr, dok = trusted_transform(header.crs, header.transform, grid.crs, grid.transform, sx.ravel(), sy.ravel(),
                                    _grid_centre_lon(grid))
    hit = dok & (dc >= x0) & (dc <= x0 + w) & (dr >= y0) & (dr <= y0 + h)
    if hit.any():
        extra = [sx.ravel()[hit].min(), sy.ravel()[hit].min(), sx.ravel()[hit].max(), sy.ravel()[hit].max()]
        bounds = extra if bounds is None else [min(bounds[0], extra[0]), min(bounds[1], extra[1]),
                                               max(bounds[2], extra[2]), max(bounds[3], extra[3])]
    return bounds


def _round_if_close(value: float) -> float:
    rounded = round(value)
    return float(rounded) if abs(rounded - value) < 1e-6 else float(value)


def _kernel_scale(dst_size: int, src_min: float, src_max: float, raster_size: int, radius: int) -> float:
    span = src_max - src_min
    if span <= 0:
        return 1.0
    scale0 = max(1e-3, dst_size / span)
    reach = math.ceil(radius / scale0) if scale0 < 0.95 else radius
    lo = int(max(0.0, src_min))
    hi = int(min(math.ceil(src_max), float(raster_size)))
    raw = max(0.0, min(float(raster_size - lo), span))
    if hi - lo > 0.9 * raster_size:
        size = raster_size
    else:
        off = max(0, min(lo - reach, raster_size))
        size = max(0, min(raster_size - off, hi - off + reach))
    extra = size - raw
    if raw <= 0:
        return 1.0
    scale = dst_size / (size - extra)
    if size >= dst_size and size <= dst_size + extra:
        scale = 1.0
    if scale < 1.0:
        reciprocal = 1.0 / scale
        whole = int(reciprocal + 0.5)
        if abs(reciprocal - whole) < 0.05:
            scale = 1.0 / whole
    return scale


# How far, as a share of the data's range, the straight segments between a source pixel's edge
# points may move an area-weighted mean (the conservative engine; engines.corners moves the points
# themselves to 1e-8 of a target pixel), and the most points per edge that reaching it may take:
# MAX_EDGE_POINTS, and no more than EDGE_POINT_BUDGET over all the raster's pixels (a pixel costs
# about its points in time and 32 bytes each in memory: a 0.1-degree global grid, 6.5 million
# pixels, may take 66, a 40,000² raster, whose fine pixels barely bend, 2).
EDGE_TOLERANCE = 5e-7
MAX_EDGE_POINTS = 256
EDGE_POINT_BUDGET = 4e9
# A mean moves by about EDGE_ERROR_PER_SAGITTA x s / n² of the data's range, where s is the sagitta
# of one source pixel's edge in target pixels and n the points per edge: measured against exact
# footprints (tests/test_conservative.py) between 13 (10 m pixels onto 35 m) and 37 (0.1-degree
# pixels onto 25 km), on counts that jump from pixel to pixel.
EDGE_ERROR_PER_SAGITTA = 40.0
_EDGE_SAMPLES = 17
# Edges are measured over this many pixels (and scaled back): the bend of one fine pixel's edge is
# below PROJ's own rounding (1e-7 of a target pixel), that of 16 pixels 256 times larger.
_EDGE_SPAN = 16


def edge_points(header: RasterHeader, grid: TargetGrid) -> int:
    """Points per source pixel edge (1: its corners alone) for the conservative engine: a pixel's
    edges are curves on the target grid, drawn as straight segments between these points, enough
    that an average moves by at most EDGE_TOLERANCE of the data's range (at most MAX_EDGE_POINTS;
    and EDGE_POINT_BUDGET; beyond them the error falls with the square of the points). 10 m
    pixels onto a 0.0005-degree grid need 2, 0.1-degree ones onto 25 km about 66."""
    worst = edge_sagitta(header, grid)
    need = math.ceil(math.sqrt(EDGE_ERROR_PER_SAGITTA * worst / EDGE_TOLERANCE))
    affordable = int(EDGE_POINT_BUDGET // max(float(header.width) * header.height, 1.0))
    return int(max(1, min(need, MAX_EDGE_POINTS, affordable)))


def edge_sagitta(header: RasterHeader, grid: TargetGrid) -> float:
    """The largest sagitta, in target pixels, of one source pixel's edge on the grid (0 in one CRS)."""
    if header.crs == grid.crs:
        return 0.0  # an affine map: edges stay straight
    span = max(1, min(_EDGE_SPAN, header.width // 2, header.height // 2))
    t = np.linspace(0.0, 1.0, _EDGE_SAMPLES)
    rows = np.floor(t * (header.height - span))
    cols = np.floor(t * (header.width - span))
    r, c = (a.ravel() for a in np.meshgrid(rows, cols, indexing="ij"))
    # For each sampled place: an edge along a row (start, middle, end) and one along a column.
    pr = np.concatenate([r, r, r, r, r + span / 2, r + span])
    pc = np.concatenate([c, c + span / 2, c + span, c, c, c])
    x, y = header.transform @ (pc, pr)
    tx, ty, _ = transform_points(header.crs, grid.crs, x, y)
    tc, tr = ~grid.transform @ (tx, ty)
    tc, tr = np.asarray(tc).reshape(6, -1), np.asarray(tr).reshape(6, -1)
    if grid.crs.is_geographic:
        period = 360.0 / abs(grid.transform.a)
        tc = tc - period * np.round((tc - tc[0]) / period)
    worst = 0.0
    with np.errstate(invalid="ignore"):
        for a, m, b in ((0, 1, 2), (3, 4, 5)):
            sag = np.hypot(tc[m] - (tc[a] + tc[b]) / 2, tr[m] - (tr[a] + tr[b]) / 2) / span ** 2
            # Places far beyond the grid (a global raster onto a local one) do not count.
            near = ((np.abs(tc[a] - grid.width / 2) < 2 * grid.width)
                    & (np.abs(tr[a] - grid.height / 2) < 2 * grid.height))
            sag = sag[np.isfinite(sag) & near]
            if sag.size:
                worst = max(worst, float(sag.max()))
    return worst
