"""Mosaics of many tiles go through VRTs of squares of tiles: the same pixels as one flat VRT."""

import math
import os

import numpy as np
import pytest
import rasterio
from affine import Affine

from workflow_lib.mosaics.mosaic import write_mosaic

from .helpers import classes_field, run_tiles_and_mosaics, smooth_field, write_raster


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
    tile = plan.grid.tile(d.tiles[37])
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


def _block_reference(full: np.ndarray, f: int, nodata: float, categorical: bool) -> np.ndarray:
    """An overview level of ``full`` made here with NumPy alone: of each f x f block (partial at the
    right and bottom edges), its centre pixel (categorical), or the float64 mean of its valid
    pixels cast to the type (halves up for integers), nodata where it has none."""
    h, w = full.shape
    if categorical:
        rows = [i + min(f, h - i) // 2 for i in range(0, h, f)]
        cols = [j + min(f, w - j) // 2 for j in range(0, w, f)]
        return full[np.ix_(rows, cols)]
    H, W = -(-h // f), -(-w // f)
    padded = np.full((H * f, W * f), np.nan)
    padded[:h, :w] = np.where(full == nodata, np.nan, full)
    blocks = padded.reshape(H, f, W, f)
    count = np.sum(~np.isnan(blocks), axis=(1, 3))
    with np.errstate(invalid="ignore"):
        mean = np.nansum(blocks, axis=(1, 3)) / count
    if full.dtype.kind in "iu":
        mean = np.floor(mean + 0.5)
        mean[mean == nodata] = nodata - 1 if nodata > np.iinfo(full.dtype).min else nodata + 1
    return np.where(count > 0, mean, nodata).astype(full.dtype)


@pytest.mark.parametrize("window", [2048, 256])
@pytest.mark.parametrize("method,dtype", [("average", "float32"), ("average", "int16"), ("mode", "uint8")])
def test_mosaic_overviews_are_made_from_the_full_resolution_pixels(tmp_path, monkeypatch, record, window,
                                                                   method, dtype):
    """Every overview level of a COG mosaic: of each block of the full-resolution mosaic, the mean
    of its valid pixels (nodata where it has none) or, for classes, its centre pixel, as an
    independent NumPy reference makes it, at edges of odd sizes and across the windows of the pass
    (``window``); the COG layout is kept and no temporary is left behind."""
    from workflow_lib.mosaics import overviews

    monkeypatch.setattr(overviews, "WINDOW", window)
    h, w = 1000, 2100  # levels 2, 4, 8 (1050, 525, 263 pixels across: the last is uneven)
    nodata = {"float32": -9999.0, "int16": -32768, "uint8": 0}[dtype]
    data = classes_field(h, w) if method == "mode" else smooth_field(h, w).astype(dtype)
    data[100:400, 300:700] = nodata  # blocks wholly and partly empty, at every level
    data[::7, ::5] = nodata
    path = write_raster(tmp_path / "in.tif", data, "EPSG:32632", Affine(10, 0, 500000, 0, -10, 5200000), nodata)
    config = {"target": {"crs": "EPSG:32632", "resolution": 10}, "tile_size": 512,
              "datasets": {"d": {"path": path, "method": method}}}
    plan, mosaics = run_tiles_and_mosaics(config, tmp_path / "run")
    with rasterio.open(mosaics["d"]) as src:
        full, mosaic_nodata = src.read(1), src.nodata
        assert src.overviews(1) == [2, 4, 8] and src.shape == (h, w)
        assert src.profile["blockxsize"] == 512 and src.compression is not None
        assert (full == nodata).any()
    for k, f in enumerate([2, 4, 8]):
        with rasterio.open(mosaics["d"], overview_level=k) as level:
            got = level.read(1)
        np.testing.assert_array_equal(got, _block_reference(full, f, mosaic_nodata, method == "mode"),
                                      err_msg=f"level {f}")
    leftovers = [f for root, _, files in os.walk(tmp_path) for f in files if ".tmp-" in f]
    assert leftovers == []
    record(f"{method} {dtype}, pass windows of {window}: overview levels 2, 4, 8 equal the NumPy block reference")


def test_stack_from_the_tiles_has_the_mosaics_pixels_and_centre_pixel_overviews(tmp_path):
    """The GeoTIFF stack is read from the tiles (beside the mosaics, not after them): two datasets
    of other types, as float32 with NaN; each band the mosaic's pixels, and each overview level of
    each band the centre pixels of its blocks (an independent NumPy reference)."""
    from workflow_lib.mosaics.mosaic import StackLayer, write_stack

    h, w = 1000, 2100
    runs = {}
    for name, data, nodata in [("dem", smooth_field(h, w).astype("float32"), -9999.0),
                               ("land", classes_field(h, w), 0)]:
        data[100:400, 300:700] = nodata
        path = write_raster(tmp_path / f"{name}.tif", data, "EPSG:32632", Affine(10, 0, 500000, 0, -10, 5200000),
                            nodata)
        config = {"target": {"crs": "EPSG:32632", "resolution": 10}, "tile_size": 512,
                  "datasets": {name: {"path": path, "method": "average" if name == "dem" else "mode"}}}
        runs[name] = run_tiles_and_mosaics(config, tmp_path / name)
    layers = [StackLayer(name, plan.datasets[name].settings,
                         tuple(sorted(str(p) for p in (tmp_path / name / "tiles" / name).glob("*.tif"))))
              for name, (plan, _) in runs.items()]
    stack = str(tmp_path / "stack.tif")
    write_stack(layers, runs["dem"][0].grid, stack, mem_mb=400, threads=2)
    with rasterio.open(stack) as src:
        assert src.descriptions == ("dem", "land") and src.dtypes[0] == "float32" and math.isnan(src.nodata)
        assert src.overviews(1) == src.overviews(2) == [2, 4, 8]
        full = src.read()
        for k, f in enumerate([2, 4, 8]):
            with rasterio.open(stack, overview_level=k) as level:
                for b in (0, 1):
                    np.testing.assert_array_equal(level.read(b + 1), _block_reference(full[b], f, math.nan, True),
                                                  err_msg=f"band {b + 1}, level {f}")
    for b, (name, (_, mosaics)) in enumerate(runs.items()):
        with rasterio.open(mosaics[name]) as mosaic:
            expected = mosaic.read(1).astype("float32")
            expected[expected == mosaic.nodata] = np.nan
        np.testing.assert_array_equal(full[b], expected, err_msg=name)
    assert np.isnan(full[:, 150, 500]).all() and not np.isnan(full[:, 700, 1500]).any()


def test_mosaic_overviews_match_gdal_where_gdal_reads_the_full_resolution(tmp_path, monkeypatch, record):
    """The first overview level, which GDAL's COG driver also makes from the full-resolution pixels,
    is the same as GDAL's (its own overviews, when this module does not make them: the path of
    mosaics too large for the pass); later GDAL levels average the level before and differ."""
    from workflow_lib.mosaics import overviews

    data = smooth_field(1000, 2100)
    data[100:400, 300:700] = -9999.0
    data[::7, ::5] = -9999.0
    path = write_raster(tmp_path / "in.tif", data, "EPSG:32632", Affine(10, 0, 500000, 0, -10, 5200000), -9999.0)
    config = {"target": {"crs": "EPSG:32632", "resolution": 10}, "tile_size": 512,
              "datasets": {"d": {"path": path, "method": "average"}}}
    plan, mosaics = run_tiles_and_mosaics(config, tmp_path / "run")
    d = plan.datasets["d"]
    tiles = [os.path.join(tmp_path, "run", "tiles", "d", f"{t}.tif") for t in d.tiles]
    monkeypatch.setattr(overviews, "made_here", lambda factors: False)
    by_gdal = str(tmp_path / "gdal.tif")
    write_mosaic("d", d.settings, plan.grid, tiles, by_gdal, mem_mb=400)
    with rasterio.open(mosaics["d"], overview_level=0) as a, rasterio.open(by_gdal, overview_level=0) as b:
        ours, gdal = a.read(1), b.read(1)
    with rasterio.open(by_gdal) as b:
        assert b.overviews(1) == [2, 4, 8]
    np.testing.assert_array_equal(ours, gdal)
    record(f"overview level 2 ({ours.shape[1]} x {ours.shape[0]}) equal to GDAL's COG AVERAGE overview")
