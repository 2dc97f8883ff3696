"""Resample one tile, streaming it in chunks that fit the job's memory (engines.chunks).

For each chunk, the source window it needs (plus a padding wide enough for the resampling
kernel) is read from the input's full-resolution band, never its overviews, and handed to the
dataset's engine: NumPy block reductions (engines.blocks) where target pixels are whole blocks of
input pixels, else GDAL's warper (engines.warp) with the dataset's fixed XSCALE/YSCALE, so that the
result does not depend on where chunks and tiles begin. The parts of a tile that the raster does
not reach are never read: GDAL fills the blocks that were never written with nodata.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

import numpy as np
import rasterio
from affine import Affine
from rasterio.windows import Window

from workflow_lib.atomic import atomic_path
from workflow_lib.domain import Engine
from workflow_lib.engines.blocks import LARGE_BLOCK, reduce_blocks_masked, reduce_large_blocks, valid_mask
from workflow_lib.engines.chunks import (Chunk, MemoryBudget, block_chunks, conservative_chunks,
                                         pads_source, plan_chunks, tile_axis_ranges, uses_kernels, window_chunks)
from workflow_lib.engines.warp import warp_chunk
from workflow_lib.engines.windows import reduce_windows
from workflow_lib.errors import GDAL_ERRORS, InputRasterError, OutputWriteError, gdal_cause
from workflow_lib.gtiff import open_output, tile_profile
from workflow_lib.statistics import STATS_TAG, PixelStats
from workflow_lib.planning.engine import BlockGeometry, block_geometry
from workflow_lib.planning.grid import TargetGrid, Tile
from workflow_lib.planning.settings import WarpSettings
from workflow_lib.runtime import KERNELS_MB
from workflow_lib.sources.header import RasterHeader
from workflow_lib.sources.members import failing_member
from workflow_lib.sources.remote import gdal_options

log = logging.getLogger(__name__)


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
    tags: dict[str, str] | None = None,
    on_chunk: Callable[[int, int, int], None] | None = None,
    compiled: bool | None = None,
    keep_pixels: bool = False,
) -> dict:
    """Warp one tile of ``dataset`` into ``out_path`` (written atomically). Returns figures.

    ``max_chunk_bytes`` caps chunks below what ``mem_mb`` allows (tests use it to make many chunks
    out of small data). ``progress`` is called after every chunk read and written (the watchdog).
    ``tags``: GeoTIFF metadata written into the tile (the digest of its settings, engines.batch).
    ``on_chunk(done, total, pixels_read)`` is told after each chunk is written (progress in heartbeats).
    ``compiled``: the block engine reduces with the compiled kernels (engines.kernels), else with
    NumPy (the same pixels, bit for bit); None: the kernels where ``mem_mb`` holds them as well
    (engines.chunks.uses_kernels; a batch job decides once for all its tiles, engines.batch).
    The figures include the statistics of the pixels written (workflow_lib.statistics), also kept in the
    tile's STATS_TAG. ``keep_pixels``: the figures' "pixels" are also the tile's pixels (bands, rows,
    columns) when one chunk made them all (its memory was budgeted for them anyway), for the job's
    other outputs of the tile (its Zarr chunk), which then need not read the file back; else None.
    """
    progress = progress or (lambda: None)
    if compiled is None:
        compiled = uses_kernels(settings, mem_mb)
        if compiled or settings.engine is Engine.CONSERVATIVE:
            mem_mb -= KERNELS_MB  # what the tile's data may use beside numba and its code
    budget = MemoryBudget.for_job(mem_mb)
    chunk_bytes = min(budget.chunk_bytes, max_chunk_bytes or budget.chunk_bytes)
    blocks = None
    if settings.engine is Engine.BLOCKS:
        blocks, why = block_geometry(header.transform, tile.transform)
        if blocks is None:  # the plan checked the grid; a tile can only disagree if the plan is stale
            raise InputRasterError(dataset, header.path, f"the numpy engine cannot resample tile {tile.id}: {why}")
        chunks = block_chunks(header, settings, tile, blocks, chunk_bytes, compiled)
    elif settings.engine is Engine.WINDOWS:
        chunks = window_chunks(header, settings, grid, tile, chunk_bytes)
    elif settings.engine is Engine.CONSERVATIVE:
        chunks = conservative_chunks(header, settings, grid, tile, chunk_bytes)
    else:
        chunks = [c for c in plan_chunks(header, settings, tile, grid.crs, chunk_bytes) if c.source is not None]
    log.info(
        "tile %s of %s: %dx%d px in %d chunk(s), budget %d MB (GDAL cache %d MB, chunks %.0f MB), method %s, "
        "engine %s (%s)", tile.id, dataset, tile.width, tile.height, len(chunks), mem_mb, budget.cache_mb,
        chunk_bytes / 1e6, settings.method, settings.engine.label, settings.engine_reason,
    )
    profile = tile_profile(
        tile.width, tile.height, tile.transform, grid.crs, settings.dst_dtype, settings.dst_nodata, compress
    )
    profile["count"] = settings.output_bands
    started = time.monotonic()
    pixels_read = 0
    stats = PixelStats()
    pixels = None
    env = {"GDAL_CACHEMAX": budget.cache_mb, "GDAL_NUM_THREADS": max(threads, 1), **gdal_options(header.path)}
    with rasterio.Env(**env), atomic_path(out_path) as tmp:
        try:
            src = rasterio.open(header.path, OVERVIEW_LEVEL="NONE")
        except rasterio.errors.RasterioIOError as exc:
            raise InputRasterError(dataset, header.path, f"cannot be opened: {exc}") from exc
        with src, open_output(tmp, out_path, profile) as dst:
            if tags:
                dst.update_tags(**tags)
            for i, chunk in enumerate(chunks, 1):
                if blocks is not None:
                    out = _block_chunk(dataset, src, settings, chunk, blocks, compiled)
                elif settings.engine is Engine.WINDOWS:
                    out = _window_chunk(dataset, src, header, settings, grid, tile, chunk)
                elif settings.engine is Engine.CONSERVATIVE:
                    out = _conservative_chunk(dataset, src, header, settings, grid, tile, chunk)
                else:
                    out = _warp_chunk(dataset, src, header, settings, grid, tile, chunk, threads, chunk_bytes)
                progress()
                pixels_read += 0 if chunk.source is None else int(chunk.source.width * chunk.source.height)
                try:
                    if out.ndim == 3:
                        dst.write(out, window=chunk.window)
                    else:
                        dst.write(out, 1, window=chunk.window)
                except GDAL_ERRORS as exc:
                    raise OutputWriteError(out_path, exc) from exc
                stats.add(out, settings.dst_nodata)
                if keep_pixels and _whole_tile(chunk, tile) and out.dtype == np.dtype(settings.dst_dtype):
                    pixels = out if out.ndim == 3 else out[np.newaxis]  # as written: no cast by GDAL
                del out
                progress()
                if on_chunk:
                    on_chunk(i, len(chunks), pixels_read)
                log.debug("chunk %d/%d %s <- source %s", i, len(chunks), chunk.window, chunk.source)
            # What no chunk wrote (beyond the raster's reach) is nodata.
            stats.total = tile.width * tile.height * settings.output_bands
            dst.update_tags(**{STATS_TAG: stats.to_json()})
    seconds = time.monotonic() - started
    log.debug("tile %s of %s written in %.2f s (%d source pixels read)", tile.id, dataset, seconds, pixels_read)
    return {"chunks": len(chunks), "seconds": seconds, "pixels_read": pixels_read, "compiled": compiled,
            "pixels_written": tile.width * tile.height, "stats": stats, "pixels": pixels}


def _whole_tile(chunk: Chunk, tile: Tile) -> bool:
    w = chunk.window
    return (w.col_off, w.row_off, w.width, w.height) == (0, 0, tile.width, tile.height)


def _block_chunk(
    dataset: str, src, settings: WarpSettings, chunk: Chunk, blocks: BlockGeometry, compiled: bool
) -> np.ndarray:
    kx, ky = blocks.kx, blocks.ky
    if kx * ky > LARGE_BLOCK:
        # Large blocks are reduced segment by segment over the pixels that exist (no padding).
        data = read_source(dataset, src, settings, chunk.source, keep_nan=True)
        s, p = chunk.source, chunk.padded
        col_starts = np.maximum(int(p.col_off) + np.arange(int(chunk.window.width)) * kx, int(s.col_off))
        row_starts = np.maximum(int(p.row_off) + np.arange(int(chunk.window.height)) * ky, int(s.row_off))
        centre = (int(p.row_off) + np.arange(int(chunk.window.height)) * ky + ky // 2 - int(s.row_off),
                  int(p.col_off) + np.arange(int(chunk.window.width)) * kx + kx // 2 - int(s.col_off))
        return reduce_large_blocks(data, valid_mask(data, settings.src_nodata), row_starts - int(s.row_off),
                                   col_starts - int(s.col_off), centre, settings.method, settings.dst_dtype,
                                   settings.dst_nodata)
    if compiled:
        # Imported here, not at the top: the Snakefile imports this module at every parse (in every
        # cluster job too), and loading numba there would cost each of them its import.
        from workflow_lib.engines.kernels import reduce_blocks_compiled as reduce
    else:
        reduce = reduce_blocks_masked
    if chunk.source == chunk.padded:  # both test nodata and NaN themselves
        data, valid = read_source(dataset, src, settings, chunk.source, keep_nan=True), None
    else:
        data, valid = padded_source(dataset, src, settings, chunk)
    return reduce(data, valid, settings.src_nodata, kx, ky, settings.method, settings.dst_dtype, settings.dst_nodata)


def _window_chunk(dataset, src, header, settings, grid, tile, chunk) -> np.ndarray:
    data = read_source(dataset, src, settings, chunk.source, keep_nan=True)
    rows, cols = tile_axis_ranges(header, grid, tile, chunk.window)
    return reduce_windows(data, valid_mask(data, settings.src_nodata), rows, cols,
                          (int(chunk.source.row_off), int(chunk.source.col_off)), settings.method,
                          settings.dst_dtype, settings.dst_nodata)


def _warp_chunk(dataset, src, header, settings, grid, tile, chunk, threads, chunk_bytes) -> np.ndarray:
    valid = None
    if pads_source(settings):
        data, valid = padded_source(dataset, src, settings, chunk)
        window, nodata = chunk.padded, None
    else:
        data = read_source(dataset, src, settings, chunk.source)
        window, nodata = chunk.source, settings.src_nodata
    return warp_chunk(
        data, src.window_transform(window), header.crs, nodata,
        tile.transform @ Affine.translation(chunk.window.col_off, chunk.window.row_off),
        grid.crs, (int(chunk.window.height), int(chunk.window.width)), settings, threads=max(threads, 1),
        mem_limit_mb=max(int(chunk_bytes / 1e6), 16), valid=valid,
    )


def _conservative_chunk(dataset, src, header, settings, grid, tile, chunk) -> np.ndarray:
    # Imported here: numba, which the Snakefile's parse must not load (see _block_chunk).
    from workflow_lib.engines.conservative import resample_chunk

    if chunk.source is None:
        shape = (settings.output_bands, int(chunk.window.height), int(chunk.window.width))
        return np.full(shape if shape[0] > 1 else shape[1:], settings.dst_nodata, settings.dst_dtype)
    data = read_source(dataset, src, settings, chunk.source, keep_nan=True)
    window = Window(tile.window.col_off + chunk.window.col_off, tile.window.row_off + chunk.window.row_off,
                    chunk.window.width, chunk.window.height)
    return resample_chunk(data, chunk.source, header, grid, window, settings)


def padded_source(dataset: str, src, settings: WarpSettings, chunk: Chunk) -> tuple[np.ndarray, np.ndarray]:
    """The chunk's source out to ``chunk.padded``, and where it holds values: not beyond the
    raster's edge, not nodata, not NaN. In the input's own type (GDAL's mode of bytes is a
    histogram, of floats a search that grows with the square of the pixels: 1,000 x 1,000 float32
    pixels into one took 494 s)."""
    p, s = chunk.padded, chunk.source
    full = np.zeros((int(p.height), int(p.width)), np.dtype(src.dtypes[settings.band - 1]))
    inside = np.zeros(full.shape, bool)
    data = read_source(dataset, src, settings, s, keep_nan=True)
    valid = valid_mask(data, settings.src_nodata)
    r, c = int(s.row_off - p.row_off), int(s.col_off - p.col_off)
    full[r:r + data.shape[0], c:c + data.shape[1]] = data
    inside[r:r + data.shape[0], c:c + data.shape[1]] = True if valid is None else valid
    return full, inside


def read_source(dataset: str, src, settings: WarpSettings, window: Window, keep_nan: bool = False) -> np.ndarray:
    """Read a full-resolution window of the selected band, with NaN turned into the nodata value
    (``keep_nan``: left as it is, for the block engine, whose validity mask excludes NaN anyway)."""
    try:
        data = src.read(settings.band, window=window)
    except GDAL_ERRORS as exc:
        if src.driver == "VRT":  # many files (or a VRT of them): name the one that failed
            found = failing_member(src.name, window, settings.band)
            if found:
                raise InputRasterError(dataset, found[0], f"cannot be read (a file of {src.name}, under window "
                                       f"{window} of it): {found[1]}") from exc
        raise InputRasterError(dataset, src.name, f"read of window {window} failed: {gdal_cause(exc)}") from exc
    if keep_nan:
        return data
    if data.dtype.kind == "f" and settings.src_nodata is not None and not math.isnan(settings.src_nodata):
        # GDAL skips only the declared nodata value; a NaN beside it would poison average and sum.
        np.copyto(data, data.dtype.type(settings.src_nodata), where=np.isnan(data))
    return data
