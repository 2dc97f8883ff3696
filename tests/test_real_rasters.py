"""Real GeoTIFFs from public projects' test suites (../shared/data/real/), tiled in chunks and
compared with GDAL's whole-image warp. Cross-CRS cases use an exact transformation
(warp.error_threshold: 0), so every case must match to float rounding."""

import numpy as np
import pytest
import rasterio
from rasterio.enums import Resampling

from .helpers import compare, read_band, reference_for, run_tiles_and_mosaics, valid_mask

# (file, band, method, target crs, resolution, origin, tile size)
CASES = {
    "world mode x4 (same CRS)": ("rasterio__world.byte.tif", 1, "mode", "EPSG:4326", 0.5, [0, 0], 64),
    "world nearest -> 3857": ("rasterio__world.byte.tif", 1, "nearest", "EPSG:3857", 60000, [0, 0], 64),
    "RGB band 2 average x3 (same CRS, unaligned)": ("rasterio__RGB.byte.tif", 2, "average", "EPSG:32618", 900,
                                                    [0, 0], 64),
    "RGB band 1 bilinear -> 4326": ("rasterio__RGB.byte.tif", 1, "bilinear", "EPSG:4326", 0.005, [0, 0], 64),
    "custom Albers WKT average (same CRS)": ("rio-cogeo__image_nodata.tif", 1, "average", None, 600, [0, 0], 64),
    "custom Albers WKT cubic -> 5070": ("rio-cogeo__image_nodata.tif", 1, "cubic", "EPSG:5070", 500, [0, 0], 64),
    "float64 NaN nodata average (same CRS)": ("rio-cogeo__image_nan.tif", 1, "average", "EPSG:4326", 0.004,
                                              [0, 0], 32),
    "int16 COG with overviews average (same CRS)": ("rio-tiler__cog_int16.tif", 1, "average", "EPSG:32621", 400,
                                                    [0, 0], 128),
    "int16 COG max -> 3413": ("rio-tiler__cog_int16.tif", 1, "max", "EPSG:3413", 500, [0, 0], 128),
    "uint16 mosaic_cog1 med (same CRS)": ("rio-tiler__mosaic_cog1.tif", 3, "med", "EPSG:32618", 1200, [0, 0], 64),
    "rotated south-up bilinear (same CRS)": ("geotiff-test-data__umbra_mount_yasur.tif", 1, "bilinear",
                                             "EPSG:32759", 2, [0, 0], 128),
    "rotated south-up mode -> 4326": ("geotiff-test-data__umbra_mount_yasur.tif", 1, "mode", "EPSG:4326", 0.00003,
                                      [0, 0], 128),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_real_raster_tiles_equal_whole_image_warp(tmp_path, real_raster, record, case):
    name, band, method, crs, res, origin, tile_size = CASES[case]
    path = real_raster(name)
    if crs is None:  # a CRS without EPSG code: use the file's own WKT
        with rasterio.open(path) as src:
            crs = src.crs.to_wkt()
    config = {"target": {"crs": crs, "resolution": res, "origin": origin}, "tile_size": tile_size,
              "warp": {"error_threshold": 0}, "datasets": {"d": {"path": path, "method": method, "band": band}}}
    if method in ("average", "sum", "mode"):  # compared with GDAL's whole-image warp: GDAL's warper
        config["datasets"]["d"]["engine"] = "gdal" if "rotated" in case or "->" in case else "auto"
    plan, mosaics = run_tiles_and_mosaics(config, tmp_path, max_chunk_bytes=200_000)
    settings = plan.datasets["d"].settings
    result = read_band(mosaics["d"])
    # GDAL cuts its own whole-image warp of a rotated raster into pieces (their source windows are
    # mostly empty), each with its own XSCALE/YSCALE: the reference is given the dataset's there.
    reference = reference_for(plan, "d", fixed_scale="rotated" in case).data
    c = compare(result, reference, settings.dst_nodata)
    record(c.row(f"real: {case}"))
    assert c.compared > 500, c
    # Across CRSs "exact" is GDAL's approximation refined to 1e-6 pixel (rasterio 1.4 refuses 0):
    # a sample that close to a source pixel edge may fall on either side of it, also of the
    # raster's own edge.
    assert c.nodata_mismatch <= (0 if settings.same_crs else 1e-4 * c.compared), c
    if np.dtype(settings.dst_dtype).kind == "f":
        # Float rounding only: a chunk's source origin changes the last bits of kernel weights.
        valid = reference[valid_mask(reference, settings.dst_nodata)]
        assert c.max_abs_diff <= 1e-6 * np.abs(valid).max(), c
    elif settings.same_crs and method in ("average", "sum", "bilinear", "cubic"):
        # Integer results rounded from real values: GDAL's weights are exact only to ~1e-12, so its
        # own x.5 means round either way (docs/accuracy.md); the workflow's round up.
        assert c.max_abs_diff <= 1 and c.differing <= 1e-3 * c.compared, c
    elif settings.same_crs:
        assert c.max_abs_diff == 0, c
    else:
        assert c.differing <= 1e-4 * c.compared, c


def test_source_overviews_never_leak_into_results(tmp_path, real_raster):
    """cog_int16 carries NEAREST overviews: a decimated read would use them and change the values;
    the tiles are made from full-resolution pixels only."""
    path = real_raster("rio-tiler__cog_int16.tif")
    config = {"target": {"crs": "EPSG:32621", "resolution": 800}, "tile_size": 64,
              "datasets": {"d": {"path": path, "method": "average"}}}
    plan, mosaics = run_tiles_and_mosaics(config, tmp_path)
    with rasterio.open(path) as src:
        shape = (src.height // 8, src.width // 8)
        with_overviews = src.read(1, out_shape=shape, resampling=Resampling.average)
    with rasterio.open(path, OVERVIEW_LEVEL="NONE") as src:
        full_resolution = src.read(1, out_shape=shape, resampling=Resampling.average)
    assert (with_overviews != full_resolution).sum() > 1000  # the trap is real for this file
    s = plan.datasets["d"].settings
    assert compare(read_band(mosaics["d"]), reference_for(plan, "d").data, s.dst_nodata).max_abs_diff == 0


@pytest.mark.parametrize("crs,extent", [
    ("EPSG:3035", {"left": 3900000, "bottom": 2900000, "right": 4100000, "top": 3100000}),
    ("EPSG:32632", {"left": 400000, "bottom": 4900000, "right": 600000, "top": 5100000}),
])
def test_global_layer_onto_a_local_grid(tmp_path, real_raster, record, crs, extent):
    """The issue's configs: world.byte (EPSG:4326, -180..180) onto 1 km grids in central Europe.
    They used to stop with 'does not overlap' (LAEA) or a raw 'Point outside of projection domain'
    traceback (UTM); now every tile is planned and the mosaic is GDAL's whole-image warp."""
    path = real_raster("rasterio__world.byte.tif")
    config = {"target": {"crs": crs, "resolution": 1000, "extent": extent}, "tile_size": 64,
              "warp": {"error_threshold": 0}, "datasets": {"world": {"path": path, "method": "nearest"}}}
    plan, mosaics = run_tiles_and_mosaics(config, tmp_path)
    assert len(plan.datasets["world"].tiles) == plan.grid.tile_rows * plan.grid.tile_cols == 16
    result = read_band(mosaics["world"])
    c = compare(result, reference_for(plan, "world").data, plan.datasets["world"].settings.dst_nodata)
    record(c.row(f"real: world.byte nearest -> {crs} 1 km local grid"))
    assert c.compared == result.size == 200 * 200 and c.max_abs_diff == 0, c
