"""What a user can rely on for every method: tiling never changes a result, and how far a result
is from its reference, measured on the real rasters in ../shared/data/real/.

References: GDAL's whole-image warp (rasterio.warp.reproject or a WarpedVRT of the whole raster
onto the whole grid, in one piece), with the raster surrounded by nodata for the area methods
(average, sum, min, max, mode, med), where GDAL alone overweights edge pixels and fills target
pixels outside the raster (docs/accuracy.md); and independent NumPy references where GDAL is
wrong (tests/helpers.py: block_reference, area_reference).
"""

import math

import numpy as np
import pytest
import rasterio
from affine import Affine

from .helpers import (area_reference, compare, read_band, reference_for, run_tiles_and_mosaics, smooth_field,
                      valid_mask, write_raster)

METHODS = ["nearest", "bilinear", "cubic", "average", "sum", "mode", "min", "max", "med"]
# file, band, (same-CRS resolution), (other CRS, resolution): output grids of 80-200 pixels a side.
REAL = {
    "RGB.byte uint8": ("rasterio__RGB.byte.tif", 1, 1300, ("EPSG:4326", 0.012)),
    "cog_int16 int16": ("rio-tiler__cog_int16.tif", 1, 1700, ("EPSG:3857", 4000)),
    "image_nan float64": ("rio-cogeo__image_nan.tif", 1, 0.0035, ("EPSG:3857", 330)),
    "image_nodata int16 Albers": ("rio-cogeo__image_nodata.tif", 1, 1100, ("EPSG:5070", 1000)),
    "mosaic_cog1 uint16": ("rio-tiler__mosaic_cog1.tif", 3, 1700, ("EPSG:4326", 0.016)),
    "umbra rotated uint8": ("geotiff-test-data__umbra_mount_yasur.tif", 1, 9, ("EPSG:4326", 0.00009)),
    "world.byte uint8": ("rasterio__world.byte.tif", 1, 2.1, ("EPSG:3857", 250000)),
}
TILE_SIZES = (16, 64, 4096)


def real_cases():
    for name in REAL:
        for pair in ("same CRS", "other CRS"):
            yield pytest.param(name, pair, id=f"{name}-{pair}")


def config_for(path, band, method, pair, spec, tile_size, error_threshold=0.0):
    """GDAL's warper wherever the conservative engine would otherwise take the area methods (across
    CRSs, a rotated raster): this module measures what GDAL's engines give against GDAL's whole-
    image warp; tests/test_conservative.py measures the conservative engine against the truth."""
    _, _, same_res, (crs, res) = spec
    rotated = False
    with rasterio.open(path) as src:
        rotated = not src.transform.is_rectilinear
        if pair == "same CRS":
            crs, res = src.crs.to_wkt(), same_res
    dataset = {"path": path, "method": method, "band": band}
    if method in ("average", "sum", "mode") and (pair == "other CRS" or rotated):
        dataset["engine"] = "gdal"
    return {"target": {"crs": crs, "resolution": res}, "tile_size": tile_size,
            "warp": {"error_threshold": error_threshold}, "datasets": {"d": dataset}}


def identical(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a == b) | (np.isnan(a.astype("float64")) & np.isnan(b.astype("float64")))


@pytest.mark.slow
@pytest.mark.parametrize("name,pair", list(real_cases()))
def test_tile_size_never_changes_a_result_and_results_match_their_reference(tmp_path, real_raster, record, name,
                                                                            pair):
    """Tile sizes 16, 64 and 4096 (chunked as well) give the same mosaic: bit for bit, except real
    outputs of GDAL's warper, to 4e-12 relative (its kernel weights are computed from each chunk's
    own origin), and GDAL's sum across CRSs, which depends on its source windows
    (docs/accuracy.md). Across CRSs with error_threshold 0 (an exact transformation)."""
    spec = REAL[name]
    path = real_raster(spec[0])
    for method in METHODS:
        mosaics = []
        for size in TILE_SIZES:
            plan, out = run_tiles_and_mosaics(config_for(path, spec[1], method, pair, spec, size),
                                              tmp_path / f"{method}-{size}", max_chunk_bytes=2_000_000)
            mosaics.append(read_band(out["d"]))
        s = plan.datasets["d"].settings
        first, *others = mosaics
        flips, noise = 0, 0.0
        for other, size in zip(others, TILE_SIZES[1:]):
            valid = valid_mask(first, s.dst_nodata)
            mask_changes = int((valid != valid_mask(other, s.dst_nodata)).sum())
            both = valid & valid_mask(other, s.dst_nodata)
            diff = np.abs(first[both].astype("float64") - other[both].astype("float64"))
            changed = mask_changes + int((diff > 0).sum())
            if method == "sum" and pair == "other CRS":
                flips = max(flips, changed)  # GDAL's sum across CRSs: docs/accuracy.md
            elif np.dtype(s.dst_dtype).kind == "f" and s.engine == "gdal":
                # GDAL computes kernel weights from each chunk's own origin: the last bits move.
                scale = max(float(np.abs(first[both]).max()), 1e-300)
                assert mask_changes == 0 and (diff <= 4e-12 * scale).all(), (method, size, diff.max())
                noise = max(noise, float(diff.max(initial=0)) / scale)
            elif "rotated" in name and method in ("bilinear", "cubic"):
                # GDAL's kernels on a rotated raster move with the chunk (docs/accuracy.md).
                flips = max(flips, changed)
                assert diff.max(initial=0) <= 1 and changed <= 0.01 * valid.sum(), (method, size, changed)
            else:
                # Integers through GDAL are rounded from float64 with their last bits cleared
                # (engines/warp.py, stable_round): identical, as the NumPy engines are.
                assert changed == 0, f"{method}: {changed} pixels differ, tile sizes 16 and {size}"
        reference = reference_for(plan, "d", fixed_scale="rotated" in name).data
        c = compare(first, reference, s.dst_nodata)
        valid = reference[valid_mask(reference, s.dst_nodata)].astype("float64")
        span = float(valid.max() - valid.min()) if valid.size else 0.0
        tiling = f"{flips} px differ" if flips else f"rel {noise:.1g}" if noise else "identical"
        record(f"accuracy: {name:<26} {pair:<9} {method:<8} engine {s.engine:<5} tiles 16/64/4096 {tiling:<13} "
               f"max|diff| {c.max_abs_diff:<10.3g} ({100 * c.max_abs_diff / span if span else 0:.3g} % of range)  "
               f"differing {100 * c.differing / max(c.compared, 1):.3f} %  nodata-mismatch {c.nodata_mismatch}")
        assert c.compared > 300, c
        integer = np.dtype(s.dst_dtype).kind != "f"
        if method == "sum" and pair == "other CRS":
            continue  # GDAL's sum across CRSs moves with its source windows, its own too: recorded only
        if np.dtype(s.dst_dtype).kind == "f":
            # Float rounding: a chunk's source origin changes the last bits of kernel weights.
            assert c.max_abs_diff <= 1e-6 * np.abs(valid).max(), (method, c)
        elif s.engine == "numpy":
            # Exact block results; GDAL's weights are 1 only to within ~1e-11 on these non-dyadic
            # geotransforms, which moves integer means that sit on x.5.
            assert c.max_abs_diff <= (1 if method in ("average", "sum") else 0), (method, c)
        elif pair == "same CRS" or method in ("bilinear", "cubic", "average", "sum"):
            # GDAL's weights computed from each chunk's origin: integers within 1e-12 of x.5.
            assert integer and c.max_abs_diff <= 1 and c.differing <= 0.005 * c.compared, (method, c)
        else:
            # Picks across CRSs: "exact" is GDAL's approximation refined to 1e-6 pixel (rasterio
            # 1.4 refuses 0): a sample that close to a pixel's edge may fall on either side of it.
            assert c.differing <= 2e-4 * c.compared, (method, c)
        if s.engine == "windows" and method in ("average", "sum"):
            # GDAL lets neighbours in with weights of ~1e-15 (docs/engines.md): 0 where no pixel
            # lies under a target pixel. The independent area-weighted reference decides there.
            with rasterio.open(path) as src, rasterio.open(out["d"]) as mosaic:
                data = src.read(spec[1]).astype("float64")
                ok = ~np.isnan(data) & ((data != src.nodata) if src.nodata is not None else True)
                expected = area_reference(data, ok, src.transform, mosaic.transform, first.shape, method)
            got = np.where(valid_mask(first, s.dst_nodata), first, np.nan).astype("float64")
            assert np.array_equal(np.isnan(got), np.isnan(expected)), method
            if integer:  # rounded, clamped to the type, nudged off nodata (to 1 from it)
                info = np.iinfo(s.dst_dtype)
                expected = np.clip(expected, info.min, info.max)
                near_nodata = np.abs(np.floor(expected + 0.5) - s.dst_nodata) == 0
                assert np.nanmax(np.abs(got - expected) - np.where(near_nodata, 0.5, 0.0)) <= 0.5 + 1e-9, method
            else:
                assert np.nanmax(np.abs(got - expected)) <= 1e-6 * np.nanmax(np.abs(expected)), method
            assert c.nodata_mismatch <= 1e-3 * c.compared, (method, c)
        else:
            assert c.nodata_mismatch <= (0 if pair == "same CRS" and s.engine == "numpy" else 5e-4 * c.compared), (
                method, c)


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in REAL if n != "umbra rotated uint8"])
def test_default_transformer_error_stays_within_the_stated_bounds(tmp_path, real_raster, record, name):
    """Across CRSs the default error_threshold (0.125 pixel, as gdalwarp) makes results depend on
    how the warp is cut (GDAL's own whole-image result too). Measured against the exact
    transformation on every real raster, the stated bounds (docs/accuracy.md): picks differ on
    at most 10 % of pixels (6.4 % measured on mosaic_cog1, whose values jump between neighbours); interpolations and averages by more than 2 % of the data range on at
    most 0.5 % of pixels (sharp edges, such as nodata borders, move further; small moves are
    everywhere: integer outputs round differently); nodata on at most 0.1 %."""
    spec = REAL[name]
    path = real_raster(spec[0])
    for method in ("nearest", "bilinear", "cubic", "average", "mode", "max"):
        exact_plan, exact = run_tiles_and_mosaics(config_for(path, spec[1], method, "other CRS", spec, 64, 0.0),
                                                  tmp_path / f"{method}-exact")
        _, approx = run_tiles_and_mosaics(config_for(path, spec[1], method, "other CRS", spec, 64, 0.125),
                                          tmp_path / f"{method}-approx")
        s = exact_plan.datasets["d"].settings
        a, b = read_band(approx["d"]), read_band(exact["d"])
        c = compare(a, b, s.dst_nodata)
        both = valid_mask(a, s.dst_nodata) & valid_mask(b, s.dst_nodata)
        valid = b[both].astype("float64")
        span = float(valid.max() - valid.min()) or 1.0
        diff = np.abs(a[both].astype("float64") - valid)
        far = float((diff > 0.02 * span).mean())
        record(f"error_threshold 0.125 vs 0: {name:<26} {method:<8} differing {100 * c.differing / c.compared:6.2f} %  "
               f"beyond 2 % of range {100 * far:.3f} %  max|diff| {c.max_abs_diff:.3g} "
               f"({100 * c.max_abs_diff / span:.3g} % of range)  nodata-mismatch {100 * c.nodata_mismatch / c.compared:.3f} %")
        assert c.nodata_mismatch <= 0.001 * c.compared, (method, c)
        if method in ("nearest", "mode", "min", "max", "med"):
            assert c.differing <= 0.10 * c.compared, (method, c)
        else:
            assert far <= 0.005, (method, c, far)


def test_average_at_the_raster_edges_is_the_area_weighted_mean(tmp_path, record):
    """The issue's example: a 10 x 10 raster a[r, c] = 10 r + c + 1 and target pixels of 4 x 4
    whose grid starts 2 columns left of and 1 row above it. The corner pixel covers 6 pixels of the
    raster (1, 2, 11, 12, 21, 22): their mean is 11.5. GDAL alone weights the edge row by 2 and
    the edge column by 3 (8.75). Every engine gives the mean, through tiles and chunks."""
    data = (10 * np.arange(10)[:, None] + np.arange(10)[None, :] + 1).astype("float32")
    src = Affine(10, 0, 500000, 0, -10, 5200000)
    path = write_raster(tmp_path / "a.tif", data, "EPSG:32632", src, -9999.0)
    extent = {"left": 499980, "bottom": 5199890, "right": 500140, "top": 5200010}
    for engine in ("numpy", "gdal", "conservative"):
        config = {"target": {"crs": "EPSG:32632", "resolution": 40, "origin": [499980, 5200010], "extent": extent},
                  "tile_size": 16, "datasets": {"d": {"path": path, "method": "average", "engine": engine}}}
        plan, mosaics = run_tiles_and_mosaics(config, tmp_path / engine, max_chunk_bytes=2_000)
        result = read_band(mosaics["d"])
        assert result[0, 0] == 11.5, (engine, result[0, 0])
        bare = reference_for(plan, "d", padded=False).data
        assert bare[0, 0] == 8.75  # GDAL on the bare raster
        expected = area_reference(data, np.ones(data.shape, bool), src, plan.grid.transform, result.shape, "average")
        np.testing.assert_allclose(np.where(result == -9999, np.nan, result), expected, rtol=1e-6, equal_nan=True)


@pytest.mark.parametrize("method", ["average", "sum"])
@pytest.mark.parametrize("grid", ["unaligned x2.7", "coarse x25", "aligned x4 offset"])
def test_area_methods_equal_an_independent_area_weighted_reference(tmp_path, record, method, grid):
    """Within one CRS, every target pixel is the area-weighted mean (sum) of the valid source pixels
    under it (NumPy reference: overlaps of pixel intervals, tests/helpers.py), at the edges of the
    raster and of its nodata holes too. The "coarse" grid is 25 km pixels over a 1 km raster, the
    case where GDAL alone moved edge means by tens of percent."""
    res, origin = {"unaligned x2.7": (27, [3, 7]), "coarse x25": (250, [40, 60]), "aligned x4 offset": (40, [20, 20])}[grid]
    values = smooth_field(150, 130, seed=11)
    values[60:80, 20:50] = -9999.0
    src = Affine(10, 0, 500003, 0, -10, 5200001)
    path = write_raster(tmp_path / "a.tif", values, "EPSG:32632", src, -9999.0)
    config = {"target": {"crs": "EPSG:32632", "resolution": res, "origin": origin}, "tile_size": 16,
              "datasets": {"d": {"path": path, "method": method, "dtype": "float64"}}}
    plan, mosaics = run_tiles_and_mosaics(config, tmp_path, max_chunk_bytes=20_000)
    result = read_band(mosaics["d"])
    expected = area_reference(values, values != -9999.0, src, plan.grid.transform, result.shape, method)
    got = np.where(result == -9999.0, np.nan, result)
    assert np.array_equal(np.isnan(got), np.isnan(expected))
    error = np.nanmax(np.abs(got - expected) / np.maximum(np.abs(expected), 1))
    bare = reference_for(plan, "d", padded=False).data
    bare = np.where(bare == -9999.0, np.nan, bare)
    moved = np.nanmax(np.abs(bare - expected) / np.maximum(np.abs(expected), 1))
    record(f"area-weighted {method} {grid} ({plan.datasets['d'].settings.engine}): max relative error {error:.2g}; "
           f"GDAL on the bare raster: {moved:.3g}")
    assert error <= 1e-9, error


def test_a_raster_smaller_than_a_target_pixel_costs_its_own_pixels(tmp_path):
    """1 km x 1 km of 1 m pixels onto a 3 km grid with 64-pixel tiles: the tile reaches 192,000
    source pixels a side, the work and memory follow the 1,000 x 1,000 that exist."""
    import time

    from workflow_lib.engines.chunks import MemoryBudget

    rng = np.random.default_rng(0)
    data = rng.integers(1, 200, (1000, 1000)).astype("uint8")
    # Inside one 3 km target pixel, around its centre (where nearest takes its pixel).
    path = write_raster(tmp_path / "small.tif", data, "EPSG:32632", Affine(1, 0, 502000, 0, -1, 5003000), 0)
    for method in ("average", "sum", "min", "max", "nearest", "mode", "med"):
        config = {"target": {"crs": "EPSG:32632", "resolution": 3000,
                             "extent": {"left": 480000, "bottom": 4980000, "right": 522000, "top": 5022000}},
                  "tile_size": 64, "datasets": {"s": {"path": path, "method": method, "dtype": "float32"}}}
        started = time.monotonic()
        plan, mosaics = run_tiles_and_mosaics(config, tmp_path / method, mem_mb=512)
        seconds = time.monotonic() - started
        result = read_band(mosaics["s"])
        inside = ~np.isnan(result)
        assert inside.sum() == 1, method
        value = result[inside][0]
        if method == "average":
            assert value == pytest.approx(data.mean(), rel=1e-6)
        elif method == "sum":
            assert value == pytest.approx(data.sum(dtype="float64"), rel=1e-6)
        elif method in ("min", "max"):
            assert value == getattr(data, method)()
        elif method == "med":
            assert value == np.sort(data.ravel())[(data.size - 1) // 2]
        elif method == "nearest":
            assert value == data[500, 500]
        elif method == "mode":
            counts = np.bincount(data.ravel())
            assert counts[int(value)] == counts.max()
        assert seconds < 30, (method, seconds)  # was 138 s and 5.6 GB for average before
    assert MemoryBudget.for_job(512).chunk_bytes > 0


def test_non_dyadic_edges_do_not_depend_on_the_tile_size(tmp_path):
    """The issue's case: average of uint8 onto 2 x 2 blocks straddling the raster's edges, on a
    121.53 x 164.76 m geotransform: 74 of 2,601 pixels differed by 1 between tile sizes 16 and 4096."""
    rng = np.random.default_rng(3)
    data = rng.integers(0, 255, (101, 101)).astype("uint8")
    src = Affine(121.53, 0, 600000.37, 0, -164.76, 5300000.91)
    path = write_raster(tmp_path / "a.tif", data, "EPSG:32632", src, None)
    results = []
    for size in (16, 4096):
        config = {"target": {"crs": "EPSG:32632", "resolution": [243.06, 329.52],
                             "origin": [600000.37 - 121.53, 5300000.91 + 164.76]},
                  "tile_size": size, "datasets": {"d": {"path": path, "method": "average"}}}
        plan, mosaics = run_tiles_and_mosaics(config, tmp_path / str(size), max_chunk_bytes=5_000)
        results.append(read_band(mosaics["d"]))
    assert results[0].shape == (51, 51)  # 2,601 pixels
    assert np.array_equal(results[0], results[1])
    assert math.isclose(plan.datasets["d"].settings.x_scale, 0.5)
