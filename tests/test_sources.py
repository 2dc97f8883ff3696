"""Datasets as they come: many files (a glob, a list), connection strings (NetCDF, Zarr, HDF5).

The reference for a dataset of many files is the same pixels as one file: the members painted in
order onto one array by NumPy (a later member's valid pixels over an earlier one's), written as a
single GeoTIFF. The workflow on the members must give exactly what it gives on that file, and that
file is compared with GDAL's whole-image warp as every other input is.
"""

from __future__ import annotations

import glob
import json
import math
import os

import numpy as np
import pytest
import rasterio
import rasterio.shutil
from affine import Affine

from workflow_lib.config import validate_config
from workflow_lib.errors import ConfigError, InputRasterError
from workflow_lib.planning.plan import build_plan
from workflow_lib.engines.resample import resample_tile
from workflow_lib.sources import catalog

from .helpers import (compare, read_band, reference_for, run_tiles_and_mosaics, smooth_field, snakemake, write_config,
                      write_raster)

# On the grid of a 120 m target with origin (0, 0): whole target pixels from the corner.
ORIGIN = Affine(30, 0, 504000, 0, -30, 4608000)
NODATA = -9999.0


def write_members(folder, rows=3, cols=4, size=200, overlap=12, dtype="float32", skip=(), name="m{:02d}.tif"):
    """Members of a rows x cols grid, each ``size`` px plus ``overlap`` px into its neighbours. In
    the overlaps their values differ (member k adds k), so the order that wins shows. Returns the
    paths (in name order) and the full array each member was cut from."""
    os.makedirs(folder, exist_ok=True)
    full = smooth_field(rows * size, cols * size, seed=4)
    full[150:190, 300:420] = NODATA  # a hole inside one member, across the seam with the next
    paths = []
    for k in range(rows * cols):
        if k in skip:
            continue
        r, c = divmod(k, cols)
        r0, c0 = max(r * size - overlap, 0), max(c * size - overlap, 0)
        r1, c1 = min((r + 1) * size + overlap, rows * size), min((c + 1) * size + overlap, cols * size)
        part = full[r0:r1, c0:c1].copy()
        part[part != NODATA] += k
        paths.append(write_raster(os.path.join(folder, name.format(k)), part.astype(dtype), "EPSG:32633",
                                  ORIGIN @ Affine.translation(c0, r0), NODATA))
    return sorted(paths), full  # the order of a glob's matches (m100 before m11)


def painted(paths, nodata=NODATA):
    """The members painted in order onto one array (NumPy, not the workflow's VRT): where each is
    valid, it replaces what was there. Returns (array, transform)."""
    with rasterio.open(paths[0]) as first:
        a = first.transform.a
    boxes = []
    for p in paths:
        with rasterio.open(p) as src:
            boxes.append((src.transform.c, src.transform.f, src.width, src.height, src.read(1)))
    left, top = min(b[0] for b in boxes), max(b[1] for b in boxes)
    width = int(round(max((b[0] - left) / a + b[2] for b in boxes)))
    height = int(round(max((top - b[1]) / a + b[3] for b in boxes)))
    out = np.full((height, width), nodata, dtype=boxes[0][4].dtype)
    for x, y, w, h, data in boxes:
        c, r = int(round((x - left) / a)), int(round((top - y) / a))
        view = out[r:r + h, c:c + w]
        valid = data != nodata
        view[valid] = data[valid]
    return out, Affine(a, 0, left, 0, -a, top)


def single_file(folder, paths) -> str:
    data, transform = painted(paths)
    return write_raster(os.path.join(folder, "single.tif"), data, "EPSG:32633", transform, NODATA)


def config_for(path, method="average", crs="EPSG:32633", resolution=120, tile_size=64, **extra):
    return {"target": {"crs": crs, "resolution": resolution}, "tile_size": tile_size,
            "warp": {"error_threshold": 0}, "datasets": {"dem": {"path": path, "method": method, **extra}}}


def mosaic_of(tmp_path, config, label):
    plan, mosaics = run_tiles_and_mosaics(config, tmp_path / label)
    return plan, read_band(mosaics["dem"])


@pytest.mark.parametrize("method, crs, resolution, engine", [
    ("average", "EPSG:32633", 120, "auto"),  # the block engine
    ("bilinear", "EPSG:32633", 75, "auto"),  # GDAL's warper, same CRS
    ("average", "EPSG:4326", 0.0012, "gdal"),  # GDAL's warper across CRSs
    ("average", "EPSG:4326", 0.0012, "auto"),  # the conservative engine
])
def test_many_files_give_the_pixels_of_one_file(tmp_path, monkeypatch, record, method, crs, resolution, engine):
    monkeypatch.chdir(tmp_path)
    paths, _ = write_members(tmp_path / "parts")
    single = single_file(tmp_path, paths)
    plan, many = mosaic_of(tmp_path, config_for("parts/*.tif", method, crs, resolution, engine=engine), "many")
    one_plan, one = mosaic_of(tmp_path, config_for(single, method, crs, resolution, engine=engine), "one")
    assert plan.grid == one_plan.grid
    assert plan.datasets["dem"].header.path.endswith(".vrt")
    assert one.shape == many.shape and np.array_equal(one, many, equal_nan=True)
    if plan.datasets["dem"].settings.engine == "conservative":
        return  # its reference is the exact footprints (tests/test_conservative.py)
    # And that one file is GDAL's whole-image warp of the same pixels, as every input is checked.
    ref = reference_for(one_plan, "dem")
    cmp = compare(many, ref.data, ref.nodata)
    record(cmp.row(f"12 files vs one file vs GDAL, {method} onto {crs}"))
    assert cmp.compared > 1000 and cmp.nodata_mismatch == 0
    assert cmp.max_abs_diff <= (1e-3 if method == "average" and crs == "EPSG:32633" else 0.05)


def test_overlap_first_and_list_order(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    paths, _ = write_members(tmp_path / "parts", rows=2, cols=2)
    first = single_file(tmp_path, paths[::-1])  # the first file painted last: it wins
    _, by_first = mosaic_of(tmp_path, config_for("parts/*.tif", overlap="first"), "first")
    _, reversed_list = mosaic_of(tmp_path, config_for(paths[::-1]), "list")
    _, last = mosaic_of(tmp_path, config_for("parts/*.tif"), "last")
    _, reference = mosaic_of(tmp_path, config_for(first), "one")
    assert np.array_equal(by_first, reference) and np.array_equal(reversed_list, reference)
    # The order matters where members overlap: the default (the last wins) is another result.
    assert not np.array_equal(last, reference)


def test_a_vrt_and_a_gdal_tile_index_of_the_files(tmp_path, monkeypatch):
    """A VRT or a GTI index (GDAL 3.9+) is one raster to the workflow: GDAL does the mosaic."""
    monkeypatch.chdir(tmp_path)
    paths, _ = write_members(tmp_path / "parts")
    _, by_glob = mosaic_of(tmp_path, config_for("parts/*.tif"), "glob")
    features = []
    for p in paths:
        with rasterio.open(p) as src:
            left, bottom, right, top = src.bounds
        ring = [[left, bottom], [right, bottom], [right, top], [left, top], [left, bottom]]
        features.append({"type": "Feature", "properties": {"location": p},
                         "geometry": {"type": "Polygon", "coordinates": [ring]}})
    (tmp_path / "index.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    (tmp_path / "index.gti").write_text(
        "<GDALTileIndexDataset><IndexDataset>index.geojson</IndexDataset><LocationField>location</LocationField>"
        "<SRS>EPSG:32633</SRS><ResX>30</ResX><ResY>30</ResY></GDALTileIndexDataset>")
    plan, by_index = mosaic_of(tmp_path, config_for("index.gti"), "gti")
    assert plan.datasets["dem"].header.driver == "GTI"
    assert np.array_equal(by_index, by_glob)
    # The VRT the workflow wrote for the glob, given as a path of its own.
    vrt = glob.glob(str(tmp_path / ".cache" / "sources" / "dem-*.vrt"))[0]
    _, by_vrt = mosaic_of(tmp_path, config_for(vrt), "vrt")
    assert np.array_equal(by_vrt, by_glob)


def test_sparse_members_plan_only_the_tiles_they_reach(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # 5 x 5 places for members of 256 px (one 64 px tile of 120 m each): only the four corners.
    corners = {0, 4, 20, 24}
    write_members(tmp_path / "parts", rows=5, cols=5, size=256, overlap=0, skip=set(range(25)) - corners)
    plan = build_plan(validate_config(config_for("parts/*.tif")))
    assert plan.grid.tile_rows == plan.grid.tile_cols == 5
    # A member's own tile and the tiles around it (whose kernels reach over the shared edge); none
    # of the 9 tiles in the cross between them, which no file reaches.
    expected = {f"r{r:04d}_c{c:04d}" for r in range(5) for c in range(5) if r != 2 and c != 2}
    assert set(plan.datasets["dem"].tile_ids) == expected


def test_headers_are_read_once_and_again_when_a_file_changes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    paths, _ = write_members(tmp_path / "parts")
    config = validate_config(config_for("parts/*.tif"))
    first = build_plan(config)
    reads = []
    real = catalog.read_header
    monkeypatch.setattr(catalog, "read_header", lambda *a: reads.append(a[1]) or real(*a))
    again = build_plan(config)
    assert reads == [] and again.datasets["dem"].header == first.datasets["dem"].header
    os.utime(paths[5], ns=(1, 2_000_000_000_000_000_000))
    changed = build_plan(config)
    assert reads == [paths[5]]
    # A changed member is another VRT (its name is its content), so Snakemake sees a new input.
    assert changed.datasets["dem"].header.path != first.datasets["dem"].header.path
    with open(os.path.join(".cache", "headers", "dem.json")) as f:
        cached = json.load(f)
    assert len(cached["headers"]) == 12 and len(cached["crs"]) == 1


def test_members_that_do_not_fit_are_named(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    paths, _ = write_members(tmp_path / "parts", rows=1, cols=3)
    data = np.zeros((50, 50), "float32")
    cases = {
        "dtype": (write_raster(tmp_path / "parts" / "z4.tif", data.astype("int16"), "EPSG:32633", ORIGIN, -9999),
                  "data type is int16"),
        "nodata": (write_raster(tmp_path / "parts" / "z5.tif", data, "EPSG:32633", ORIGIN, 0), "its nodata is 0.0"),
    }
    for case, (bad, why) in cases.items():
        with pytest.raises(ConfigError) as err:
            build_plan(validate_config(config_for([*paths, bad])))
        assert f"{os.path.abspath(bad)} cannot join the other files of dataset 'dem'" in str(err.value), case
        assert why in str(err.value), case
    with pytest.raises(ConfigError, match=r"datasets\.dem\.path: no file matches 'parts/\*\.tiff' \(dataset 'dem'\)"):
        build_plan(validate_config(config_for("parts/*.tiff")))
    with pytest.raises(ConfigError, match=r"datasets\.dem\.path: file not found: .*nothere\.tif \(dataset 'dem'\)"):
        validate_config(config_for([paths[0], "parts/nothere.tif"]))
    broken = tmp_path / "parts" / "broken.tif"
    broken.write_bytes(b"not a raster at all")
    with pytest.raises(InputRasterError, match=r"dataset 'dem' \(.*broken\.tif\): cannot be opened as a raster"):
        build_plan(validate_config(config_for([*paths, str(broken)])))


def _part_reference(plan, path, part, pad_methods=("average",)):
    """GDAL's whole-image warp of one file onto the plan's grid, with that part's settings; for the
    conservative engine, its exact footprints (tests/helpers.py: footprint_reference)."""
    from .helpers import footprint_reference, reference_warp

    s, g = part.settings, plan.grid
    if s.engine == "conservative":
        with rasterio.open(path) as src:
            data = src.read(1)
            truth = footprint_reference(data, data != NODATA, src.transform, src.crs, g.transform, g.crs,
                                        (g.height, g.width), points_per_edge=max(4, 2 * s.edge_points))
        return np.where(np.isnan(truth.average), NODATA, truth.average).astype(s.dst_dtype)
    pad = int(math.ceil(4.0 / min(s.x_scale, s.y_scale, 1.0))) + 4 if s.method in pad_methods else 0
    return reference_warp(path, 1, g.transform, g.width, g.height, g.crs, s.method, s.dst_dtype, s.src_nodata,
                          s.dst_nodata, {"XSCALE": repr(s.x_scale), "YSCALE": repr(s.y_scale)},
                          error_threshold=s.error_threshold, pad=pad).data


@pytest.mark.slow
@pytest.mark.parametrize("method", ["bilinear", "average"])
def test_files_in_two_utm_zones_are_warped_each_and_combined_in_order(tmp_path, monkeypatch, record, method):
    """Three files across the border of UTM zones 32 and 33, in the order 32, 33, 32 (three
    parts). Reference: each file warped by GDAL on its own, painted in order."""
    from rasterio.warp import transform as move

    monkeypatch.chdir(tmp_path)
    os.makedirs("parts")
    (x33,), (y33,) = move("EPSG:32632", "EPSG:32633", [709000.0], [5198000.0])
    specs = [("a", "EPSG:32632", 700000.0, 5200000.0), ("b", "EPSG:32633", round(x33, -1), round(y33, -1)),
             ("c", "EPSG:32632", 706000.0, 5194000.0)]
    paths = []
    for k, (name, crs, x, y) in enumerate(specs):
        values = smooth_field(300, 360, seed=10 + k) + 50 * k
        values[40:70, 100:160] = NODATA
        paths.append(os.path.abspath(write_raster(f"parts/{name}.tif", values, crs, Affine(30, 0, x, 0, -30, y),
                                                  NODATA)))
    config = config_for("parts/*.tif", method, "EPSG:3035", 100, tile_size=48)
    plan, result = mosaic_of(tmp_path, config, "zones")
    d = plan.datasets["dem"]
    assert [p.header.path for p in d.parts] == paths  # a run of one file is the file itself
    reference = None
    for path, part in zip(paths, d.parts):
        warped = _part_reference(plan, path, part)
        if reference is None:
            reference = warped
        else:
            later = warped != NODATA
            reference[later] = warped[later]
    cmp = compare(result, reference, NODATA)
    against = "exact footprints" if d.settings.engine == "conservative" else "GDAL"
    record(cmp.row(f"3 files in UTM 32/33/32 -> 3035, {method}, vs {against} per file"))
    assert cmp.compared > 5000 and cmp.nodata_mismatch == 0
    assert cmp.max_abs_diff < 0.01
    # Each part on its own matters: where b covers a, b's values are there (b is 50 higher).
    only_b = _part_reference(plan, paths[1], d.parts[1]) != NODATA
    only_c = _part_reference(plan, paths[2], d.parts[2]) != NODATA
    shown = only_b & ~only_c & (result != NODATA)
    assert shown.sum() > 1000
    if d.settings.engine == "conservative":  # against exact footprints: to float32's rounding
        np.testing.assert_allclose(result[shown], reference[shown], rtol=1e-6)
    else:
        assert np.array_equal(result[shown], reference[shown])


def test_files_of_two_pixel_sizes_in_one_crs(tmp_path, monkeypatch):
    """A coarse file under a fine one (a fill-in below a detailed DEM): two parts, the fine one
    painted last (list order), each on its own grid."""
    monkeypatch.chdir(tmp_path)
    coarse = write_raster("coarse.tif", smooth_field(200, 200, seed=1), "EPSG:32633",
                          Affine(60, 0, 504000, 0, -60, 4608000), NODATA)
    fine = write_raster("fine.tif", smooth_field(200, 200, seed=2) + 1000, "EPSG:32633",
                        Affine(30, 0, 507000, 0, -30, 4605000), NODATA)
    plan, result = mosaic_of(tmp_path, config_for([coarse, fine], "average", resolution=120, tile_size=32), "sizes")
    d = plan.datasets["dem"]
    assert len(d.parts) == 2 and [p.settings.engine for p in d.parts] == ["numpy", "numpy"]
    reference = _part_reference(plan, coarse, d.parts[0])
    top = _part_reference(plan, fine, d.parts[1])
    reference[top != NODATA] = top[top != NODATA]
    cmp = compare(result, reference, NODATA)
    assert cmp.compared > 5000 and cmp.nodata_mismatch == 0 and cmp.max_abs_diff < 1e-3


def _damage_first_block(path):
    with rasterio.open(path) as src:
        offset = int(src.get_tag_item("BLOCK_OFFSET_0_0", "TIFF", bidx=1))
    with open(path, "r+b") as f:
        f.seek(offset + 2)
        f.write(b"\xff" * 64)


def test_a_damaged_member_fails_only_the_tiles_that_need_it_and_is_named(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    paths, _ = write_members(tmp_path / "parts", overlap=0)
    plan = build_plan(validate_config(config_for("parts/*.tif")))
    d = plan.datasets["dem"]
    _damage_first_block(paths[0])  # the north-west corner's block: only tile r0000_c0000 reads it
    failed, made = {}, []
    for tid in d.tiles:
        out = tmp_path / "tiles" / f"{tid}.tif"
        try:
            resample_tile("dem", d.header, d.settings, plan.grid, plan.grid.tile(tid), str(out), mem_mb=300)
            made.append(tid)
        except InputRasterError as exc:
            failed[tid.id] = str(exc)
            assert not out.exists()  # nothing under the final name
    assert list(failed) == ["r0000_c0000"]
    assert f"dataset 'dem' ({paths[0]}): cannot be read (a file of {d.header.path}" in failed["r0000_c0000"]
    assert len(made) == len(d.tiles) - 1


def _netcdf_with_time(folder, data, transform, nodata):
    """A CF NetCDF-4 file with one variable, tas(time, y, x), written by GDAL: bands become time
    steps through GDAL's NETCDF_DIM_* metadata (what gdal_translate keeps from a NetCDF source)."""
    tif = os.path.join(folder, "tas.tif")
    with rasterio.open(tif, "w", driver="GTiff", width=data.shape[2], height=data.shape[1], count=data.shape[0],
                       dtype=data.dtype, crs="EPSG:4326", transform=transform, nodata=nodata) as dst:
        dst.write(data)
        steps = list(range(0, 30 * data.shape[0], 30))
        dst.update_tags(NETCDF_DIM_EXTRA="{time}", NETCDF_DIM_time_DEF=f"{{{len(steps)},6}}",
                        NETCDF_DIM_time_VALUES="{" + ",".join(map(str, steps)) + "}")
        for b, t in enumerate(steps, 1):
            dst.update_tags(b, NETCDF_VARNAME="tas", NETCDF_DIM_time=str(t))
    nc = os.path.join(folder, "climate.nc")
    rasterio.shutil.copy(tif, nc, driver="netCDF", FORMAT="NC4")
    os.remove(tif)
    return nc


def _months(height=90, width=120):
    data = np.stack([smooth_field(height, width, seed=s) + 100 * s for s in range(3)]).astype("float32")
    data[:, 10:20, 30:50] = -999.0
    return data


LONLAT = Affine(0.01, 0, 10.0, 0, -0.01, 47.0)


@pytest.mark.parametrize("band", [1, 3])
def test_a_netcdf_subdataset_band_is_one_time_step(tmp_path, monkeypatch, record, band):
    monkeypatch.chdir(tmp_path)
    data = _months()
    nc = _netcdf_with_time(tmp_path, data, LONLAT, -999.0)
    # GDAL's warper: this test compares with GDAL's whole-image warp of the time step.
    config = config_for(f'NETCDF:"{nc}":tas', "average", "EPSG:32632", 2000, tile_size=32, band=band, engine="gdal")
    plan, result = mosaic_of(tmp_path, config, "nc")
    assert plan.datasets["dem"].header.driver == "netCDF"
    single = write_raster(tmp_path / "step.tif", data[band - 1], "EPSG:4326", LONLAT, -999.0)
    _, expected = mosaic_of(tmp_path, config_for(single, "average", "EPSG:32632", 2000, tile_size=32,
                                                 engine="gdal"), "tif")
    assert np.array_equal(result, expected)
    ref = reference_for(plan, "dem")
    cmp = compare(result, ref.data, ref.nodata)
    record(cmp.row(f"NetCDF tas band {band} vs GDAL"))
    assert cmp.compared > 100 and cmp.nodata_mismatch == 0 and cmp.max_abs_diff < 0.05
    # The month chosen is the one resampled: another band's values are 100 apart.
    assert abs(np.nanmean(np.where(result == -999, np.nan, result)) - np.nanmean(
        np.where(data[band - 1] == -999, np.nan, data[band - 1]))) < 5


def test_a_zarr_array(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = _months()
    store = tmp_path / "climate.zarr"
    with rasterio.open(store, "w", driver="Zarr", width=120, height=90, count=3, dtype="float32",
                       transform=LONLAT, INTERLEAVE="BAND", BLOCKSIZE="1,30,40") as dst:
        dst.write(data)
    # GDAL's Zarr driver reads the CRS from the array's _CRS attribute (its documented convention).
    attrs = store / "climate" / ".zattrs"
    meta = json.loads(attrs.read_text())
    meta["_CRS"] = {"url": "http://www.opengis.net/def/crs/EPSG/0/4326"}
    attrs.write_text(json.dumps(meta))
    (store / ".zmetadata").unlink()  # consolidated metadata would hide the new attribute
    config = config_for(f'ZARR:"{store}":/climate', "average", "EPSG:32632", 2000, tile_size=32, band=2,
                        nodata=-999)
    plan, result = mosaic_of(tmp_path, config, "zarr")
    single = write_raster(tmp_path / "step.tif", data[1], "EPSG:4326", LONLAT, -999.0)
    _, expected = mosaic_of(tmp_path, config_for(single, "average", "EPSG:32632", 2000, tile_size=32), "tif")
    assert np.array_equal(result, expected)
    # The store is a folder: a changed chunk file changes its stamp, so the plan is made again.
    from workflow_lib.sources.paths import stamp
    before = stamp(config["datasets"]["dem"]["path"])
    os.utime(store / ".zgroup", ns=(1, before[1] + 10**9))
    assert stamp(config["datasets"]["dem"]["path"]) != before


def test_hdf5_without_georeferencing_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    nc = _netcdf_with_time(tmp_path, _months(), LONLAT, -999.0)
    # GDAL's HDF5 driver reads the same NetCDF-4 file as plain HDF5, without its CF georeferencing:
    # docs/configuration.md says to open such files with NETCDF: instead.
    with pytest.raises(InputRasterError, match=r"dataset 'dem' \(HDF5:.*climate\.nc.*\): the raster is "
                                               r"georeferenced by no geotransform"):
        build_plan(validate_config(config_for(f'HDF5:"{nc}"://tas', "average", "EPSG:32632", 2000)))
    with pytest.raises(ConfigError, match=r"file not found: .*missing\.nc \(dataset 'dem'\)"):
        validate_config(config_for('NETCDF:"missing.nc":tas'))


def _limit_open_files():
    import resource
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))


@pytest.mark.integration
def test_500_files_end_to_end_with_at_most_256_open_files(tmp_path, record):
    """Snakemake on a dataset of 500 files, every process (Snakemake and its jobs) limited to 256
    open files: the mosaic is exactly the workflow's result on one file of the same pixels."""
    import time

    paths, _ = write_members(tmp_path / "srtm", rows=20, cols=25, size=40, overlap=2)
    assert len(paths) == 500
    write_config(tmp_path, config_for("srtm/*.tif", tile_size=48))
    snakemake(tmp_path, "-n", "--cores", "2")
    started = time.monotonic()
    snakemake(tmp_path, "--cores", "2", "--resources", "mem_mb=2000", preexec_fn=_limit_open_files)
    seconds = time.monotonic() - started
    result = read_band(tmp_path / "results" / "mosaics" / "dem.tif")
    os.makedirs(tmp_path / "one")
    single = single_file(tmp_path / "one", paths)
    _, expected = mosaic_of(tmp_path / "one", config_for(single, tile_size=48), "lib")
    assert np.array_equal(result, expected)
    record(f"500 files end to end under 256 open files: {seconds:.1f} s, mosaic {result.shape}, equal to one file")


@pytest.mark.integration
def test_files_in_two_utm_zones_end_to_end(tmp_path):
    """The batch jobs make the same tiles from parts as the library does, and Snakemake tracks
    every part's file: a dry run after touching one lists the dataset's jobs again."""
    from rasterio.warp import transform as move

    (x33,), (y33,) = move("EPSG:32632", "EPSG:32633", [709000.0], [5198000.0])
    os.makedirs(tmp_path / "parts")
    for k, (name, crs, x, y) in enumerate([("a", "EPSG:32632", 700000.0, 5200000.0),
                                           ("b", "EPSG:32633", round(x33, -1), round(y33, -1))]):
        write_raster(tmp_path / "parts" / f"{name}.tif", smooth_field(300, 360, seed=k) + 50 * k, crs,
                     Affine(30, 0, x, 0, -30, y), NODATA)
    config = config_for(str(tmp_path / "parts" / "*.tif"), "average", "EPSG:3035", 100, tile_size=48)
    write_config(tmp_path / "run", config)
    snakemake(tmp_path / "run", "--cores", "2", "--resources", "mem_mb=2000")
    _, expected = mosaic_of(tmp_path, config, "lib")
    assert np.array_equal(read_band(tmp_path / "run" / "results" / "mosaics" / "dem.tif"), expected)
    again = snakemake(tmp_path / "run", "-n", "--cores", "2", "--resources", "mem_mb=2000")
    assert "Nothing to be done" in again.stdout + again.stderr
    os.utime(tmp_path / "parts" / "b.tif")  # the second part's file: newer than the outputs
    again = snakemake(tmp_path / "run", "-n", "--cores", "2", "--resources", "mem_mb=2000")
    assert "register_dataset" in again.stdout and "resample_batch" in again.stdout, again.stdout


def _three_bands(path, descriptions=("elevation", None, None)):
    data = np.stack([smooth_field(300, 400, seed=20 + b) + 1000 * b for b in range(3)]).astype("float32")
    data[:, 50:80, 100:150] = NODATA
    with rasterio.open(path, "w", driver="GTiff", width=400, height=300, count=3, dtype="float32",
                       crs="EPSG:32633", transform=ORIGIN, nodata=NODATA, tiled=True, blockxsize=128,
                       blockysize=128, interleave="pixel") as dst:
        dst.write(data)
        for b, d in enumerate(descriptions, 1):
            if d:
                dst.set_band_description(b, d)
    return str(path)


@pytest.mark.parametrize("method, crs, resolution", [("average", "EPSG:32633", 120), ("bilinear", "EPSG:4326", 0.001)])
def test_several_bands_make_one_multiband_mosaic_and_stack(tmp_path, monkeypatch, method, crs, resolution):
    from workflow_lib.mosaics.mosaic import StackLayer, write_mosaic, write_stack

    monkeypatch.chdir(tmp_path)
    path = _three_bands(tmp_path / "three.tif")
    plan, mosaics = run_tiles_and_mosaics(config_for(path, method, crs, resolution, tile_size=48, bands=[1, 3]),
                                          tmp_path / "multi")
    d = plan.datasets["dem"]
    assert d.settings.bands == (1, 3) and d.band_names == ("elevation", "dem_b3")
    with rasterio.open(mosaics["dem"]) as src:
        assert src.count == 2 and src.descriptions == ("elevation", "dem_b3")
        multi = src.read()
    for i, band in enumerate((1, 3)):
        _, single = mosaic_of(tmp_path, config_for(path, method, crs, resolution, tile_size=48, band=band), f"b{band}")
        assert np.array_equal(multi[i], single)
    # Through the mosaic's hierarchical VRTs (many tiles) too: each band from its own tiles' band.
    tiles = sorted(glob.glob(str(tmp_path / "multi" / "tiles" / "dem" / "*.tif")))
    grouped = str(tmp_path / "grouped.tif")
    write_mosaic("dem", d.settings, plan.grid, tiles, grouped, mem_mb=400, group_tiles=4, band_names=d.band_names)
    with rasterio.open(grouped) as src:
        assert np.array_equal(src.read(), multi)
    # The stack, from the tiles: one band per band of the dataset, named as in its mosaic, then the
    # next dataset; the pixels and band metadata of the mosaics.
    other_plan, other = run_tiles_and_mosaics(config_for(path, method, crs, resolution, tile_size=48, band=2),
                                              tmp_path / "o")
    other_tiles = tuple(sorted(glob.glob(str(tmp_path / "o" / "tiles" / "dem" / "*.tif"))))
    stack = str(tmp_path / "stack.tif")
    write_stack([StackLayer("dem", d.settings, tuple(tiles), d.band_names),
                 StackLayer("second", other_plan.datasets["dem"].settings, other_tiles)], plan.grid, stack, mem_mb=400)
    with rasterio.open(stack) as src, rasterio.open(mosaics["dem"]) as mosaic:
        assert src.count == 3 and src.descriptions == ("elevation", "dem_b3", "second")
        assert np.array_equal(src.read(1), multi[0]) and np.array_equal(src.read(2), multi[1])
        assert np.array_equal(src.read(3), read_band(other["dem"]))
        assert src.tags(1) == mosaic.tags(1) == {"method": method} and src.tags(3) == {"method": method}


def test_all_bands_of_a_netcdf_variable_and_band_errors(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = _months()
    nc = _netcdf_with_time(tmp_path, data, LONLAT, -999.0)
    config = config_for(f'NETCDF:"{nc}":tas', "average", "EPSG:32632", 2000, tile_size=32, bands="all")
    plan, result = run_tiles_and_mosaics(config, tmp_path / "all")
    assert plan.datasets["dem"].settings.bands == (1, 2, 3)
    with rasterio.open(result["dem"]) as src:
        assert src.count == 3
        every = src.read()
    _, second = mosaic_of(tmp_path, config_for(f'NETCDF:"{nc}":tas', "average", "EPSG:32632", 2000, tile_size=32,
                                               band=2), "second")
    assert np.array_equal(every[1], second)
    path = _three_bands(tmp_path / "three.tif")
    with pytest.raises(InputRasterError, match=r"dataset 'dem' \(.*three\.tif\): band 5 requested but the file has 3"):
        build_plan(validate_config(config_for(path, bands=[1, 5])))
    for band in (1, 2):  # band 1 is the default, but written next to bands it says two things
        with pytest.raises(ConfigError, match=rf"datasets\.dem: both band \({band}\) and bands \(\[1, 3\]\) are given"):
            build_plan(validate_config(config_for(path, band=band, bands=[1, 3])))


@pytest.mark.integration
def test_several_bands_end_to_end_into_the_stack(tmp_path):
    path = _three_bands(tmp_path / "three.tif", descriptions=("jan", "feb", "mar"))
    config = config_for(path, "average", tile_size=48, bands="all")
    config["datasets"]["second"] = {"path": path, "method": "average", "band": 2}
    write_config(tmp_path / "run", config)
    snakemake(tmp_path / "run", "--cores", "2", "--resources", "mem_mb=2000")
    with rasterio.open(tmp_path / "run" / "results" / "stack.tif") as src:
        assert src.count == 4 and src.descriptions == ("jan", "feb", "mar", "second")
        assert np.array_equal(src.read(2), src.read(4))  # band 2 of the first, and the second dataset
    with rasterio.open(tmp_path / "run" / "results" / "mosaics" / "dem.tif") as src:
        assert src.count == 3 and src.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
