"""Cutting a tile into chunks that fit a job's memory, and the source window each chunk needs.

A tile (the unit of checkpointing) is not read at once: it is cut into chunks of output pixels
whose source windows, and every copy an engine makes of them, fit the job's budget. Work and
memory follow the pixels that exist: a tile that reaches beyond the raster reads only the part of
the raster under it, and pads only as far as a target pixel reaches past the raster's edge.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from affine import Affine
from rasterio.crs import CRS
from rasterio.windows import Window

from workflow_lib.coords import transform_points, trusted_transform, wrap_longitudes
from workflow_lib.domain import Engine, Method
from workflow_lib.engines.blocks import LARGE_BLOCK
from workflow_lib.engines.windows import axis_ranges, window_cost
from workflow_lib.gtiff import BLOCK_SIZE
from workflow_lib.planning.engine import BlockGeometry
from workflow_lib.planning.grid import TargetGrid, Tile
from workflow_lib.planning.settings import WarpSettings, kernel_padding, rounded_from_float64
from workflow_lib.runtime import BASELINE_MB, KERNELS_MB, MIN_TILE_SHARE_MB
from workflow_lib.sources.header import RasterHeader

# Below this much work (source pixels, as DatasetPlan.tile_work_of counts them) a job reduces its
# blocks with NumPy: importing numba and loading its kernels takes about 0.6 s, which NumPy's
# slower reductions (measured 2-70 ns a pixel against the kernels' 1.3-30) lose back only over 14
# million pixels or more, depending on the method and data type.
KERNELS_MIN_WORK = 10e6


def uses_kernels(settings: WarpSettings, mem_mb: int, work: float | None = None) -> bool:
    """Whether blocks are reduced by the compiled kernels: a block engine dataset whose method they
    compile, in a job of ``mem_mb`` that can hold numba and its kernels beside one tile's share,
    with ``work`` worth loading them (None: a job of unknown size, which does). Other jobs use the
    NumPy reductions, which give the same pixels, bit for bit."""
    return (settings.engine is Engine.BLOCKS and settings.method.is_compiled
            and mem_mb >= BASELINE_MB + KERNELS_MB + MIN_TILE_SHARE_MB
            and (work is None or work >= KERNELS_MIN_WORK))


def loads_numba(settings: WarpSettings, mem_mb: int) -> bool:
    """Whether a job making this dataset's tiles holds numba and compiled code (KERNELS_MB): the
    conservative engine always, the block engine when it uses the compiled kernels."""
    return settings.engine is Engine.CONSERVATIVE or uses_kernels(settings, mem_mb)


# Points sampled along each edge of a chunk (and across it) to find its source window: the
# inverse projection of a straight target edge is curved.
_EDGE_SAMPLES = 33
_INTERIOR_SAMPLES = 9


@dataclass(frozen=True)
class MemoryBudget:
    """How a job's ``mem_mb`` is shared between GDAL's block cache and the chunk buffers."""

    mem_mb: int
    cache_mb: int
    chunk_bytes: int

    @classmethod
    def for_job(cls, mem_mb: int) -> "MemoryBudget":
        free_mb = max(mem_mb - BASELINE_MB, 32)
        cache_mb = int(min(max(free_mb * 0.2, 8), 256))
        return cls(mem_mb, cache_mb, int((free_mb - cache_mb) * 0.75 * 1e6))


@dataclass(frozen=True)
class Chunk:
    window: Window  # in the tile
    source: Window | None  # to read, within the input raster; None when the chunk sees no pixel
    padded: Window | None  # what the engine works on: the source grown beyond the raster's edge, where
    # the missing pixels are nodata (block engine: whole blocks; GDAL's area methods: see pad_width)


def source_window(
    header: RasterHeader, dst_transform: Affine, width: int, height: int, dst_crs: CRS, pad: int
) -> Window | None:
    """The window of the input that the target window ``dst_transform`` x (width, height) needs,
    padded by ``pad`` pixels and not clipped to the raster (None if no point transforms)."""
    edge = np.linspace(0.0, 1.0, _EDGE_SAMPLES)
    inner = np.linspace(0.0, 1.0, _INTERIOR_SAMPLES)
    gx, gy = np.meshgrid(inner, inner)
    fx = np.concatenate([edge, np.ones_like(edge), edge, np.zeros_like(edge), gx.ravel()])
    fy = np.concatenate([np.zeros_like(edge), edge, np.ones_like(edge), edge, gy.ravel()])
    xs, ys = dst_transform @ (fx * width, fy * height)
    if header.crs != dst_crs:
        xs, ys, _ = transform_points(dst_crs, header.crs, xs, ys)
        if header.crs.is_geographic:  # into the raster's own longitudes (0..360, or across 180)
            centre_x, _ = header.transform @ (header.width / 2.0, header.height / 2.0)
            xs = wrap_longitudes(xs, centre_x)
    cols, rows = ~header.transform @ (np.asarray(xs), np.asarray(ys))
    ok = np.isfinite(cols) & np.isfinite(rows)
    if not ok.any():
        return None
    c0 = int(math.floor(cols[ok].min())) - pad
    r0 = int(math.floor(rows[ok].min())) - pad
    c1 = int(math.ceil(cols[ok].max())) + pad
    r1 = int(math.ceil(rows[ok].max())) + pad
    return Window(c0, r0, c1 - c0, r1 - r0)


def clip_window(window: Window, header: RasterHeader, grow: int = 0) -> Window | None:
    """``window`` within the raster (grown by ``grow`` pixels on every side); None if empty."""
    c0, r0 = max(int(window.col_off), -grow), max(int(window.row_off), -grow)
    c1 = min(int(window.col_off + window.width), header.width + grow)
    r1 = min(int(window.row_off + window.height), header.height + grow)
    if c1 <= c0 or r1 <= r0:
        return None
    return Window(c0, r0, c1 - c0, r1 - r0)


def pad_width(settings: WarpSettings) -> int:
    """How far beyond the raster GDAL's area methods must see nodata, in source pixels.

    GDAL 3.10's warper clamps a target pixel's source footprint to the window it is given and
    gives the edge pixels the weight of the part that was cut off (a target pixel reaching two
    columns past the raster weights its edge column by 3). Nodata out to where the widest target
    pixel ends leaves nothing to clamp: 1 / scale source pixels, twice that for the bounding box of a
    rotated raster's or another CRS's pixel, twice again for GDAL's source windows (2 / scale was
    measured too little on a rotated raster: 16 pixels moved by up to 23 with the tile size).
    The result is then the area-weighted
    mean (sum) of the valid pixels under each target pixel, and a target pixel wholly outside the
    raster stays nodata (GDAL gives it the raster's first row or column).
    """
    shrink = min(settings.x_scale, settings.y_scale, 1.0)
    return int(math.ceil(4.0 / shrink)) + 2


def pads_source(settings: WarpSettings) -> bool:
    """Whether GDAL's engine gets its source padded with nodata (pad_width): the area methods."""
    return settings.engine is Engine.WARP and settings.method.is_area


def chunk_cost(source: Window | None, window: Window, src_dtype: str, dst_dtype: str, same_crs: bool = True,
               padded: bool = False, rounded: bool = False) -> int:
    """Bytes a chunk holds at its peak: our source read and GDAL's copy of it with validity masks
    (plus the in-memory dataset across CRSs, see warp.py; a padded source adds the unpadded read
    and our validity mask), and the destination with GDAL's working buffers (density and masks);
    ``rounded``: an integer result warped as float64 and rounded here (engines.warp), 48 more
    bytes per output pixel for the float64 result and the rounding's temporaries."""
    src_px = 0 if source is None else int(source.width) * int(source.height)
    dst_px = int(window.width) * int(window.height)
    copies = (2 if same_crs else 3) + (1 if padded else 0)
    per_px = copies * np.dtype(src_dtype).itemsize + 2 + (2 if padded else 0)
    return src_px * per_px + dst_px * (2 * np.dtype(dst_dtype).itemsize + 8 + (48 if rounded else 0))


def plan_chunks(
    header: RasterHeader, settings: WarpSettings, tile: Tile, dst_crs: CRS, budget_bytes: int
) -> list[Chunk]:
    """Cut a tile into chunks for GDAL's warper whose cost fits ``budget_bytes``."""
    pad = kernel_padding(settings)
    padded = pads_source(settings)
    grow = pad_width(settings)

    def make(window: Window) -> Chunk:
        transform = tile.transform @ Affine.translation(window.col_off, window.row_off)
        wanted = source_window(header, transform, int(window.width), int(window.height), dst_crs, pad)
        source = None if wanted is None else clip_window(wanted, header)
        if source is None:
            return Chunk(window, None, None)
        return Chunk(window, source, clip_window(wanted, header, grow) if padded else source)

    def split(window: Window) -> Iterator[Chunk]:
        chunk = make(window)
        fits = chunk_cost(chunk.padded, window, header.dtype, settings.dst_dtype, settings.same_crs, padded,
                          rounded_from_float64(settings)) <= budget_bytes
        if fits or (window.width == 1 and window.height == 1):
            yield chunk
            return
        # Split the longer side: across CRSs the source window of a long thin strip is its skewed
        # bounding box, mostly pixels that the strip does not need (measured: a 4096-pixel tile
        # from EPSG:3035 to EPSG:4326 took 21.6 s in full-width strips, 7.1 s in squarer chunks).
        if window.height > 1 and (settings.same_crs or window.height >= window.width):
            # Split on a block boundary where possible so that output blocks fill up in order.
            half = int(window.height) // 2
            if half > BLOCK_SIZE:
                half -= half % BLOCK_SIZE
            first = Window(window.col_off, window.row_off, window.width, half)
            second = Window(window.col_off, window.row_off + half, window.width, window.height - half)
        else:
            half = int(window.width) // 2
            first = Window(window.col_off, window.row_off, half, window.height)
            second = Window(window.col_off + half, window.row_off, window.width - half, window.height)
        yield from split(first)
        yield from split(second)

    return list(split(Window(0, 0, tile.width, tile.height)))


def block_chunk_cost(settings: WarpSettings, src_dtype: str, kx: int, ky: int, compiled: bool = False,
                     padded: bool = True) -> float:
    """Bytes held per source pixel by the block engine: the read (twice at the raster's edges,
    where it is copied into a padded array), its validity mask and NaN test, the method's working
    arrays (median: a float64 copy to sort; mode: sort keys and their values, up to 4 bytes each,
    or per-position counts; large blocks: a float64 copy of the values), and output-sized
    float64 accumulators.

    ``compiled``: the compiled kernels (engines.kernels), which test each pixel as they read it:
    the read, and at the edges (``padded``) its padded copy and masks, then per output pixel a
    value (8 bytes), whether it was found, and the output."""
    itemsize = np.dtype(src_dtype).itemsize
    if kx * ky > LARGE_BLOCK:
        return itemsize + 2 + 16
    if compiled and settings.method.is_compiled and kx * ky > 1:
        # At the edges: the padded copy, its mask, and the read's validity mask with its NaN test.
        return itemsize + (itemsize + 3 if padded else 0) + 24 / (kx * ky)
    extra = 9 if settings.method in (Method.MED, Method.MODE) else 0
    return 2 * itemsize + 2 + extra + 40 / (kx * ky)


def active_range(offset: int, k: int, raster_size: int, tile_size: int) -> tuple[int, int]:
    """Output pixels [lo, hi) of a tile whose blocks (k source pixels each, the first at source
    pixel ``offset``) hold at least one pixel of the raster."""
    lo = max(0, -offset // k)
    hi = min(tile_size, -(-(raster_size - offset) // k))
    return lo, max(lo, hi)


def block_chunks(header: RasterHeader, settings: WarpSettings, tile: Tile, blocks: BlockGeometry,
                 budget_bytes: int, compiled: bool = False) -> list[Chunk]:
    """Chunks of whole output rows (or, for very wide tiles, columns too) whose blocks of source
    pixels fit ``budget_bytes``, over the part of the tile that the raster reaches (the rest of the
    tile is nodata and never read). ``compiled``: reduced by the compiled kernels (block_chunk_cost)."""
    kx, ky = blocks.kx, blocks.ky
    c_lo, c_hi = active_range(blocks.col_off, kx, header.width, tile.width)
    r_lo, r_hi = active_range(blocks.row_off, ky, header.height, tile.height)
    if c_hi <= c_lo or r_hi <= r_lo:
        return []
    # Whether any block of the tile reaches beyond the raster (then chunks are padded copies).
    whole = Window(blocks.col_off + c_lo * kx, blocks.row_off + r_lo * ky, (c_hi - c_lo) * kx, (r_hi - r_lo) * ky)
    padded = clip_window(whole, header) != whole
    per_out_px = block_chunk_cost(settings, header.dtype, kx, ky, compiled, padded) * kx * ky
    width = c_hi - c_lo
    cols = max(1, min(width, int(budget_bytes // per_out_px)))
    rows = max(1, min(r_hi - r_lo, int(budget_bytes // (per_out_px * cols))))
    breaks = row_breaks(r_hi - r_lo, rows, blocks.row_off + r_lo * ky, ky, header.block_shape[0])
    chunks = []
    for r, r_end in zip(breaks, breaks[1:]):
        for c in range(0, width, cols):
            window = Window(c_lo + c, r_lo + r, min(cols, width - c), r_end - r)
            padded = Window(blocks.col_off + window.col_off * kx, blocks.row_off + window.row_off * ky,
                            window.width * kx, window.height * ky)
            chunks.append(Chunk(window, clip_window(padded, header), padded))
    return chunks


def row_breaks(height: int, rows: int, first_source_row: int, ky: int, block_rows: int) -> list[int]:
    """Where chunks of at most ``rows`` output rows begin (and the tile ends), placed where the
    source's rows of blocks begin when the budget allows: a block cut by a chunk boundary is
    decompressed for both chunks (measured: a third more time for a tile of 512-row blocks)."""
    step = math.lcm(block_rows, ky) // ky  # output rows per whole number of block rows
    first = next((r for r in range(step) if (first_source_row + r * ky) % block_rows == 0), None)
    if rows < step or first is None:
        return list(range(0, height, rows)) + [height]
    size = rows - rows % step
    breaks = [0] + ([first] if first else [])
    while breaks[-1] + size < height:
        breaks.append(breaks[-1] + size)
    return breaks + [height]


def tile_axis_ranges(header: RasterHeader, grid: TargetGrid, tile: Tile, window: Window):
    """Input rows and columns under each target pixel of ``window`` (in the tile), for the window
    engine: from the whole grid's transform and the pixels' indices in it."""
    src, dst = header.transform, grid.transform
    col0 = int(tile.window.col_off + window.col_off)
    row0 = int(tile.window.row_off + window.row_off)
    cols = axis_ranges(src.c, src.a, dst.c, dst.a, col0, int(window.width), header.width)
    rows = axis_ranges(src.f, src.e, dst.f, dst.e, row0, int(window.height), header.height)
    return rows, cols


def window_chunks(header: RasterHeader, settings: WarpSettings, grid: TargetGrid, tile: Tile,
                  budget_bytes: int) -> list[Chunk]:
    """Chunks of whole output rows (and columns for very wide tiles) for the window engine, over the
    part of the tile that the raster reaches."""
    rows, cols = tile_axis_ranges(header, grid, tile, Window(0, 0, tile.width, tile.height))
    live_r = np.flatnonzero(rows.end > rows.start)
    live_c = np.flatnonzero(cols.end > cols.start)
    if live_r.size == 0 or live_c.size == 0:
        return []
    r_lo, r_hi, c_lo, c_hi = int(live_r[0]), int(live_r[-1]) + 1, int(live_c[0]), int(live_c[-1]) + 1
    kx = abs(grid.transform.a / header.transform.a)
    ky = abs(grid.transform.e / header.transform.e)
    per_out_px = window_cost(header.dtype, kx, ky)
    width = c_hi - c_lo
    n_cols = max(1, min(width, int(budget_bytes // per_out_px)))
    n_rows = max(1, min(r_hi - r_lo, int(budget_bytes // (per_out_px * n_cols))))
    chunks = []
    for r in range(r_lo, r_hi, n_rows):
        for c in range(c_lo, c_hi, n_cols):
            window = Window(c, r, min(n_cols, c_hi - c), min(n_rows, r_hi - r))
            wr, wc = rows.start[r:r + int(window.height)], cols.start[c:c + int(window.width)]
            er, ec = rows.end[r:r + int(window.height)], cols.end[c:c + int(window.width)]
            source = Window(int(wc.min()), int(wr.min()), int(ec.max() - wc.min()), int(er.max() - wr.min()))
            chunks.append(Chunk(window, source if source.width > 0 and source.height > 0 else None, source))
    return [c for c in chunks if c.source is not None]


def conservative_cost(settings: WarpSettings, src_dtype: str, src_px: int, dst_px: int) -> int:
    """Bytes a chunk of the conservative engine holds at its peak: per source pixel its value, a
    flag for the clipping pass, and the positions of its points (two float64 and a flag each): of
    up to 2 points per edge its corner alone (the kernels make the middles of its edges), else n
    along its top edge and n along its left (engines.conservative.resample_chunk); for mode the
    points of 2 per edge too, its pieces (cell, pixel, area: about four per pixel) and their
    sorting; per target pixel the sums (one per class for fractions), the coverage and the output
    bands."""
    n = settings.edge_points
    points = 1 if n <= 2 else 2 * n
    per_src = np.dtype(src_dtype).itemsize + 1 + 17 * points
    if settings.method is Method.MODE:
        per_src += 4 * 32 + (16 * 4 if n <= 2 else 0)
    sums = len(settings.classes) if settings.classes else 1
    per_dst = 8 * (sums + 2) + settings.output_bands * (np.dtype(settings.dst_dtype).itemsize + 8)
    return src_px * per_src + dst_px * per_dst


# Lattice (per side) over the raster that finds, from the raster's side, the source pixels of a
# chunk that reaches where the target CRS is not defined.
_FORWARD_LATTICE = 65


def footprint_source_window(header: RasterHeader, grid: TargetGrid, window: Window, pad: int = 2) -> Window | None:
    """Every source pixel whose footprint may meet the target pixels ``window`` (on the whole
    grid), within the raster; None if none does.

    From the target's side: the window's edges and interior moved into the raster's pixels, with
    ``pad`` pixels around. Where some of those points do not come back from a round trip (the
    window reaches beyond where the target CRS is defined, as a world map's limb), the pixels next
    to that edge have no sample near them: a lattice over the raster moved onto the grid adds every
    lattice cell that lands near the window."""
    edge = np.linspace(0.0, 1.0, _EDGE_SAMPLES)
    inner = np.linspace(0.0, 1.0, _INTERIOR_SAMPLES)
    gx, gy = np.meshgrid(inner, inner)
    fx = np.concatenate([edge, np.ones_like(edge), edge, np.zeros_like(edge), gx.ravel()])
    fy = np.concatenate([np.zeros_like(edge), edge, np.ones_like(edge), edge, gy.ravel()])
    w0, h0, w, h = float(window.col_off), float(window.row_off), float(window.width), float(window.height)
    centre = None
    if header.crs.is_geographic:
        centre, _ = header.transform @ (header.width / 2.0, header.height / 2.0)
    cols, rows, ok = trusted_transform(grid.crs, grid.transform, header.crs, header.transform, w0 + fx * w,
                                       h0 + fy * h, centre)
    boxes = []
    if ok.any():
        boxes.append((cols[ok].min() - pad, rows[ok].min() - pad, cols[ok].max() + pad, rows[ok].max() + pad))
    if not ok.all():
        boxes += _forward_cells(header, grid, window)
    if not boxes:
        return None
    c0 = max(int(math.floor(min(b[0] for b in boxes))), 0)
    r0 = max(int(math.floor(min(b[1] for b in boxes))), 0)
    c1 = min(int(math.ceil(max(b[2] for b in boxes))), header.width)
    r1 = min(int(math.ceil(max(b[3] for b in boxes))), header.height)
    if c1 <= c0 or r1 <= r0:
        return None
    return Window(c0, r0, c1 - c0, r1 - r0)


def _forward_cells(header: RasterHeader, grid: TargetGrid, window: Window) -> list[tuple[float, ...]]:
    """Source pixel boxes of the lattice cells of the raster that land near ``window``."""
    steps_c = np.linspace(0.0, header.width, _FORWARD_LATTICE)
    steps_r = np.linspace(0.0, header.height, _FORWARD_LATTICE)
    cc, rr = np.meshgrid(steps_c, steps_r)
    lon_centre = None
    if grid.crs.is_geographic:
        left, _, right, _ = grid.bounds
        lon_centre = (left + right) / 2.0
    tc, tr, ok = trusted_transform(header.crs, header.transform, grid.crs, grid.transform, cc, rr, lon_centre)
    found = []
    n = _FORWARD_LATTICE - 1
    w0, h0 = float(window.col_off), float(window.row_off)
    w1, h1 = w0 + float(window.width), h0 + float(window.height)
    for i in range(n):
        for j in range(n):
            corners_ok = ok[i:i + 2, j:j + 2]
            if not corners_ok.any():
                continue
            xs, ys = tc[i:i + 2, j:j + 2][corners_ok], tr[i:i + 2, j:j + 2][corners_ok]
            # A cell may bulge beyond its corners: a quarter of its size of margin, and a cell with
            # a corner that could not be moved counts wherever its other corners are.
            margin_x = 0.25 * (xs.max() - xs.min()) + 1.0
            margin_y = 0.25 * (ys.max() - ys.min()) + 1.0
            near = (xs.max() + margin_x >= w0 and xs.min() - margin_x <= w1 and ys.max() + margin_y >= h0
                    and ys.min() - margin_y <= h1)
            if near or (not corners_ok.all() and _edges_near(xs, ys, w0, h0, w1, h1)):
                found.append((steps_c[j] - 1, steps_r[i] - 1, steps_c[j + 1] + 1, steps_r[i + 1] + 1))
    return found


def _edges_near(xs, ys, w0, h0, w1, h1) -> bool:
    span = max(w1 - w0, h1 - h0)
    return bool(((xs >= w0 - span) & (xs <= w1 + span) & (ys >= h0 - span) & (ys <= h1 + span)).any())


def conservative_chunks(header: RasterHeader, settings: WarpSettings, grid: TargetGrid, tile: Tile,
                        budget_bytes: int) -> list[Chunk]:
    """Cut a tile into chunks for the conservative engine whose cost fits ``budget_bytes``: each
    reads every source pixel whose footprint meets its target pixels (footprint_source_window),
    within the raster only."""

    def make(window: Window) -> Chunk:
        on_grid = Window(tile.window.col_off + window.col_off, tile.window.row_off + window.row_off,
                         window.width, window.height)
        source = footprint_source_window(header, grid, on_grid)
        return Chunk(window, source, source)

    def split(window: Window) -> Iterator[Chunk]:
        chunk = make(window)
        src_px = 0 if chunk.source is None else int(chunk.source.width * chunk.source.height)
        fits = conservative_cost(settings, header.dtype, src_px, int(window.width * window.height)) <= budget_bytes
        if fits or (window.width == 1 and window.height == 1):
            yield chunk
            return
        if window.height >= window.width:  # squarish chunks: their source windows are the smallest
            half = int(window.height) // 2
            if half > BLOCK_SIZE:
                half -= half % BLOCK_SIZE
            first = Window(window.col_off, window.row_off, window.width, half)
            second = Window(window.col_off, window.row_off + half, window.width, window.height - half)
        else:
            half = int(window.width) // 2
            first = Window(window.col_off, window.row_off, half, window.height)
            second = Window(window.col_off + half, window.row_off, window.width - half, window.height)
        yield from split(first)
        yield from split(second)

    # Chunks that no source pixel reaches are kept (and written as nodata): in a tile of several
    # bands, GDAL fills the unwritten part of a block with nodata in the first band only.
    return list(split(Window(0, 0, tile.width, tile.height)))
