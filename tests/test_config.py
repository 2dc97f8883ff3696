"""A bad config fails before any job runs, naming the key and what is wrong."""

import os
import re

import numpy as np
import pytest
from affine import Affine

from workflow_lib.config import validate_config
from workflow_lib.errors import ConfigError, InputRasterError
from workflow_lib.planning.plan import build_plan

from .helpers import write_raster


@pytest.fixture
def raster(tmp_path):
    return write_raster(tmp_path / "in.tif", np.ones((50, 60), "float32"), "EPSG:32632",
                        Affine(10, 0, 500000, 0, -10, 5200000), -9999.0)


def config(path, **overrides):
    cfg = {
        "target": {"crs": "EPSG:32632", "resolution": 20},
        "datasets": {"dem": {"path": path, "method": "average"}},
    }
    for key, value in overrides.items():
        section, _, name = key.partition("__")
        if name:
            cfg[section][name] = value
        else:
            cfg[section] = value
    return cfg


def test_defaults_are_filled_in(raster):
    cfg = validate_config(config(raster))
    assert cfg["tile_size"] == 1024
    assert cfg["tiles_per_job"] == "auto" and cfg["threads_per_job"] == 2
    assert cfg["target"]["extent"] == "union"
    assert cfg["target"]["origin"] == [0.0, 0.0]
    assert cfg["datasets"]["dem"]["band"] == 1
    assert cfg["output"] == {"formats": ["zarr", "cog"], "table": "none", "compress": "deflate", "compress_level": 1,
                             "cog": True}
    assert cfg["warp"]["error_threshold"] == 0.125


def test_unknown_method_names_the_key(raster):
    cfg = config(raster)
    cfg["datasets"]["dem"]["method"] = "bilinearr"
    with pytest.raises(ConfigError, match=r"datasets\.dem\.method: 'bilinearr' is not one of"):
        validate_config(cfg)


def test_deflate_level_beyond_12_names_the_key(raster):
    cfg = config(raster)
    cfg["output"] = {"compress": "deflate", "compress_level": 19}  # a zstd level, not deflate's
    with pytest.raises(ConfigError, match=r"output\.compress_level: deflate's levels are 1 to 12, got 19"):
        validate_config(cfg)
    cfg["output"] = {"compress": "zstd", "compress_level": 19}
    assert validate_config(cfg)["output"]["compress_level"] == 19


def test_missing_file_names_dataset_and_path(tmp_path):
    missing = str(tmp_path / "nowhere.tif")
    with pytest.raises(ConfigError, match=rf"datasets\.dem\.path: file not found: {missing} \(dataset 'dem'\)"):
        validate_config(config(missing))


def test_unparsable_crs_names_the_key(raster):
    with pytest.raises(ConfigError, match=r"target\.crs: cannot parse 'EPSG:999999'"):
        validate_config(config(raster, target__crs="EPSG:999999"))


@pytest.mark.parametrize("resolution", [0, -5, [10, 0]])
def test_non_positive_resolution_names_the_key(raster, resolution):
    with pytest.raises(ConfigError, match=r"target\.resolution"):
        validate_config(config(raster, target__resolution=resolution))


@pytest.mark.parametrize("name", ["my dem", "dem/1", "dém", "a.b"])
def test_dataset_names_outside_the_allowed_characters_are_refused(raster, name):
    cfg = config(raster)
    cfg["datasets"] = {name: {"path": raster, "method": "average"}}
    with pytest.raises(ConfigError, match=r"dataset name .* must match \[A-Za-z0-9_-\]\+"):
        validate_config(cfg)


def test_input_outside_the_extent_is_refused_before_any_job(raster):
    cfg = validate_config(config(raster, target__extent={"left": 0, "bottom": 0, "right": 1000, "top": 1000}))
    with pytest.raises(ConfigError, match=r"datasets\.dem: .*in\.tif does not overlap the target extent"):
        build_plan(cfg)


def test_unknown_keys_are_refused(raster):
    cfg = config(raster)
    cfg["datasets"]["dem"]["resampling"] = "average"
    with pytest.raises(ConfigError, match=r"^invalid config at datasets\.dem: 'resampling' is not a key here \(keys "
                                          r"here: path, overlap, method, "):
        validate_config(cfg)
    # A misspelled key gets the key it was probably meant to be.
    cfg = config(raster)
    cfg["target"]["resolutoin"] = cfg["target"].pop("resolution")
    with pytest.raises(ConfigError, match=r"^invalid config at target: 'resolutoin': did you mean 'resolution'\?"):
        validate_config(cfg)


def test_empty_extent_is_refused(raster):
    with pytest.raises(ConfigError, match=r"target\.extent: right must exceed left"):
        validate_config(config(raster, target__extent={"left": 10, "bottom": 0, "right": 0, "top": 10}))


def test_band_beyond_the_file_names_dataset_file_and_band(raster):
    cfg = config(raster)
    cfg["datasets"]["dem"]["band"] = 3
    with pytest.raises(InputRasterError, match=r"dataset 'dem' \(.*in\.tif\): band 3 requested but the file has 1"):
        build_plan(validate_config(cfg))


def test_nodata_that_cannot_fit_the_output_type_is_refused(raster):
    cfg = config(raster)
    cfg["datasets"]["dem"]["dtype"] = "uint8"  # input nodata is -9999
    with pytest.raises(InputRasterError, match=r"-9999 does not fit data type uint8"):
        build_plan(validate_config(cfg))


def test_text_file_named_tif_is_refused_with_dataset_and_path(tmp_path):
    path = tmp_path / "notes.tif"
    path.write_text("not a raster\n")
    with pytest.raises(InputRasterError, match=r"dataset 'dem' \(.*notes\.tif\): cannot be opened as a raster"):
        build_plan(validate_config(config(str(path))))


def test_raster_without_crs_is_refused(tmp_path):
    path = write_raster(tmp_path / "nocrs.tif", np.ones((10, 10), "uint8"), None, Affine(1, 0, 0, 0, -1, 10))
    with pytest.raises(InputRasterError, match=r"nocrs\.tif\): the raster has no CRS"):
        build_plan(validate_config(config(path)))
    assert os.path.exists(path)


def test_raster_georeferenced_by_gcps_only_is_refused(tmp_path):
    import rasterio
    from rasterio.control import GroundControlPoint

    path = tmp_path / "gcps.tif"
    with rasterio.open(path, "w", driver="GTiff", width=10, height=10, count=1, dtype="uint8") as dst:
        dst.write(np.ones((10, 10), "uint8"), 1)
        dst.gcps = ([GroundControlPoint(0, 0, 500000, 5200000), GroundControlPoint(10, 0, 500100, 5200000),
                     GroundControlPoint(0, 10, 500000, 5199900)], "EPSG:32632")
    with pytest.raises(InputRasterError, match=r"gcps\.tif\): the raster is georeferenced only by ground control"):
        build_plan(validate_config(config(str(path))))


def test_an_integer_input_made_real_gets_nan_as_nodata(tmp_path):
    """dtype: float32 on an int16 input: NaN, as docs/configuration.md says for real outputs, not -32768."""
    path = write_raster(tmp_path / "t.tif", np.ones((50, 60), "int16"), "EPSG:32632",
                        Affine(10, 0, 500000, 0, -10, 5200000), -32768)
    settings = build_plan(validate_config({"target": {"crs": "EPSG:32632", "resolution": 20}, "datasets": {
        "t": {"path": path, "method": "bilinear", "dtype": "float32"}}})).datasets["t"].settings
    assert settings.src_nodata == -32768 and np.isnan(settings.dst_nodata)
    kept = build_plan(validate_config({"target": {"crs": "EPSG:32632", "resolution": 20}, "datasets": {
        "t": {"path": path, "method": "bilinear", "dtype": "float32", "nodata": -32768}}})).datasets["t"].settings
    assert kept.dst_nodata == -32768  # asked for


def test_a_resolution_in_the_wrong_units_says_so(raster):
    """resolution: 100 with EPSG:4326 (metres meant, degrees read)."""
    with pytest.raises(ConfigError, match=r"target\.resolution: 100 x 100 degrees makes one pixel larger than the "
                                          r"whole extent .* EPSG:4326 is in degrees"):
        build_plan(validate_config(config(raster, target={"crs": "EPSG:4326", "resolution": 100})))
    with pytest.raises(ConfigError, match=r"target\.extent: 400000, .* look like metres, but EPSG:4326 is in degrees"):
        build_plan(validate_config(config(raster, target={
            "crs": "EPSG:4326", "resolution": 0.01,
            "extent": {"left": 400000, "bottom": 5000000, "right": 410000, "top": 5010000}})))


def test_a_raster_smaller_than_one_target_pixel_is_planned(tmp_path):
    """A 1 km x 1 km input of 1 m pixels onto a 3 km grid: one pixel, one tile, not 'no overlap'."""
    path = write_raster(tmp_path / "small.tif", np.ones((1000, 1000), "uint8"), "EPSG:32632",
                        Affine(1, 0, 501100, 0, -1, 5002700), 0)
    plan = build_plan(validate_config({"target": {"crs": "EPSG:32632", "resolution": 3000}, "tile_size": 64,
                                       "datasets": {"s": {"path": path, "method": "average"}}}))
    assert (plan.grid.width, plan.grid.height) == (1, 1) and plan.datasets["s"].tile_ids == ("r0000_c0000",)


def test_passwords_in_urls_are_masked_in_the_config_and_kept_for_the_connection_alone(monkeypatch):
    from workflow_lib import secrets
    from workflow_lib.config import hide_passwords

    monkeypatch.delenv(secrets.CREDENTIALS_ENV, raising=False)
    config = {"datasets": {"a": {"path": "https://bob:p%40ss@host.example/x.tif"},
                           "b": {"path": ["https://host.example/y.tif", "https://eve:pw2@other.example/z.tif"]}},
              "database": {"url": "postgresql://app:db%2Fpw@127.0.0.1:5432/runs"}}
    hide_passwords(config)
    assert config == {"datasets": {"a": {"path": "https://bob:***@host.example/x.tif"},
                                   "b": {"path": ["https://host.example/y.tif", "https://eve:***@other.example/z.tif"]}},
                      "database": {"url": "postgresql://app:***@127.0.0.1:5432/runs"}}
    assert "p%40ss" not in str(config) and "pw2" not in str(config)
    # The connection gets the URL as written; GDAL gets user and password decoded, per URL.
    assert secrets.reveal("postgresql://app:***@127.0.0.1:5432/runs") == "postgresql://app:db%2Fpw@127.0.0.1:5432/runs"
    assert secrets.reveal("postgresql://app:***@127.0.0.1:5432/other") == "postgresql://app:***@127.0.0.1:5432/other"
    assert secrets.credentials()["https://host.example/x.tif"] == "bob:p@ss"
    assert secrets.credentials()["https://other.example/z.tif"] == "eve:pw2"
    hide_passwords(config)  # parsed again in a job: nothing changes
    assert config["datasets"]["a"]["path"] == "https://bob:***@host.example/x.tif"
    assert secrets.redact("sqlite:///results/status.sqlite") == "sqlite:///results/status.sqlite"


def test_band_with_bands_is_an_error_naming_both(tmp_path):
    config = {"target": {"crs": "EPSG:32632", "resolution": 20},
              "datasets": {"dem": {"path": str(tmp_path), "method": "average", "band": 2, "bands": [1, 2]}}}
    with pytest.raises(ConfigError, match=r"^datasets\.dem: both band \(2\) and bands \(\[1, 2\]\) are given"):
        validate_config(config)


def test_a_grid_too_large_to_plan_is_refused_with_its_size(tmp_path):
    """A resolution in the wrong units made a MemoryError (2.75 TiB) at parse time: now one line."""
    path = write_raster(tmp_path / "in.tif", np.zeros((100, 100), "float32"), "EPSG:3035",
                        Affine(100, 0, 4000000, 0, -100, 3000000), -9999.0)
    config = {"target": {"crs": "EPSG:3035", "resolution": 0.001}, "tile_size": 256,
              "datasets": {"dem": {"path": path, "method": "average"}}}
    with pytest.raises(ConfigError, match=r"^target\.resolution: 0\.001 in EPSG:3035 makes a grid of 10,000,000 x "
                                          r"10,000,000 pixels \(width x height\), 39,063 x 39,063 tiles of 256 px"):
        build_plan(validate_config(config))


def test_a_yaml_mistake_names_the_file_line_and_column(tmp_path):
    from workflow_lib.config import load_config

    path = tmp_path / "config.yaml"
    path.write_text('target:\n  crs: "EPSG:3035\n  resolution: 200\n')
    with pytest.raises(ConfigError, match=rf"^{path}, line 2, column 8: not valid YAML: while scanning a quoted "
                                          r"scalar, found unexpected end of stream at line 4, column 1$"):
        load_config(str(path))


def test_a_dataset_name_too_long_for_a_file_name_is_refused(tmp_path):
    config = {"target": {"crs": "EPSG:32632", "resolution": 20},
              "datasets": {"d" * 250: {"path": str(tmp_path), "method": "average"}}}
    with pytest.raises(ConfigError, match=r"^datasets: dataset name d{40}\.\.\. is 250 characters long, more than 100"):
        validate_config(config)


@pytest.mark.parametrize("key", ["tile_mb", "mosaic_mb"])
def test_job_memory_below_what_a_job_needs_is_refused_with_the_reason(raster, key):
    from workflow_lib.runtime import MIN_JOB_MB

    with pytest.raises(ConfigError, match=rf"^memory\.{key}: 128 MB is too little for a job: Python, NumPy and GDAL "
                                          rf"take about \d+ MB .*use {MIN_JOB_MB} or more"):
        validate_config(config(raster, memory={key: 128}))
    with pytest.raises(ConfigError, match=f"use {MIN_JOB_MB} or more"):  # the schema's minimum is MIN_JOB_MB
        validate_config(config(raster, memory={key: MIN_JOB_MB - 1}))
    assert validate_config(config(raster, memory={key: MIN_JOB_MB}))["memory"][key] == MIN_JOB_MB


def test_a_dataset_may_not_take_a_name_of_the_zarr_stores_own_arrays(tmp_path):
    path = write_raster(tmp_path / "a.tif", np.zeros((4, 4), "float32"), "EPSG:32632",
                        Affine(10, 0, 500000, 0, -10, 5200000))
    for names, taken in ((["x"], "x"), (["lc", "lc_band"], "lc_band"), (["overviews"], "overviews")):
        cfg = {"target": {"crs": "EPSG:32632", "resolution": 20},
               "datasets": {n: {"path": path, "method": "average"} for n in names}}
        with pytest.raises(ConfigError, match=f"datasets.{taken}: this name is taken in results/stack.zarr"):
            validate_config(cfg)
        # Without the store among the formats, the names are free.
        validate_config({**cfg, "output": {"formats": ["cog"]}})


@pytest.mark.parametrize("resolution, tile_size, formats, expected", [
    # More pixels per side than GDAL (and a GeoTIFF) holds: refused whatever the formats.
    (2e-6, 2 ** 22, ["zarr"], r"^target: the grid is 5,000,000,000 x 5,000,000,000 pixels \(width x height\); "
                              r"tiles, mosaics and GDAL hold at most 2,147,483,647 pixels per side"),
    # A GeoTIFF stack of 22.7 TiB before compression: a note (compression may well bring it under).
    (0.004, 2 ** 16, ["zarr", "cog"], r"^the GeoTIFF stack \(output.formats: cog\) would hold 23 TiB before "
                                      r"compression \(2,500,000 x 2,500,000 pixels, 1 bands\)"),
    # The same with the Zarr store alone: nothing to say.
    (0.004, 2 ** 16, ["zarr"], None),
])
def test_a_grid_beyond_a_formats_limits_is_said_before_any_job(tmp_path, resolution, tile_size, formats, expected):
    path = write_raster(tmp_path / "in.tif", np.zeros((100, 100), "float32"), "EPSG:3035",
                        Affine(100, 0, 4000000, 0, -100, 3000000), -9999.0)
    config = {"target": {"crs": "EPSG:3035", "resolution": resolution}, "tile_size": tile_size,
              "datasets": {"dem": {"path": path, "method": "average"}}, "output": {"formats": formats}}
    if expected and expected.startswith("^target"):
        with pytest.raises(ConfigError, match=expected):
            build_plan(validate_config(config), cache_dir=str(tmp_path / "cache"))
        return
    plan = build_plan(validate_config(config), cache_dir=str(tmp_path / "cache"))
    assert len(plan.notes) == (1 if expected else 0)
    if expected:
        assert re.match(expected, plan.notes[0]), plan.notes


def test_a_geotiff_stack_of_more_bands_than_tiff_holds_is_refused(tmp_path):
    path = write_raster(tmp_path / "in.tif", np.ones((10, 10), "uint16"), "EPSG:3035",
                        Affine(100, 0, 4000000, 0, -100, 3000000), 0)
    config = {"target": {"crs": "EPSG:3035", "resolution": 100},
              "datasets": {"classes": {"path": path, "method": "fractions", "classes": list(range(1, 65537))}}}
    with pytest.raises(ConfigError, match=r"^output.formats: the GeoTIFF stack would have 65,536 bands .* set "
                                          r"output.formats: \[zarr\]"):
        build_plan(validate_config(config), cache_dir=str(tmp_path / "cache"))
    config["output"] = {"formats": ["zarr"]}
    assert len(build_plan(validate_config(config), cache_dir=str(tmp_path / "cache")).datasets["classes"].band_names) \
        == 65536
