"""Tiles streamed in many chunks and merged by the mosaic code equal GDAL's whole-image warp.

Stated tolerances (docs/accuracy.md):
- same CRS: exact for nearest, mode, min, max, med, average and sum; bilinear, cubic and average
  within float rounding (1e-6 of the data's largest magnitude) where a chunk's source origin
  changes the last bits of the kernel weights;
- across CRSs with an exact transformation (warp.error_threshold: 0): the same as within one CRS,
  except that picks may differ on 0.01 % of pixels (rasterio 1.4 refuses a threshold of exactly 0,
  and at 1e-6 pixel a sample that close to a source pixel's edge may fall on either side), and
  except sum (GDAL's own sum changes with the source window it is given at the raster's edge);
- across CRSs with GDAL's approximate transformation (the default error threshold, 0.125 pixel as
  gdalwarp), GDAL's own whole-image result changes with how GDAL chunks it; our tiles stay within
  that variation: picks (nearest, mode, min, max, med) differ on at most 4 % of pixels,
  interpolations (bilinear, cubic, average) by at most 1 % of the data range, sums by at most 10 %
  of the largest sum.
"""

import math

import numpy as np
import pytest
import rasterio
from affine import Affine

from .helpers import (area_reference, compare, classes_field, footprint_reference, read_band, reference_for,
                      run_tiles_and_mosaics, smooth_field, valid_mask, window_reference, write_raster)

CONTINUOUS = ["bilinear", "cubic", "average", "sum"]
PICKS = ["nearest", "mode", "min", "max", "med"]
UTM = Affine(10, 0, 500000, 0, -10, 5200000)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A float raster with nodata holes and undeclared-as-such NaN, and a class raster with ties."""
    folder = tmp_path_factory.mktemp("inputs")
    values = smooth_field(300, 280)
    values[40:60, 100:150] = -9999
    values[200:205, 10:30] = np.nan  # NaN beside a declared nodata value: must count as nodata
    classes = classes_field(300, 280)
    classes[0:20, 0:30] = 0
    return {
        "float": write_raster(folder / "float.tif", values, "EPSG:32632", UTM, -9999.0),
        "classes": write_raster(folder / "classes.tif", classes, "EPSG:32632", UTM, 0),
    }


GRIDS = {
    # name: (crs, resolution, origin, tile_size, transformer error threshold)
    "same CRS, aligned x4": ("EPSG:32632", 40, [0, 0], 24, 0.125),
    "same CRS, unaligned x2.5": ("EPSG:32632", 25, [7, 3], 40, 0.125),
    "same CRS, unaligned x3.08": ("EPSG:32632", 30.8, [0, 0], 64, 0.125),
    "same CRS, upsampling x0.4": ("EPSG:32632", 4, [0, 0], 256, 0.125),
    "EPSG:32632 -> EPSG:3035 exact": ("EPSG:3035", 35, [0, 0], 48, 0.0),
    "EPSG:32632 -> EPSG:4326 exact": ("EPSG:4326", 0.0004, [0, 0], 48, 0.0),
    "EPSG:32632 -> EPSG:3035 et=0.125": ("EPSG:3035", 35, [0, 0], 48, 0.125),
    "EPSG:32632 -> EPSG:4326 et=0.125": ("EPSG:4326", 0.0004, [0, 0], 48, 0.125),
}


def cases():
    for grid in GRIDS:
        for method in CONTINUOUS + PICKS:
            yield pytest.param(grid, method, "float", id=f"{grid}-{method}-float")
        for method in PICKS:
            yield pytest.param(grid, method, "classes", id=f"{grid}-{method}-classes")


@pytest.mark.slow
@pytest.mark.parametrize("grid,method,kind", list(cases()))
def test_mosaic_of_chunked_tiles_equals_whole_image_warp(tmp_path, inputs, record, grid, method, kind):
    crs, res, origin, tile_size, threshold = GRIDS[grid]
    config = {"target": {"crs": crs, "resolution": res, "origin": origin}, "tile_size": tile_size,
              "warp": {"error_threshold": threshold},
              "datasets": {"d": {"path": inputs[kind], "method": method}}}
    # 60 kB chunks: every tile is cut into several chunks, some of them by columns.
    plan, mosaics = run_tiles_and_mosaics(config, tmp_path, max_chunk_bytes=60_000)
    settings = plan.datasets["d"].settings
    result = read_band(mosaics["d"])
    reference = reference_for(plan, "d").data
    c = compare(result, reference, settings.dst_nodata)
    record(c.row(f"{method:<8} {kind:<7} {grid}"))
    assert c.compared > 1000
    valid = reference[valid_mask(reference, settings.dst_nodata)].astype("float64")
    if settings.engine == "conservative":
        # Area methods across CRSs: the exact footprints (shapely) are the reference; GDAL's
        # whole-image warp is recorded beside it (tests/test_conservative.py has the matrix).
        g = plan.grid
        with rasterio.open(plan.datasets["d"].header.path) as src:
            data = src.read(1)
            ok = ~np.isnan(data.astype("float64")) & (data != src.nodata)
            truth = footprint_reference(data, ok, src.transform, src.crs, g.transform, g.crs, (g.height, g.width),
                                        classes=method == "mode",
                                        points_per_edge=max(4, 2 * settings.edge_points))
        expected = getattr(truth, method)
        got = np.where(valid_mask(result, settings.dst_nodata), result, np.nan).astype("float64")
        assert np.array_equal(np.isnan(got), np.isnan(expected)), method
        if method == "mode":
            compared = ~np.isnan(got) & ~truth.mode_tied
            error = float((got[compared] != expected[compared]).sum())
        else:
            error = float(np.nanmax(np.abs(got - expected) / np.maximum(np.abs(expected), 1)))
        record(f"{method:<8} {kind:<7} {grid} (conservative) vs exact footprints: "
               f"{'pixels differing' if method == 'mode' else 'max relative error'} {error:.2g}")
        assert error <= (0 if method == "mode" else 1e-6), error  # float32 output
        return
    if settings.engine == "windows" and method in ("average", "sum"):
        # Unaligned area-weighted mean (sum) in one CRS: the independent NumPy reference to float
        # rounding, and GDAL's whole-image warp (raster surrounded by nodata) to its own rounding.
        with rasterio.open(plan.datasets["d"].header.path) as src, rasterio.open(mosaics["d"]) as out:
            data = src.read(1).astype("float64")
            ok = ~np.isnan(data) & (data != src.nodata if src.nodata is not None else True)
            expected = area_reference(data, ok, src.transform, out.transform, result.shape, method)
        got = np.where(valid_mask(result, settings.dst_nodata), result, np.nan).astype("float64")
        assert np.array_equal(np.isnan(got), np.isnan(expected))
        error = np.nanmax(np.abs(got - expected) / np.maximum(np.abs(expected), 1))
        record(f"{method:<8} {kind:<7} {grid} vs the area-weighted reference: max relative error {error:.2g}")
        assert error <= 1e-6, error  # float32 output
        assert c.nodata_mismatch == 0 and c.max_abs_diff <= 1e-5 * np.abs(valid).max(), c
        return
    if settings.engine == "windows":
        # Unaligned picks in one CRS: exactly the independent window reference; GDAL's whole-image
        # warp equals it where the grids' numbers are exact (x2.5) and differs where a zero
        # overlap comes out 1e-12 in its arithmetic (x3.08: recorded).
        exact = compare(result, window_reference(plan, "d"), settings.dst_nodata)
        record(exact.row(f"{method:<8} {kind:<7} {grid} vs the window reference"))
        assert exact.differing == 0 and exact.nodata_mismatch == 0 and exact.compared == c.compared, exact
        if "x3.08" not in grid:
            assert c.differing == 0 and c.nodata_mismatch == 0, c
        return
    if settings.same_crs or (threshold == 0 and method != "sum"):
        assert c.nodata_mismatch == 0
        if method in PICKS or (method in ("average", "sum") and res > 10):
            assert c.differing <= (0 if settings.same_crs else 1e-4 * c.compared), c
        else:  # float rounding: a chunk's source origin changes the last bits of kernel weights
            assert c.max_abs_diff <= 1e-6 * np.abs(valid).max(), c
    else:
        assert c.nodata_mismatch <= 0.01 * c.compared, c
        if method in PICKS:
            assert c.differing <= 0.04 * c.compared, c
        elif method == "sum":
            assert c.max_abs_diff <= 0.10 * np.abs(valid).max(), c
        else:
            assert c.max_abs_diff <= 0.01 * (valid.max() - valid.min()), c


def test_sum_in_same_crs_equals_an_independent_block_sum(tmp_path, inputs):
    """Aligned x4 in the same CRS: each output pixel is the sum of the valid pixels of a 4x4 block."""
    config = {"target": {"crs": "EPSG:32632", "resolution": 40}, "tile_size": 24,
              "datasets": {"d": {"path": inputs["float"], "method": "sum", "dtype": "float64"}}}
    plan, mosaics = run_tiles_and_mosaics(config, tmp_path, max_chunk_bytes=60_000)
    result = read_band(mosaics["d"])
    src = read_band(inputs["float"]).astype("float64")
    valid = (src != -9999) & ~np.isnan(src)
    blocks = np.where(valid, src, 0).reshape(75, 4, 70, 4).sum(axis=(1, 3))
    counts = valid.reshape(75, 4, 70, 4).sum(axis=(1, 3))
    grid = plan.grid
    col, row = (int(round(v)) for v in ~grid.transform @ (UTM.c, UTM.f))
    window = result[row:row + 75, col:col + 70]
    assert (window[counts == 0] == -9999).all()
    np.testing.assert_allclose(window[counts > 0], blocks[counts > 0], rtol=1e-12)


def test_same_crs_aligned_equals_gdal_with_its_own_default_scale(tmp_path, inputs):
    """Where GDAL's own scale is exact (aligned grid on the source's exact bounds), fixing it
    changes nothing."""
    extent = {"left": 500000, "bottom": 5197000, "right": 502800, "top": 5200000}
    config = {"target": {"crs": "EPSG:32632", "resolution": 40, "extent": extent}, "tile_size": 24,
              "datasets": {"d": {"path": inputs["float"], "method": "bilinear"}}}
    plan, mosaics = run_tiles_and_mosaics(config, tmp_path, max_chunk_bytes=60_000)
    assert (plan.datasets["d"].settings.x_scale, plan.datasets["d"].settings.y_scale) == (0.25, 0.25)
    reference = reference_for(plan, "d", fixed_scale=False).data
    c = compare(read_band(mosaics["d"]), reference, -9999.0)
    assert c.max_abs_diff == 0 and c.nodata_mismatch == 0, c


def test_nan_beside_declared_nodata_is_nodata_not_poison(tmp_path, inputs):
    config = {"target": {"crs": "EPSG:32632", "resolution": 40}, "tile_size": 24,
              "datasets": {"d": {"path": inputs["float"], "method": "average"}}}
    plan, mosaics = run_tiles_and_mosaics(config, tmp_path)
    result = read_band(mosaics["d"])
    assert not np.isnan(result).any()
    # Rows 200-204, cols 10-29 of the input are NaN: the 4x4 blocks that hold only NaN are nodata,
    # those that mix NaN and values average the values alone.
    grid = plan.grid
    col, row = (int(round(v)) for v in ~grid.transform @ (UTM.c, UTM.f))
    src = read_band(inputs["float"]).astype("float64")
    block = src[200:204, 12:16]  # all NaN -> output row 50, col 3
    assert np.isnan(block).all() and result[row + 50, col + 3] == -9999
    mixed = src[204:208, 12:16]  # first row NaN, the rest values
    assert result[row + 51, col + 3] == pytest.approx(np.nanmean(mixed), rel=1e-6)


def test_undeclared_nan_in_float_input_is_nodata(tmp_path):
    values = smooth_field(64, 64)
    values[10:30, 10:30] = np.nan
    path = write_raster(tmp_path / "nan.tif", values, "EPSG:32632", UTM, None)
    config = {"target": {"crs": "EPSG:32632", "resolution": 20}, "tile_size": 16,
              "datasets": {"d": {"path": path, "method": "average"}}}
    plan, mosaics = run_tiles_and_mosaics(config, tmp_path)
    assert math.isnan(plan.datasets["d"].settings.dst_nodata)
    result = read_band(mosaics["d"])
    assert np.isnan(result[6:14, 6:14]).all()
    assert np.isfinite(result[0:4, 0:4]).all() and np.isfinite(result[20:32, 20:32]).all()


@pytest.mark.parametrize("kind,matrix", [("rotated 30deg", Affine.rotation(30)), ("sheared 15deg", Affine.shear(15, 0))])
def test_rotated_or_sheared_input_is_warped_like_gdal_warps_the_whole_image(tmp_path, record, kind, matrix):
    """A rotated or sheared geotransform is warped correctly, not silently misplaced."""
    rotated = Affine.translation(500000, 5200000) @ matrix @ Affine.scale(10, -10)
    path = write_raster(tmp_path / "rotated.tif", smooth_field(200, 150), "EPSG:32632", rotated, -9999.0)
    config = {"target": {"crs": "EPSG:32632", "resolution": 20}, "tile_size": 32,
              "datasets": {"d": {"path": path, "method": "bilinear"}}}
    plan, mosaics = run_tiles_and_mosaics(config, tmp_path, max_chunk_bytes=60_000)
    # GDAL cuts its own whole-image warp of a rotated raster into pieces (their source windows are
    # mostly empty), each with its own XSCALE/YSCALE: the reference is given the dataset's.
    reference = reference_for(plan, "d", fixed_scale=True).data
    c = compare(read_band(mosaics["d"]), reference, -9999.0)
    record(c.row(f"bilinear float   {kind}, same CRS"))
    assert c.compared > 5000 and c.nodata_mismatch == 0
    assert c.max_abs_diff <= 1e-3, c


def test_mosaic_is_a_cog_with_overviews_and_bigtiff_when_needed(tmp_path, inputs):
    import rasterio

    config = {"target": {"crs": "EPSG:32632", "resolution": 4}, "tile_size": 256,
              "datasets": {"d": {"path": inputs["classes"], "method": "mode"}}}
    plan, mosaics = run_tiles_and_mosaics(config, tmp_path)
    assert plan.grid.width > 512
    with rasterio.open(mosaics["d"]) as src:
        assert src.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        assert src.overviews(1) == [2]
        assert src.block_shapes[0] == (512, 512)
        assert src.descriptions == ("d",) and src.tags(1)["method"] == "mode"


def test_missing_tiles_are_nodata_in_the_mosaic(tmp_path, inputs):
    from workflow_lib.mosaics.mosaic import write_mosaic

    config = {"target": {"crs": "EPSG:32632", "resolution": 40}, "tile_size": 24,
              "datasets": {"d": {"path": inputs["float"], "method": "average"}}}
    plan, mosaics = run_tiles_and_mosaics(config, tmp_path)
    d, grid = plan.datasets["d"], plan.grid
    full = read_band(mosaics["d"])
    gone = grid.tile(d.tiles[1])
    tiles = [str(tmp_path / "tiles" / "d" / f"{t}.tif") for t in d.tiles]
    import os

    os.unlink(tiles[1])
    out = str(tmp_path / "partial.tif")
    write_mosaic("d", d.settings, grid, tiles, out, mem_mb=400)
    partial = read_band(out)
    w = gone.window
    rows, cols = slice(int(w.row_off), int(w.row_off + w.height)), slice(int(w.col_off), int(w.col_off + w.width))
    assert (partial[rows, cols] == -9999).all() and (full[rows, cols] != -9999).any()
    partial[rows, cols] = full[rows, cols]
    assert np.array_equal(partial, full)


@pytest.mark.parametrize("method", ["average", "bilinear", "mode"])
def test_a_tile_made_in_one_chunk_hands_over_the_pixels_it_wrote(tmp_path, inputs, method):
    """The batch job's Zarr chunks come from the pixels the engine kept (keep_pixels) instead of the
    tile's file read back: they must be the file's pixels, and there must be none when the tile
    was made in several chunks (the memory bound keeps no whole tile then)."""
    from workflow_lib.config import validate_config
    from workflow_lib.engines.resample import resample_tile
    from workflow_lib.planning.plan import build_plan

    plan = build_plan(validate_config({"target": {"crs": "EPSG:32632", "resolution": 40}, "tile_size": 24,
                                       "datasets": {"d": {"path": inputs["float"], "method": method}}}))
    d, grid = plan.datasets["d"], plan.grid
    handed = 0
    for i, index in enumerate(d.tiles):
        out = str(tmp_path / f"{index}.tif")
        whole = resample_tile("d", d.header, d.settings, grid, grid.tile(index), out, mem_mb=400, keep_pixels=True)
        with rasterio.open(out) as src:
            written = src.read()
        if whole["pixels"] is not None:
            handed += 1
            assert whole["pixels"].dtype == written.dtype and np.array_equal(whole["pixels"], written, equal_nan=True)
        if i < 1:  # tiny chunks are slow with GDAL's warper: one tile
            split = resample_tile("d", d.header, d.settings, grid, grid.tile(index), out, mem_mb=400,
                                  keep_pixels=True, max_chunk_bytes=2000)
            assert split["chunks"] > 1 and split["pixels"] is None
    assert handed == len(d.tiles)
