"""Mosaics of many tiles go through VRTs of squares of tiles: the same pixels as one flat VRT."""

import os

import numpy as np
import rasterio
from affine import Affine

from workflow_lib.mosaics.mosaic import write_mosaic

from .helpers import run_tiles_and_mosaics, smooth_field, write_raster


def test_grouped_mosaic_equals_the_flat_one_with_holes_kept(tmp_path, record):
    path = write_raster(tmp_path / "in.tif", smooth_field(700, 500), "EPSG:32632",
                        Affine(10, 0, 500000, 0, -10, 5200000), -9999.0)
    config = {"target": {"crs": "EPSG:32632", "resolution": 20}, "tile_size": 16,
              "datasets": {"d": {"path": path, "method": "average"}}}
    plan, mosaics = run_tiles_and_mosaics(config, tmp_path / "run")  # flat: one VRT of every tile
    d = plan.datasets["d"]
    tiles = [os.path.join(tmp_path, "run", "tiles", "d", f"{t}.tif") for t in d.tiles]
    assert len(tiles) > 100
    os.unlink(tiles[37])  # a missing tile stays nodata
    flat, grouped = str(tmp_path / "flat.tif"), str(tmp_path / "grouped.tif")
    write_mosaic("d", d.settings, plan.grid, tiles, flat, mem_mb=400)
    write_mosaic("d", d.settings, plan.grid, tiles, grouped, mem_mb=400, group_tiles=9)  # squares of 3 x 3
    with rasterio.open(flat) as a, rasterio.open(grouped) as b:
        assert (a.transform, a.crs, a.shape, a.nodata) == (b.transform, b.crs, b.shape, b.nodata)
        x, y = a.read(1), b.read(1)
        np.testing.assert_array_equal(x, y)
        assert np.array_equal(a.read(1, out_shape=(a.height // 4, a.width // 4)),
                              b.read(1, out_shape=(b.height // 4, b.width // 4)))  # overviews too
    tile = plan.grid.tile_by_id(d.tiles[37])
    w = tile.window
    hole = y[int(w.row_off):int(w.row_off + w.height), int(w.col_off):int(w.col_off + w.width)]
    assert np.all(hole == d.settings.dst_nodata) or np.all(np.isnan(hole))
    assert [f for f in os.listdir(tmp_path) if f.startswith(".tmp-")] == []
    record(f"mosaic of {len(tiles) - 1} tiles through VRTs of 3 x 3 tiles: equal to the flat VRT, hole kept")


def test_mosaic_compression_level_is_applied(tmp_path):
    """output.compress_level reaches GDAL: the same tiles at deflate 9 make a smaller mosaic than
    at 1, with the same pixels, for the mosaic as a COG and as a plain GeoTIFF."""
    path = write_raster(tmp_path / "in.tif", smooth_field(700, 500), "EPSG:32632",
                        Affine(10, 0, 500000, 0, -10, 5200000), -9999.0)
    config = {"target": {"crs": "EPSG:32632", "resolution": 20}, "tile_size": 64,
              "datasets": {"d": {"path": path, "method": "average"}}}
    plan, mosaics = run_tiles_and_mosaics(config, tmp_path / "run")
    d = plan.datasets["d"]
    tiles = [os.path.join(tmp_path, "run", "tiles", "d", f"{t}.tif") for t in d.tiles]
    for cog in (True, False):
        sizes, pixels = {}, {}
        for level in (1, 9):
            out = str(tmp_path / f"m{level}{cog}.tif")
            write_mosaic("d", d.settings, plan.grid, tiles, out, mem_mb=400, cog=cog, level=level)
            sizes[level] = os.path.getsize(out)
            with rasterio.open(out) as src:
                pixels[level] = src.read(1)
        assert sizes[9] < sizes[1], (cog, sizes)
        assert pixels[1].tobytes() == pixels[9].tobytes()
