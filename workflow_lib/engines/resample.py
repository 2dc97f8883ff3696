"""Resample one tile with GDAL's warper, streaming it in chunks that fit the job's memory.

A tile (the unit of checkpointing) is not read at once: it is cut into chunks of output rows (and,
if a single row is still too large, columns) whose source windows fit the job's memory budget. For
each chunk, the source window it needs, plus a padding wide enough for the resampling kernel, is
read from the input's full-resolution band (never its overviews), NaN is turned into the nodata
value, and GDAL warps it with the dataset's fixed XSCALE/YSCALE, so that the result does not depend
on where chunks and tiles begin.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.warp import transform as transform_points
from rasterio.windows import Window

from workflow_lib.atomic import atomic_path
from workflow_lib.engines.blocks import ENGINE_LABELS, block_geometry, reduce_blocks, valid_mask
from workflow_lib.errors import GDAL_ERRORS, InputRasterError, OutputWriteError
from workflow_lib.planning.grid import TargetGrid, Tile
from workflow_lib.gtiff import BLOCK_SIZE, open_output, tile_profile
from workflow_lib.sources.header import RasterHeader
from workflow_lib.planning.settings import WarpSettings
from workflow_lib.engines.warp import warp_chunk

log = logging.getLogger(__name__)

# Resident memory of a job before it touches data: Python, NumPy, GDAL and Snakemake's script
# preamble (measured at about 120 MB; kept above that).
BASELINE_MB = 160
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
    padded: Window | None  # the source window before clipping to the raster (may reach outside)


def kernel_padding(settings: WarpSettings) -> int:
    """Source pixels to add around a chunk's footprint so that every kernel sees all its inputs.

    GDAL widens kernels by 1/scale when downsampling (radius 2 for cubic); padding beyond what GDAL
    itself pads also keeps its window-dependent weighting (see README: sum) out of interior chunks.
    """
    shrink = min(settings.x_scale, settings.y_scale, 1.0)
    return int(math.ceil(3.0 / shrink)) + 2


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
        xs, ys = (np.asarray(v) for v in transform_points(dst_crs, header.crs, xs, ys))
    cols, rows = ~header.affine @ (np.asarray(xs), np.asarray(ys))
    ok = np.isfinite(cols) & np.isfinite(rows)
    if not ok.any():
        return None
    c0 = int(math.floor(cols[ok].min())) - pad
    r0 = int(math.floor(rows[ok].min())) - pad
    c1 = int(math.ceil(cols[ok].max())) + pad
    r1 = int(math.ceil(rows[ok].max())) + pad
    return Window(c0, r0, c1 - c0, r1 - r0)


def clip_window(window: Window, header: RasterHeader) -> Window | None:
    c0, r0 = max(int(window.col_off), 0), max(int(window.row_off), 0)
    c1 = min(int(window.col_off + window.width), header.width)
    r1 = min(int(window.row_off + window.height), header.height)
    if c1 <= c0 or r1 <= r0:
        return None
    return Window(c0, r0, c1 - c0, r1 - r0)


def chunk_cost(source: Window | None, window: Window, src_dtype: str, dst_dtype: str, same_crs: bool = True) -> int:
    """Bytes a chunk holds at its peak: our source read and GDAL's copy of it with validity masks
    (plus the in-memory dataset across CRSs, see warp.py), and the destination with GDAL's working
    buffers (density and masks)."""
    src_px = 0 if source is None else int(source.width) * int(source.height)
    dst_px = int(window.width) * int(window.height)
    copies = 2 if same_crs else 3
    return src_px * (copies * np.dtype(src_dtype).itemsize + 2) + dst_px * (2 * np.dtype(dst_dtype).itemsize + 8)


def plan_chunks(
    header: RasterHeader, settings: WarpSettings, tile: Tile, dst_crs: CRS, budget_bytes: int
) -> list[Chunk]:
    """Cut a tile into chunks whose cost fits ``budget_bytes``: whole rows first, then columns."""
    pad = kernel_padding(settings)

    padded_sum = pads_sum(settings)
    src_dtype = "float64" if padded_sum else header.dtype

    def make(window: Window) -> Chunk:
        transform = tile.transform @ Affine.translation(window.col_off, window.row_off)
        padded = source_window(header, transform, int(window.width), int(window.height), dst_crs, pad)
        source = None if padded is None else clip_window(padded, header)
        return Chunk(window, source, padded if source is not None else None)

    def split(window: Window) -> Iterator[Chunk]:
        chunk = make(window)
        held = chunk.padded if padded_sum else chunk.source
        fits = chunk_cost(held, window, src_dtype, settings.dst_dtype, settings.same_crs) <= budget_bytes
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


def resample_tile(
    dataset: str,
    header: RasterHeader,
    settings: WarpSettings,
    grid: TargetGrid,
    tile: Tile,
    out_path: str,
    mem_mb: int,
    threads: int = 1,
    compress: str = "deflate",
    max_chunk_bytes: int | None = None,
    progress: Callable[[], None] | None = None,
) -> dict:
    """Warp one tile of ``dataset`` into ``out_path`` (written atomically). Returns figures.

    ``max_chunk_bytes`` caps chunks below what ``mem_mb`` allows (tests use it to make many chunks
    out of small data). ``progress`` is called after every chunk read and written (the watchdog).
    """
    progress = progress or (lambda: None)
    budget = MemoryBudget.for_job(mem_mb)
    chunk_bytes = min(budget.chunk_bytes, max_chunk_bytes or budget.chunk_bytes)
    blocks = None
    if settings.engine == "numpy":
        blocks, why = block_geometry(header.affine, tile.transform)
        if blocks is None:  # the plan checked the grid; a tile can only disagree if the plan is stale
            raise InputRasterError(dataset, header.path, f"the numpy engine cannot resample tile {tile.id}: {why}")
        chunks = block_chunks(header, settings, tile, blocks, chunk_bytes)
    else:
        chunks = plan_chunks(header, settings, tile, grid.crs, chunk_bytes)
    log.info(
        "tile %s of %s: %dx%d px in %d chunk(s), budget %d MB (GDAL cache %d MB, chunks %.0f MB), method %s, "
        "engine %s (%s)", tile.id, dataset, tile.width, tile.height, len(chunks), mem_mb, budget.cache_mb,
        chunk_bytes / 1e6, settings.method, ENGINE_LABELS[settings.engine], settings.engine_reason,
    )
    profile = tile_profile(
        tile.width, tile.height, tile.transform, grid.crs, settings.dst_dtype, settings.dst_nodata, compress
    )
    src_crs = header.crs
    started = time.monotonic()
    pixels_read = 0
    env = {"GDAL_CACHEMAX": budget.cache_mb, "GDAL_NUM_THREADS": max(threads, 1)}
    with rasterio.Env(**env), atomic_path(out_path) as tmp:
        try:
            src = rasterio.open(header.path, OVERVIEW_LEVEL="NONE")
        except rasterio.errors.RasterioIOError as exc:
            raise InputRasterError(dataset, header.path, f"cannot be opened: {exc}") from exc
        with src, open_output(tmp, out_path, profile) as dst:
            for i, chunk in enumerate(chunks, 1):
                shape = (int(chunk.window.height), int(chunk.window.width))
                if blocks is not None:
                    data, valid = read_blocks(dataset, src, settings, chunk, blocks)
                    progress()
                    pixels_read += 0 if chunk.source is None else int(chunk.source.width * chunk.source.height)
                    out = reduce_blocks(data, valid, blocks.kx, blocks.ky, settings.method, settings.dst_dtype,
                                        settings.dst_nodata)
                    del data, valid
                elif chunk.source is None:  # nothing of the input maps here
                    out = np.full(shape, settings.dst_nodata, dtype=settings.dst_dtype)
                else:
                    data = read_source(dataset, src, settings, chunk.source)
                    progress()
                    pixels_read += data.size
                    src_window, src_nodata = chunk.source, settings.src_nodata
                    if pads_sum(settings):
                        data, src_window, src_nodata = pad_for_sum(data, chunk, settings), chunk.padded, math.nan
                    out = warp_chunk(
                        data, src.window_transform(src_window), src_crs, src_nodata,
                        tile.transform @ Affine.translation(chunk.window.col_off, chunk.window.row_off),
                        grid.crs, shape, settings, threads=max(threads, 1),
                        mem_limit_mb=max(int(chunk_bytes / 1e6), 16),
                    )
                    del data
                try:
                    dst.write(out, 1, window=chunk.window)
                except GDAL_ERRORS as exc:
                    raise OutputWriteError(out_path, exc) from exc
                progress()
                log.debug("chunk %d/%d %s <- source %s", i, len(chunks), chunk.window, chunk.source)
    seconds = time.monotonic() - started
    log.info("tile %s of %s written in %.2f s (%d source pixels read)", tile.id, dataset, seconds, pixels_read)
    return {"chunks": len(chunks), "seconds": seconds, "pixels_read": pixels_read,
            "pixels_written": tile.width * tile.height}


def block_chunk_cost(settings: WarpSettings, src_dtype: str, kx: int, ky: int) -> float:
    """Bytes held per source pixel by the block engine: the read (twice at the raster's edges,
    where it is copied into a padded array), its validity mask and NaN test, the method's working
    arrays (median: a float64 copy to sort; mode: sort keys and their values, up to 4 bytes each,
    or per-position counts), and output-sized float64 accumulators."""
    extra = {"med": 9, "mode": 9}.get(settings.method, 0)
    return 2 * np.dtype(src_dtype).itemsize + 2 + extra + 40 / (kx * ky)


def block_chunks(header: RasterHeader, settings: WarpSettings, tile: Tile, blocks, budget_bytes: int) -> list[Chunk]:
    """Cut a tile into chunks of whole output rows (or, for very wide tiles, columns too) whose
    blocks of source pixels fit ``budget_bytes``; ``blocks``: the tile's BlockGeometry."""
    kx, ky = blocks.kx, blocks.ky
    per_px = block_chunk_cost(settings, header.dtype, kx, ky)
    per_out_px = per_px * kx * ky
    cols = max(1, min(tile.width, int(budget_bytes // per_out_px)))
    rows = max(1, min(tile.height, int(budget_bytes // (per_out_px * cols))))
    breaks = row_breaks(tile.height, rows, blocks.row_off, ky, header.block_shape[0])
    chunks = []
    for r, r_end in zip(breaks, breaks[1:]):
        for c in range(0, tile.width, cols):
            window = Window(c, r, min(cols, tile.width - c), r_end - r)
            padded = Window(blocks.col_off + c * kx, blocks.row_off + r * ky, window.width * kx, window.height * ky)
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


# Methods for which GDAL 3.10 gives the target pixel just above (left of) the raster, when its
# edge is the raster's top (left) edge, the reduction of the raster's first row (column) under it:
# measured in tests/test_blocks.py and reproduced here so that the engines agree at the edges.
_EDGE_BLEED_METHODS = {"average", "min", "max", "mode", "med"}


def read_blocks(dataset: str, src, settings: WarpSettings, chunk: Chunk, blocks) -> tuple[np.ndarray, np.ndarray | None]:
    """A chunk's whole blocks of source pixels and where they hold values (None: everywhere);
    pixels beyond the raster's edge hold none, except as GDAL has it at the top and left edges."""
    if chunk.source == chunk.padded:
        data = read_source(dataset, src, settings, chunk.source, keep_nan=True)
        return data, valid_mask(data, settings.src_nodata)
    p = chunk.padded
    shape = (int(p.height), int(p.width))
    full = np.zeros(shape, np.dtype(src.dtypes[settings.band - 1]))
    inside = np.zeros(shape, bool)

    def read(window: Window) -> tuple[np.ndarray, np.ndarray]:
        data = read_source(dataset, src, settings, window, keep_nan=True)
        valid = valid_mask(data, settings.src_nodata)
        return data, (np.ones(data.shape, bool) if valid is None else valid)

    if chunk.source is not None:
        data, valid = read(chunk.source)
        r, c = int(chunk.source.row_off - p.row_off), int(chunk.source.col_off - p.col_off)
        full[r:r + data.shape[0], c:c + data.shape[1]] = data
        inside[r:r + data.shape[0], c:c + data.shape[1]] = valid
    if settings.method in _EDGE_BLEED_METHODS:
        top, left = -int(p.row_off), -int(p.col_off)  # the raster's first row and column in the chunk
        top_bleeds = 0 < top <= shape[0] and top % blocks.ky == 0
        left_bleeds = 0 < left <= shape[1] and left % blocks.kx == 0
        c0, c1 = max(int(p.col_off), 0), min(int(p.col_off + p.width), src.width)
        r0, r1 = max(int(p.row_off), 0), min(int(p.row_off + p.height), src.height)
        if top_bleeds and c1 > c0:  # the row just above the raster takes its first row
            data, valid = read(Window(c0, 0, c1 - c0, 1))
            cols = slice(c0 - int(p.col_off), c1 - int(p.col_off))
            full[top - 1, cols], inside[top - 1, cols] = data[0], valid[0]
        if left_bleeds and r1 > r0:  # the column just left of it takes its first column
            data, valid = read(Window(0, r0, 1, r1 - r0))
            rows = slice(r0 - int(p.row_off), r1 - int(p.row_off))
            full[rows, left - 1], inside[rows, left - 1] = data[:, 0], valid[:, 0]
        if top_bleeds and left_bleeds:  # and the corner its first pixel
            data, valid = read(Window(0, 0, 1, 1))
            full[top - 1, left - 1], inside[top - 1, left - 1] = data[0, 0], valid[0, 0]
    return full, inside


def pads_sum(settings: WarpSettings) -> bool:
    """Whether a chunk's source is padded for GDAL's sum (see pad_for_sum).

    Only within one CRS, where it makes tiles equal the whole-image warp exactly; across CRSs GDAL's
    own sum changes with its chunking anyway (README, "Accuracy"), and the padding would only move
    the edge of the footprint.
    """
    return settings.method == "sum" and settings.same_crs


def pad_for_sum(data: np.ndarray, chunk: Chunk, settings: WarpSettings) -> np.ndarray:
    """The chunk's source as float64 with NaN for nodata, padded with NaN out to its unclipped window.

    GDAL 3.10 weights its sum by a factor that it derives from the source window; when that window
    is clipped on one side only (a chunk at the raster's edge) the factor is off by up to a few
    percent. Padding beyond the raster with missing values keeps the window whole, and missing
    pixels do not count in a sum, so the result is that of the whole-image warp.
    """
    out = np.full((int(chunk.padded.height), int(chunk.padded.width)), np.nan)
    r = int(chunk.source.row_off - chunk.padded.row_off)
    c = int(chunk.source.col_off - chunk.padded.col_off)
    view = out[r:r + data.shape[0], c:c + data.shape[1]]
    view[...] = data
    if settings.src_nodata is not None and not math.isnan(settings.src_nodata):
        view[data == settings.src_nodata] = np.nan
    return out


def read_source(dataset: str, src, settings: WarpSettings, window: Window, keep_nan: bool = False) -> np.ndarray:
    """Read a full-resolution window of the selected band, with NaN turned into the nodata value
    (``keep_nan``: left as it is, for the block engine, whose validity mask excludes NaN anyway)."""
    try:
        data = src.read(settings.band, window=window)
    except GDAL_ERRORS as exc:
        raise InputRasterError(dataset, src.name, f"read of window {window} failed: {exc}") from exc
    if keep_nan:
        return data
    if data.dtype.kind == "f" and settings.src_nodata is not None and not math.isnan(settings.src_nodata):
        # GDAL skips only the declared nodata value; a NaN beside it would poison average and sum.
        np.copyto(data, data.dtype.type(settings.src_nodata), where=np.isnan(data))
    return data
