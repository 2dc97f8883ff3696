"""Merge tiles into one mosaic per dataset, and mosaics into one aligned stack.

Both are streamed: a VRT places every tile (or mosaic) on the target grid and GDAL's COG driver
copies it block by block. Missing tiles are nodata. A mosaic's overview levels are made first, in
one threaded pass over the tiles (mosaics.overviews), and copied by the COG driver as they are; the
stack's, and those of mosaics too large for that pass, are built by the COG driver from the copy.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
from collections.abc import Iterator

import numpy as np
import rasterio
import rasterio.shutil
from affine import Affine

from workflow_lib.atomic import atomic_path, temporary_prefix
from workflow_lib.domain import TileIndex
from workflow_lib.errors import GDAL_ERRORS, InputRasterError, OutputWriteError
from workflow_lib.gtiff import compression_options
from workflow_lib.planning.grid import TargetGrid
from workflow_lib.planning.plan import DatasetPlan
from workflow_lib.planning.settings import WarpSettings
from workflow_lib.statistics import PixelStats
from workflow_lib.vrt import Band, Source, vrt_xml

log = logging.getLogger(__name__)

# A mosaic of more tiles than this reads them through one VRT per square of about this many tiles
# (hierarchical VRTs): the top VRT then holds a few hundred sources even for a million tiles, and
# GDAL opens a square's VRT, and its tiles, only when the copy reaches it, keeping at most
# MAX_OPEN_DATASETS datasets open (GDAL_MAX_DATASET_POOL_SIZE): files and memory stay bounded.
GROUP_TILES = 1024
MAX_OPEN_DATASETS = 256


def write_mosaic(
    dataset: str,
    settings: WarpSettings,
    grid: TargetGrid,
    tile_paths: list[str],
    out_path: str,
    mem_mb: int,
    threads: int = 1,
    compress: str = "deflate",
    cog: bool = True,
    group_tiles: int = GROUP_TILES,
    level: int | None = None,
    band_names: tuple[str, ...] = (),
) -> None:
    """The mosaic of ``tile_paths`` on ``grid``, compressed with ``compress`` at ``level`` (None:
    GDAL's default). ``band_names``: those of a dataset of several bands (settings.bands), one
    band of the mosaic each; else one band named after the dataset."""
    bands = tile_bands(dataset, settings, grid, tile_paths, band_names)
    overview = "NEAREST" if settings.method.is_categorical else "AVERAGE"
    log.info("mosaic of %s: %d tiles on a %d x %d grid, %d band(s)", dataset, len(bands[0].sources), grid.width,
             grid.height, len(bands))
    tiles_band = bands[0]
    try:
        _copy_vrt(grid, bands, out_path, mem_mb, threads, compress, cog, overview, group_tiles, level,
                  own_overviews=True)
    except OutputWriteError:
        remove_corrupt_tiles(dataset, tiles_band.sources, settings.dst_dtype)
        raise


def remove_corrupt_tiles(dataset: str, sources: list[Source], dtype: str) -> None:
    """After a copy of tiles failed: reading a tile may be what failed. Find corrupt tiles (only
    now, so a healthy run never reads its tiles twice), remove them so that the next run makes them
    again, and say so (InputRasterError); return if every tile reads."""
    corrupt = [s.path for s in sources if not tile_is_readable(s, dtype)]
    if not corrupt:
        return
    for path in corrupt:
        with contextlib.suppress(FileNotFoundError):  # the mosaic and the stack may both find it
            os.unlink(path)
    raise InputRasterError(
        dataset, corrupt[0],
        f"{len(corrupt)} corrupt tile file(s) ({', '.join(os.path.basename(p) for p in corrupt)}; left by a "
        "crash?) were removed: run the workflow again to make them anew",
    ) from None


def tile_bands(dataset: str, settings: WarpSettings, grid: TargetGrid, tile_paths: list[str],
               band_names: tuple[str, ...] = (), relative_to: str | None = None) -> list[Band]:
    """The mosaic's bands, each with the tiles as its sources (paths relative to the folder
    ``relative_to``, else absolute); a missing tile is said and left out (its area is nodata)."""
    names = band_names or (dataset,)
    bands = [Band(dtype=settings.dst_dtype, nodata=settings.dst_nodata, description=name,
                  metadata={"method": settings.method.value}) for name in names]
    for path in tile_paths:
        if not os.path.exists(path):
            log.warning("tile %s of %s is missing: its area stays nodata", path, dataset)
            continue
        tile = grid.tile(TileIndex.parse(os.path.splitext(os.path.basename(path))[0]))
        source = os.path.relpath(path, relative_to) if relative_to else os.path.abspath(path)
        for i, band in enumerate(bands, 1):
            band.sources.append(Source(source, i, int(tile.window.col_off), int(tile.window.row_off), tile.width,
                                       tile.height, settings.dst_dtype))
    return bands


def write_virtual_mosaic(dataset: str, settings: WarpSettings, grid: TargetGrid, tile_paths: list[str],
                         out_path: str, band_names: tuple[str, ...] = ()) -> None:
    """The mosaic as a VRT over the tiles, for GIS software when no GeoTIFF mosaic is made
    (output.formats: [zarr]): no pixel is copied, and it stays right as long as the tiles stay."""
    bands = tile_bands(dataset, settings, grid, tile_paths, band_names,
                       relative_to=os.path.dirname(os.path.abspath(out_path)))
    try:
        with atomic_path(out_path) as tmp, open(tmp, "w") as f:
            f.write(vrt_xml(grid.width, grid.height, grid.crs, grid.transform, bands))
    except OSError as exc:
        raise OutputWriteError(out_path, exc) from exc


def mosaic_statistics(stats: PixelStats, grid: TargetGrid, dataset: DatasetPlan) -> dict:
    """The statistics of a dataset's mosaic, from its tiles' (gathered as they were written): its
    pixels are the tiles' pixels, and the grid's pixels that no tile covers are nodata."""
    summary = stats.summary(categorical=dataset.settings.method.is_categorical)
    # Over all its bands, for a dataset of several (input bands, or class shares and coverage).
    summary["total_pixels"] = grid.width * grid.height * max(len(dataset.settings.bands), 1) * \
        dataset.settings.output_bands
    summary["valid_share"] = summary["valid_pixels"] / summary["total_pixels"]
    return {"dataset": dataset.name, "method": dataset.settings.method.value, "dtype": dataset.settings.dst_dtype,
            **summary}


@contextlib.contextmanager
def grouped_sources(band: Band, grid: TargetGrid, out_path: str, group_tiles: int, index: int = 1) -> Iterator[Band]:
    """``band`` itself when it has at most ``group_tiles`` sources; else a band whose sources are
    VRTs of squares of the tile grid, written as temporaries beside ``out_path``."""
    if len(band.sources) <= group_tiles:
        yield band
        return
    side = max(1, math.isqrt(group_tiles))
    squares: dict[tuple[int, int], list[Source]] = {}
    for s in band.sources:
        squares.setdefault((s.row_off // grid.tile_size // side, s.col_off // grid.tile_size // side), []).append(s)
    grouped = Band(band.dtype, band.nodata, band.description, metadata=band.metadata)
    written = []
    try:
        for (r, c), sources in sorted(squares.items()):
            row0, col0 = r * side * grid.tile_size, c * side * grid.tile_size
            height = min(side * grid.tile_size, grid.height - row0)
            width = min(side * grid.tile_size, grid.width - col0)
            inner = Band(band.dtype, band.nodata, sources=[
                Source(s.path, s.band, s.col_off - col0, s.row_off - row0, s.width, s.height, s.dtype, s.nodata)
                for s in sources])
            path = f"{temporary_prefix(out_path)}part-{os.getpid()}-b{index}-{r}-{c}.vrt"
            transform = grid.transform @ Affine.translation(col0, row0)
            with open(path, "w") as f:
                f.write(vrt_xml(width, height, grid.crs, transform, [inner]))
            written.append(path)
            # No nodata on the outer source: the inner VRT already has the band's nodata where no tile is.
            grouped.sources.append(Source(path, 1, col0, row0, width, height, band.dtype))
        log.info("mosaic through %d VRTs of up to %d tiles each", len(written), side * side)
        yield grouped
    finally:
        for path in written:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)


def tile_is_readable(source: Source, dtype: str) -> bool:
    """Whether a tile file opens with the expected shape and type and all its pixels read."""
    try:
        with rasterio.open(source.path) as src:
            if (src.width, src.height, src.dtypes[0]) != (source.width, source.height, dtype):
                return False
            for _, window in src.block_windows(1):
                src.read(1, window=window)
        return True
    except GDAL_ERRORS:
        return False


def stack_dtype_and_nodata(bands: list[tuple[str, float]]) -> tuple[str, float]:
    """One type and nodata for all bands: kept when all agree, else a real type with NaN."""
    dtypes = {d for d, _ in bands}
    nodatas = {("nan" if math.isnan(n) else n) for _, n in bands}
    if len(dtypes) == 1 and len(nodatas) == 1:
        return bands[0]
    common = np.result_type(*dtypes, np.float32)
    return str(common), math.nan


@dataclasses.dataclass(frozen=True)
class StackLayer:
    """One dataset of the stack: its tiles (from its batches' manifests) and how they were made."""

    name: str
    settings: WarpSettings
    tile_paths: tuple[str, ...]
    band_names: tuple[str, ...] = ()


def write_stack(
    layers: list[StackLayer],
    grid: TargetGrid,
    out_path: str,
    mem_mb: int,
    threads: int = 1,
    compress: str = "deflate",
    cog: bool = True,
    level: int | None = None,
) -> None:
    """All datasets on the common grid, one band per dataset named after it (one per band of a
    dataset of several bands, named as in its mosaic), carrying the mosaic's band metadata (its
    resampling method). Read from the tiles, as the mosaics are, not from the mosaics: the stack
    is made beside them, not after them (on many cores, the mosaics and the stack are the run's
    tail). Its overview levels are the centre pixels of their blocks, for every dataset."""
    per_layer = [tile_bands(layer.name, layer.settings, grid, list(layer.tile_paths), layer.band_names)
                 for layer in layers]
    dtype, nodata = stack_dtype_and_nodata([(layer.settings.dst_dtype, layer.settings.dst_nodata)
                                            for layer, bands in zip(layers, per_layer) for _ in bands])
    stacked = []
    for layer, bands in zip(layers, per_layer):
        src_dtype, src_nodata = layer.settings.dst_dtype, layer.settings.dst_nodata
        converting = (src_dtype, src_nodata) != (dtype, nodata) and not (
            src_dtype == dtype and math.isnan(src_nodata) and math.isnan(nodata)
        )
        for band in bands:
            # Masking the tiles' own nodata lets the band's NaN show through where it differs.
            sources = [dataclasses.replace(s, nodata=src_nodata) for s in band.sources] if converting else band.sources
            stacked.append(dataclasses.replace(band, dtype=dtype, nodata=nodata, sources=sources,
                                               description=layer.name if len(bands) == 1 else band.description))
    log.info("stack of %d datasets (%d bands) from their tiles, as %s, nodata %s", len(layers), len(stacked),
             dtype, nodata)
    try:
        # Its own overview levels, as a mosaic's: GDAL's COG driver would read the copy back to make
        # them (the mosaics' it took as they were, when the stack was read from them).
        _copy_vrt(grid, stacked, out_path, mem_mb, threads, compress, cog, "NEAREST", level=level, own_overviews=True)
    except OutputWriteError:
        for layer, bands in zip(layers, per_layer):
            remove_corrupt_tiles(layer.name, bands[0].sources, layer.settings.dst_dtype)
        raise


def _copy_vrt(grid, bands, out_path, mem_mb, threads, compress, cog, overview_resampling,
              group_tiles: int = GROUP_TILES, level: int | None = None, own_overviews: bool = False) -> None:
    """Copy the VRT of ``bands`` into ``out_path``. ``own_overviews``: a COG's overview levels are
    made by mosaics.overviews (from the full-resolution pixels, in the same pass over the tiles
    on ``threads``) where it can, not by the COG driver."""
    # Imported here: it loads numba, which every job importing this module (workflow_lib.jobs) would pay.
    from workflow_lib.mosaics.overviews import COG_BLOCK, cog_factors, made_here, overview_files

    dtype = bands[0].dtype
    options = compression_options(compress, dtype, threads, level=level)
    if cog:
        driver = "COG"
        if "predictor" in options:
            options["predictor"] = "YES"  # the COG driver picks 2 or 3 from the data type
        for name in ("zlevel", "zstd_level"):  # the COG driver's name for both
            if name in options:
                options["level"] = options.pop(name)
        options.update(blocksize=str(COG_BLOCK), overview_resampling=overview_resampling, bigtiff="IF_SAFER")
    else:
        driver = "GTiff"
        options.update(tiled="YES", blockxsize="512", blockysize="512", bigtiff="IF_SAFER")
    factors = cog_factors(grid.width, grid.height) if cog and own_overviews else []
    # GDAL's block cache bounds the copy's memory; leave room for the interpreter itself.
    cache_mb = int(min(max((mem_mb - 160) * 0.5, 16), 1024))
    # The VRTs are temporaries of the output: made after atomic_path has removed a killed job's.
    with atomic_path(out_path) as tmp, contextlib.ExitStack() as stack:
        bands = [stack.enter_context(grouped_sources(b, grid, out_path, group_tiles, i))
                 for i, b in enumerate(bands, 1)]
        xml = vrt_xml(grid.width, grid.height, grid.crs, grid.transform, bands)
        vrt_path = stack.enter_context(atomic_vrt(out_path, xml))
        with rasterio.Env(GDAL_CACHEMAX=cache_mb, GDAL_NUM_THREADS=max(threads, 1),
                          GDAL_MAX_DATASET_POOL_SIZE=MAX_OPEN_DATASETS):
            try:
                if made_here(factors):
                    resampling = "nearest" if overview_resampling == "NEAREST" else "average"
                    levels = stack.enter_context(overview_files(vrt_path, out_path, factors, resampling, threads))
                    with_levels = [dataclasses.replace(b, overviews=levels, overview_band=i)
                                   for i, b in enumerate(bands, 1)]
                    xml = vrt_xml(grid.width, grid.height, grid.crs, grid.transform, with_levels)
                    vrt_path = stack.enter_context(atomic_vrt(out_path, xml, "levels"))
                rasterio.shutil.copy(vrt_path, tmp, driver=driver, **options)
            except (*GDAL_ERRORS, OSError) as exc:
                raise OutputWriteError(out_path, exc) from exc


class atomic_vrt:
    """A throwaway VRT file beside the output (GDAL's COG driver reads sources by path), named
    like the output's other temporaries so that a killed job's VRT is cleaned up too."""

    def __init__(self, out_path: str, xml: str, name: str = "vrt"):
        self.path = f"{temporary_prefix(out_path)}{name}-{os.getpid()}.vrt"
        self.xml = xml

    def __enter__(self) -> str:
        with open(self.path, "w") as f:
            f.write(self.xml)
        return self.path

    def __exit__(self, *exc) -> None:
        os.unlink(self.path)

