"""Tiles made of pieces: datasets of files on several grids, and datasets of several bands.

**Parts.** Files in several UTM zones (or of several pixel sizes) cannot share one VRT without
resampling them twice. Each part (sources.members: a run of files on one grid) is resampled onto
the tile on its own, with its own engine and settings, as if it were a dataset of its own; then
the parts are painted in order, a later part's valid pixels over an earlier one's. That is what
warping each file with GDAL and combining the results in order gives (the tests' reference).
Parts that do not reach the tile are skipped; a tile that one part alone reaches is made directly.

**Bands.** Each band is resampled as a one-band dataset would be, one after the other, so a job's
memory is that of one band whatever the number of bands, and written as one band of the tile.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os

import rasterio

from workflow_lib.atomic import atomic_path, temporary_prefix
from workflow_lib.engines.blocks import valid_mask
from workflow_lib.engines.resample import resample_tile
from workflow_lib.errors import GDAL_ERRORS, OutputWriteError
from workflow_lib.gtiff import open_output, tile_profile
from workflow_lib.planning.grid import TargetGrid, Tile
from workflow_lib.planning.plan import DatasetPlan
from workflow_lib.statistics import STATS_TAG, PixelStats


def make_tile(dataset: DatasetPlan, grid: TargetGrid, tile: Tile, out_path: str, mem_mb: int,
              compress: str = "deflate", tags: dict[str, str] | None = None, **options) -> dict:
    """Make ``tile`` of ``dataset`` into ``out_path`` (atomically), whatever its parts and bands;
    returns the figures of resample_tile (summed over pieces). ``options``: those of resample_tile."""
    bands = dataset.settings.bands
    if not bands:
        return _one_band(dataset, dataset.settings.band, grid, tile, out_path, mem_mb, compress, tags, **options)
    settings = dataset.settings
    pieces = [f"{temporary_prefix(out_path)}band{b}.tif" for b in bands]
    stats = PixelStats()
    profile = tile_profile(tile.width, tile.height, tile.transform, grid.crs, settings.dst_dtype,
                           settings.dst_nodata, compress)
    profile["count"] = len(bands)
    # The pieces are temporaries of the tile: made once atomic_path has removed a killed job's.
    with atomic_path(out_path) as tmp:
        try:
            figures = _sum([_one_band(dataset, b, grid, tile, piece, mem_mb, "none", None, **options)
                            for b, piece in zip(bands, pieces)], tile)
            with open_output(tmp, out_path, profile) as dst:
                for i, piece in enumerate(pieces, 1):
                    with rasterio.open(piece) as src:
                        data = src.read(1)
                    stats.add(data, settings.dst_nodata)
                    try:
                        dst.write(data, i)
                    except GDAL_ERRORS as exc:
                        raise OutputWriteError(out_path, exc) from exc
                    del data
                stats.total = tile.width * tile.height * len(bands)
                dst.update_tags(**(tags or {}), **{STATS_TAG: stats.to_json()})
        finally:
            _remove(pieces)
    figures["stats"] = stats
    return figures


def _one_band(dataset: DatasetPlan, band: int, grid: TargetGrid, tile: Tile, out_path: str, mem_mb: int,
              compress: str, tags: dict[str, str] | None, **options) -> dict:
    if dataset.parts:
        return resample_parts(dataset, band, grid, tile, out_path, mem_mb, compress, tags, **options)
    settings = dataclasses.replace(dataset.settings, band=band, bands=())
    return resample_tile(dataset.name, dataset.header, settings, grid, tile, out_path, mem_mb, compress=compress,
                         tags=tags, **options)


def _sum(done: list[dict], tile: Tile) -> dict:
    figures = {"chunks": 0, "seconds": 0.0, "pixels_read": 0, "compiled": False,
               "pixels_written": tile.width * tile.height}
    for d in done:
        for key in ("chunks", "seconds", "pixels_read"):
            figures[key] += d[key]
        figures["compiled"] |= d["compiled"]
    return figures


def _remove(paths: list[str]) -> None:
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def resample_parts(dataset: DatasetPlan, band: int, grid: TargetGrid, tile: Tile, out_path: str, mem_mb: int,
                   compress: str = "deflate", tags: dict[str, str] | None = None, **options) -> dict:
    """Make one band of ``tile`` of a dataset of several parts into ``out_path`` (atomically)."""
    reaching = [p for p in dataset.parts if p.reaches(tile.index)] or [dataset.parts[0]]
    parts = [dataclasses.replace(p, settings=dataclasses.replace(p.settings, band=band, bands=())) for p in reaching]
    if len(parts) == 1:
        return resample_tile(dataset.name, parts[0].header, parts[0].settings, grid, tile, out_path, mem_mb,
                             compress=compress, tags=tags, **options)
    settings = dataset.settings
    pieces = [f"{temporary_prefix(out_path)}part{i}.tif" for i in range(len(parts))]
    try:
        # One part at a time, each with the whole budget; uncompressed: read back at once.
        figures = _sum([resample_tile(dataset.name, part.header, part.settings, grid, tile, piece, mem_mb,
                                      compress="none", **options) for part, piece in zip(parts, pieces)], tile)
        out = None
        for piece in pieces:
            with rasterio.open(piece) as src:
                data = src.read()  # every band: a value, or class shares, and the coverage
            if out is None:
                out = data
            else:
                later = valid_mask(data, settings.dst_nodata).any(axis=0)
                out[:, later] = data[:, later]
            del data
        stats = PixelStats()
        stats.add(out, settings.dst_nodata)
        stats.total = out.size
        profile = tile_profile(tile.width, tile.height, tile.transform, grid.crs, settings.dst_dtype,
                               settings.dst_nodata, compress)
        profile["count"] = out.shape[0]
        with atomic_path(out_path) as tmp, open_output(tmp, out_path, profile) as dst:
            try:
                dst.write(out)
            except GDAL_ERRORS as exc:
                raise OutputWriteError(out_path, exc) from exc
            dst.update_tags(**(tags or {}), **{STATS_TAG: stats.to_json()})
    finally:
        _remove(pieces)
    figures["stats"] = stats
    return figures
