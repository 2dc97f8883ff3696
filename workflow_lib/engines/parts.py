"""A tile of a dataset made of files on several grids: each part resampled, then combined in order.

Files in several UTM zones (or of several pixel sizes) cannot share one VRT without resampling
them twice. Each part (sources.members: a run of files on one grid) is resampled onto the tile on
its own, with its own engine and settings, as if it were a dataset of its own; then the parts are
painted in order, a later part's valid pixels over an earlier one's. That is what warping each
file with GDAL and combining the results in order gives (the tests' reference). Parts that do not
reach the tile are skipped; a tile that one part alone reaches is made directly.
"""

from __future__ import annotations

import contextlib
import os

import numpy as np
import rasterio

from workflow_lib.atomic import atomic_path, temporary_prefix
from workflow_lib.engines.blocks import valid_mask
from workflow_lib.engines.resample import resample_tile
from workflow_lib.errors import GDAL_ERRORS, OutputWriteError
from workflow_lib.gtiff import open_output, tile_profile
from workflow_lib.mosaics.statistics import STATS_TAG, PixelStats
from workflow_lib.planning.grid import TargetGrid, Tile
from workflow_lib.planning.plan import DatasetPlan


def resample_parts(dataset: DatasetPlan, grid: TargetGrid, tile: Tile, out_path: str, mem_mb: int,
                   compress: str = "deflate", tags: dict[str, str] | None = None, **options) -> dict:
    """Make ``tile`` of a dataset of several parts into ``out_path`` (atomically); returns the
    figures of resample_tile, summed over the parts. ``options``: those of resample_tile."""
    parts = [p for p in dataset.parts if p.reaches(tile.id)]
    if len(parts) <= 1:
        part = parts[0] if parts else dataset.parts[0]
        return resample_tile(dataset.name, part.header, part.settings, grid, tile, out_path, mem_mb,
                             compress=compress, tags=tags, **options)
    settings = dataset.settings
    figures = {"chunks": 0, "seconds": 0.0, "pixels_read": 0, "compiled": False,
               "pixels_written": tile.width * tile.height}
    pieces = [f"{temporary_prefix(out_path)}part{i}.tif" for i in range(len(parts))]
    try:
        for part, piece in zip(parts, pieces):
            # One part at a time, each with the whole budget; uncompressed: read back at once.
            done = resample_tile(dataset.name, part.header, part.settings, grid, tile, piece, mem_mb,
                                 compress="none", **options)
            for key in ("chunks", "seconds", "pixels_read"):
                figures[key] += done[key]
            figures["compiled"] |= done["compiled"]
        out = None
        for piece in pieces:
            with rasterio.open(piece) as src:
                data = src.read(1)
            if out is None:
                out = data
            else:
                later = valid_mask(data, settings.dst_nodata)
                out[later] = data[later]
            del data
        stats = PixelStats()
        stats.add(out, settings.dst_nodata)
        stats.total = tile.width * tile.height
        profile = tile_profile(tile.width, tile.height, tile.transform, grid.crs, settings.dst_dtype,
                               settings.dst_nodata, compress)
        with atomic_path(out_path) as tmp, open_output(tmp, out_path, profile) as dst:
            try:
                dst.write(out, 1)
            except GDAL_ERRORS as exc:
                raise OutputWriteError(out_path, exc) from exc
            dst.update_tags(**(tags or {}), **{STATS_TAG: stats.to_json()})
    finally:
        for piece in pieces:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(piece)
    figures["stats"] = stats
    return figures
