"""The overview levels of a mosaic, made from its full-resolution pixels in one pass.

GDAL's COG driver builds a mosaic's overviews itself by reading the whole mosaic a second time
(its VRT of tiles) and running its overview resampling, single-threaded with nodata, into a
temporary ZSTD file that it then reads back: half of a mosaic's time (bench/README.md). Here the
levels are made while the tiles are read once, window by window, on the job's threads, and the COG
driver copies them as the mosaic's own overviews (a VRT band's <Overview> elements).

The levels are those the COG driver would make: factors 2, 4, 8, ... while the level before is
larger than a block (512) either way, each ceil(size / factor) pixels. Each level's pixel is made
from the full-resolution pixels of its factor x factor block, never from the level before:

- ``average`` (every continuous method): the sum of the block's valid pixels over their count, in
  double precision, cast to the mosaic's type as the resampling is (halves up, nudged off nodata);
  nodata where the block has no valid pixel. GDAL instead averages the level before, which weights
  partly empty blocks wrongly, and at levels whose size is not an exact division (313 pixels for
  10,000 / 32) spreads each pixel over fractions of its neighbours;
- ``nearest`` (categorical methods): the pixel at the centre of the block (of the part of it inside
  the mosaic at its right and bottom edges), as it is.

A window of the pass is WINDOW pixels square: every factor up to it divides it, so each level pixel
is made inside one window. Mosaics that need a larger factor (more than about two million pixels
across) keep GDAL's own overviews. The levels whose part of a window is whole blocks (factors 2
and 4) are ZSTD-compressed; the coarser ones, whose blocks fill up over several windows, are not
(GTiff would compress each partial block and decompress it again for every later window: 6x
slower), and are 1/48 of the raw mosaic together.
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np
import rasterio
from affine import Affine
from rasterio.windows import Window

from workflow_lib.atomic import temporary_prefix
from workflow_lib.engines.blocks import block_centres, to_output
from workflow_lib.gtiff import TILE_CODEC, compression_options

WINDOW = 2048
COG_BLOCK = 512  # the mosaic's block size, below which the COG driver makes no further level


def cog_factors(width: int, height: int, block: int = COG_BLOCK) -> list[int]:
    """The overview factors GDAL's COG driver makes for a raster of this size (cogdriver.cpp)."""
    factors, w, h, f = [], width, height, 2
    while w > block or h > block:
        factors.append(f)
        f *= 2
        w //= 2
        h //= 2
    return factors


def made_here(factors: list[int]) -> bool:
    """Whether this module makes these levels (else GDAL's COG driver does)."""
    return bool(factors) and factors[-1] <= WINDOW


@numba.njit(nogil=True, cache=True)
def _pair_sums(data, nodata, use_nodata, sums, counts):
    """Sum and count of the valid pixels of each 2 x 2 block of ``data`` (of any shape: blocks at
    its right and bottom edges may be partial). Missing: NaN, or equal to ``nodata``."""
    sums[:] = 0.0
    counts[:] = 0
    h, w = data.shape
    for r in range(h):
        i = r >> 1
        for c in range(w):
            v = data[r, c]
            if v != v or (use_nodata and v == nodata):
                continue
            sums[i, c >> 1] += np.float64(v)
            counts[i, c >> 1] += 1


@numba.njit(nogil=True, cache=True)
def _halve(sums, counts, out_sums, out_counts):
    """Sums and counts of 2 x 2 blocks of sums and counts: the next factor, from the same pixels."""
    out_sums[:] = 0.0
    out_counts[:] = 0
    h, w = sums.shape
    for r in range(h):
        for c in range(w):
            out_sums[r >> 1, c >> 1] += sums[r, c]
            out_counts[r >> 1, c >> 1] += counts[r, c]


def average_levels(data: np.ndarray, nodata: float | None, factors: list[int], dtype: str,
                   dst_nodata: float) -> list[np.ndarray]:
    """Each factor's level of ``data`` (factors 2, 4, 8, ...: each the double of the one before):
    the mean of each block's valid pixels."""
    use_nodata = nodata is not None and not math.isnan(nodata)
    h, w = data.shape
    sums = np.empty((-(-h // 2), -(-w // 2)), np.float64)
    counts = np.empty(sums.shape, np.int64)
    _pair_sums(data, data.dtype.type(nodata) if use_nodata else data.dtype.type(0), use_nodata, sums, counts)
    levels = []
    for k, _ in enumerate(factors):
        if k:
            next_sums = np.empty((-(-sums.shape[0] // 2), -(-sums.shape[1] // 2)), np.float64)
            next_counts = np.empty(next_sums.shape, np.int64)
            _halve(sums, counts, next_sums, next_counts)
            sums, counts = next_sums, next_counts
        found = counts > 0
        with np.errstate(invalid="ignore", divide="ignore"):
            levels.append(to_output(sums / np.maximum(counts, 1), found, dtype, dst_nodata))
    return levels


def nearest_levels(data: np.ndarray, factors: list[int]) -> list[np.ndarray]:
    """Each factor's level of ``data``: the pixel at the centre of each block (of the part of the
    block inside ``data`` at its edges)."""
    return [data[np.ix_(block_centres(data.shape[0], f), block_centres(data.shape[1], f))] for f in factors]


@contextlib.contextmanager
def overview_files(vrt_path: str, out_path: str, factors: list[int], resampling: str, threads: int
                   ) -> Iterator[list[str]]:
    """Level files of the raster ``vrt_path`` (one per factor, all its bands), as temporaries of
    ``out_path``, removed on leaving. ``resampling``: "average" or "nearest"."""
    prefix = f"{temporary_prefix(out_path)}ovr-{os.getpid()}-"
    paths = [f"{prefix}{f}.tif" for f in factors]
    try:
        _write_levels(vrt_path, paths, factors, resampling, threads)
        yield paths
    finally:
        for path in paths:
            for leftover in (path, path + ".aux.xml"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(leftover)


def _write_levels(vrt_path: str, paths: list[str], factors: list[int], resampling: str, threads: int) -> None:
    with rasterio.open(vrt_path) as src:
        width, height, count = src.width, src.height, src.count
        dtype, nodata = src.dtypes[0], src.nodata
        profile = {"driver": "GTiff", "count": count, "dtype": dtype, "nodata": nodata, "crs": src.crs,
                   "tiled": True, "blockxsize": COG_BLOCK, "blockysize": COG_BLOCK, "bigtiff": "if_safer"}
        transform = src.transform
    # Read once, by the COG driver: the quickest codec, as for tiles.
    codec = compression_options(TILE_CODEC, dtype, fast=True)
    levels = [rasterio.open(path, "w", width=-(-width // f), height=-(-height // f),
                            transform=transform @ Affine.scale(f), **profile,
                            **(codec if (WINDOW // f) % COG_BLOCK == 0 else {}))
              for path, f in zip(paths, factors)]
    lock = threading.Lock()
    strips = list(range(0, height, WINDOW))

    def strip(row: int) -> None:
        # One dataset per thread: a rasterio dataset is not to be shared between threads.
        with rasterio.open(vrt_path) as src:
            for col in range(0, width, WINDOW):
                window = Window(col, row, min(WINDOW, width - col), min(WINDOW, height - row))
                for band in range(1, count + 1):
                    data = src.read(band, window=window)
                    if resampling == "nearest":
                        made = nearest_levels(data, factors)
                    else:
                        made = average_levels(data, nodata, factors, dtype, nodata)
                    with lock:
                        for dst, f, level in zip(levels, factors, made):
                            dst.write(level, band, window=Window(col // f, row // f, level.shape[1],
                                                                 level.shape[0]))
                    del data, made

    try:
        with ThreadPoolExecutor(max(1, threads)) as pool:
            futures = [pool.submit(strip, row) for row in strips]
            try:
                for done in futures:
                    done.result()
            except BaseException:
                for f in futures:  # stop at the first error: the rest would be thrown away
                    f.cancel()
                raise
    finally:
        for dst in levels:
            dst.close()
