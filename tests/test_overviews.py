"""A mosaic's overview levels come from its tiles' levels, each made from full-resolution pixels.

References: GDAL's COG driver for which levels a mosaic has, and NumPy on the mosaic's own full
resolution for what each level holds (GDAL's own COG levels are averages of averages: shown here).
"""

import os

import numpy as np
import pytest
import rasterio
import rasterio.shutil
from affine import Affine
from rasterio.enums import Resampling

from workflow_lib.engines.batch import run_batch
from workflow_lib.config import validate_config
from workflow_lib.mosaics.overviews import OVERVIEWS_TAG, mosaic_factors, tile_factors
from workflow_lib.planning.plan import build_plan

from .helpers import run_tiles_and_mosaics, smooth_field, write_raster

NODATA = -9999.0


@pytest.mark.parametrize("width,height", [(512, 512), (513, 10), (1024, 1024), (1025, 300), (2049, 2049),
                                          (4097, 100), (10_000, 7_000), (600, 70_000)])
def test_mosaic_factors_are_those_of_gdals_cog_driver(width, height):
    src, dst = f"/vsimem/f{width}x{height}.tif", f"/vsimem/f{width}x{height}.cog.tif"
    with rasterio.open(src, "w", driver="GTiff", width=width, height=height, count=1, dtype="uint8",
                       crs="EPSG:3035", transform=Affine(10, 0, 0, 0, -10, 0), sparse_ok=True):
        pass
    rasterio.shutil.copy(src, dst, driver="COG", blocksize="512")
    with rasterio.open(dst) as cog:
        count = len(cog.overviews(1))  # rasterio rounds factors from sizes (600 / 19 px gives 33)
    sizes = []
    for i in range(count):
        with rasterio.open(dst, OVERVIEW_LEVEL=i) as level:
            sizes.append((level.width, level.height))
    # The COG driver's own level of factor f has n // f pixels. The mosaic's levels have ceil(n / f),
    # as GDAL's GeoTIFF overviews of the tiles do: the edge's last, partial block is kept.
    assert sizes == [(width // f, height // f) for f in mosaic_factors(width, height)]
    for path in (src, dst):
        rasterio.shutil.delete(path)


def holey_input(folder, dtype="float32"):
    """4,200 x 1,400 px with lakes of nodata and scattered missing pixels: onto 20 m, a grid of
    2,100 x 700, whose mosaic has levels 2, 4 and 8, and tiles of 256 px that make all three."""
    rng = np.random.default_rng(7)
    z = smooth_field(1400, 4200)
    if dtype == "uint8":
        z = (np.digitize(z, np.linspace(40, 160, 9)) + 1).astype("uint8")
        z[rng.random(z.shape) < 0.2] = 0
        nodata = 0
    else:
        y, x = np.mgrid[0:1400, 0:4200]
        z[(np.sin(x / 90.0) * np.sin(y / 70.0) > 0.8) | (rng.random(z.shape) < 0.3)] = NODATA
        nodata = NODATA
    return write_raster(folder / f"in_{dtype}.tif", z, "EPSG:32632", Affine(10, 0, 500000, 0, -10, 5200000), nodata)


def config_of(path, method):
    return {"target": {"crs": "EPSG:32632", "resolution": 20}, "tile_size": 256,
            "datasets": {"d": {"path": path, "method": method}}}


def block_average(full: np.ndarray, f: int, nodata: float) -> np.ndarray:
    """The average of each f x f block's valid pixels (blocks cut off by the edge: of those there)."""
    h, w = -(-full.shape[0] // f) * f, -(-full.shape[1] // f) * f
    padded = np.full((h, w), nodata, "float64")
    padded[:full.shape[0], :full.shape[1]] = full
    blocks = padded.reshape(h // f, f, w // f, f).swapaxes(1, 2).reshape(h // f, w // f, f * f)
    valid = blocks != nodata
    n = valid.sum(axis=-1)
    return np.where(n > 0, np.where(valid, blocks, 0).sum(axis=-1) / np.maximum(n, 1), nodata)


def gdal_level(pixels: np.ndarray, f: int, nodata: float, resampling: Resampling) -> np.ndarray:
    """GDAL's own overview of factor f of ``pixels``, alone (so from these pixels, not a cascade)."""
    path = f"/vsimem/level-{f}-{pixels.shape}.tif"
    with rasterio.open(path, "w", driver="GTiff", width=pixels.shape[1], height=pixels.shape[0], count=1,
                       dtype=pixels.dtype, nodata=nodata, crs="EPSG:32632",
                       transform=Affine(10, 0, 0, 0, -10, 0)) as dst:
        dst.write(pixels, 1)
        dst.build_overviews([f], resampling)
    with rasterio.open(path, OVERVIEW_LEVEL=0) as level:
        out = level.read(1)
    rasterio.shutil.delete(path)
    return out


def level_reference(full: np.ndarray, grid, f: int, nodata: float, categorical: bool) -> tuple[np.ndarray, int]:
    """What the mosaic's level f holds, tile by tile: the exact reduction of f x f blocks (the block
    average of the valid pixels; for classes the block's top-left pixel) where f divides the tile's
    sides; in an edge tile that f does not divide, GDAL's overview of that tile, whose pixels span
    side / ceil(side / f) input pixels. Also returns how many level pixels are of the second kind."""
    out = np.full((-(-full.shape[0] // f), -(-full.shape[1] // f)), nodata, full.dtype)
    stretched = 0
    for r in range(-(-grid.height // grid.tile_size)):
        for c in range(-(-grid.width // grid.tile_size)):
            w = grid.tile(r, c).window
            r0, c0, h, wd = int(w.row_off), int(w.col_off), int(w.height), int(w.width)
            pixels = full[r0:r0 + h, c0:c0 + wd]
            if h % f == 0 and wd % f == 0:
                level = pixels[::f, ::f] if categorical else block_average(pixels, f, nodata).astype(full.dtype)
            else:
                level = gdal_level(pixels, f, nodata, Resampling.nearest if categorical else Resampling.average)
                stretched += level.size
            out[r0 // f:r0 // f + level.shape[0], c0 // f:c0 // f + level.shape[1]] = level
    return out, stretched


def levels(path):
    with rasterio.open(path) as src:
        full = src.read(1)
        factors = src.overviews(1)
    out = {}
    for i, f in enumerate(factors):
        with rasterio.open(path, OVERVIEW_LEVEL=i) as level:
            out[f] = level.read(1)
    return full, out


def test_mosaic_levels_are_averages_of_full_resolution_pixels_where_gdals_are_averages_of_averages(
        tmp_path, record):
    config = config_of(holey_input(tmp_path), "average")
    plan, ours = run_tiles_and_mosaics(config, tmp_path / "tiled")
    _, gdal = run_tiles_and_mosaics(config, tmp_path / "gdal", overviews=False)
    grid = plan.grid
    assert (grid.width, grid.height, grid.tile_size) == (2100, 700, 256)  # edge tiles of 52 and 188 px
    assert tile_factors(grid) == mosaic_factors(grid.width, grid.height) == [2, 4, 8]
    tile = os.path.join(tmp_path, "tiled", "tiles", "d", f"{plan.datasets['d'].tiles[0]}.tif")
    with rasterio.open(tile) as src:
        assert src.overviews(1) == [2, 4, 8] and src.tags()[OVERVIEWS_TAG] == "2,4,8"

    full, ours_levels = levels(ours["d"])
    gdal_full, gdal_levels = levels(gdal["d"])
    assert full.tobytes() == gdal_full.tobytes()  # the full resolution does not depend on how levels are made
    assert list(ours_levels) == list(gdal_levels) == [2, 4, 8]
    worst = {}
    for f, level in ours_levels.items():
        reference, stretched = level_reference(full, grid, f, NODATA, categorical=False)
        assert level.shape == reference.shape == (-(-700 // f), -(-2100 // f))
        assert np.array_equal(level == NODATA, reference == NODATA), f
        valid = reference != NODATA
        np.testing.assert_allclose(level[valid], reference[valid], rtol=1e-6)
        assert (stretched > 0) == (f == 8), (f, stretched)  # 52 / 8 and 188 / 8 are not whole
        exact = block_average(full, f, NODATA)[:gdal_levels[f].shape[0], :gdal_levels[f].shape[1]]
        both = (exact != NODATA) & (gdal_levels[f] != NODATA)
        worst[f] = float(np.abs(gdal_levels[f][both] - exact[both]).max())
    # GDAL computes level 4 from level 2 and 8 from 4 (and its COG levels, of n // f pixels, span a
    # little more than f pixels each): blocks with holes are weighted wrongly.
    assert worst[2] < 1e-3 and worst[4] > 0.1 and worst[8] > 0.1, worst
    record(f"mosaic levels from tiles: equal to full-resolution block averages (rtol 1e-6) at 2, 4, 8 (edge "
           f"tiles that 8 does not divide: GDAL's one-level overview of the tile); "
           f"GDAL's COG levels off by up to {worst[2]:.2g} / {worst[4]:.2g} / {worst[8]:.2g}")


def test_levels_of_classes_are_pixels_of_the_full_resolution(tmp_path):
    """For classes (and min, max, med) a level takes the top-left pixel of each block, as GDAL's
    nearest does, so a level never holds a class that is not in the mosaic there."""
    config = config_of(holey_input(tmp_path, "uint8"), "mode")
    plan, mosaics = run_tiles_and_mosaics(config, tmp_path / "run")
    full, found = levels(mosaics["d"])
    assert list(found) == [2, 4, 8]
    for f, level in found.items():
        reference, _ = level_reference(full, plan.grid, f, 0, categorical=True)
        assert np.array_equal(level, reference), f


def test_tiles_kept_from_before_tiles_had_levels_leave_the_levels_to_gdal(tmp_path):
    config = config_of(holey_input(tmp_path), "average")
    plan = build_plan(validate_config(config))
    d, factors = plan.datasets["d"], tile_factors(plan.grid)
    tiles, out = list(d.tiles)[:4], str(tmp_path / "tiles")
    old = run_batch(d, plan.grid, "b", tiles, out, mem_mb=400)  # no levels: as an earlier version made them
    assert old.kept_overviews and len(old.made) == 4
    again = run_batch(d, plan.grid, "b", tiles, out, mem_mb=400, overviews=factors)
    assert again.kept == tiles and not again.kept_overviews
    new = run_batch(d, plan.grid, "b2", list(d.tiles)[4:6], out, mem_mb=400, overviews=factors)
    assert len(new.made) == 2 and new.kept_overviews
