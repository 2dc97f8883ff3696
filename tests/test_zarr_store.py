"""The Zarr stack (mosaics.zarr_store), without Snakemake: each array equals its dataset's mosaic as
xarray (with rioxarray) reads it back, with the grid's CRS and transform; chunks are tiles; a changed
dataset loses its own chunks and no other's. (GDAL reads Zarr v3's final codecs from 3.11 on;
rasterio 1.4's wheels carry 3.10, so GDAL is not asked here.)"""

import dataclasses
import json
import os
import subprocess
import sys
import warnings

import numpy as np
import pandas as pd
import pytest
import rasterio

from .helpers import (level_reference, read_band, run_tiles_and_mosaics, snakemake, synthetic_config,
                      write_config, zarr_digest)
from workflow_lib.domain import (OutputFormat, chunk_path, manifest_path, tile_dir, tiles_without_chunks,
                                 zarr_store_path)
from workflow_lib.engines.batch import forget_incomplete_batches
from workflow_lib.mosaics.zarr_store import ChunkWriter, ShardWriter, finish_store, prepare_array
from workflow_lib.planning.batches import make_batches, shard_index
from workflow_lib.planning.plan import Plan

xr = pytest.importorskip("xarray")
pytest.importorskip("rioxarray")


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """The synthetic datasets (float with NaN and nodata, classes, int16 made float32) and class
    fractions (several bands), as tiles and mosaics, and every tile copied into the store."""
    folder = tmp_path_factory.mktemp("zarr")
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        config = synthetic_config(folder)
        config["datasets"]["shares"] = {"path": config["datasets"]["landcover"]["path"], "method": "fractions",
                                        "classes": {1: "water", 2: "forest", 3: "crops"}}
        plan, mosaics = run_tiles_and_mosaics(config, folder)
        store = str(folder / "stack.zarr")
        for dataset in plan.datasets.values():
            assert prepare_array(store, plan.grid, dataset)
            writer = ChunkWriter(store, plan.grid, dataset, str(folder / "tiles" / dataset.name))
            for index in dataset.tiles:
                writer.write(index)
        assert finish_store(store, plan.grid, list(plan.datasets)) == []
    finally:
        os.chdir(cwd)
    return plan, mosaics, store


def test_each_array_is_its_mosaic_with_the_grids_crs_and_transform(made):
    plan, mosaics, store = made
    ds = xr.open_zarr(store)  # consolidated metadata: no warning, one read
    assert set(plan.datasets) <= set(ds.data_vars)
    assert ds.rio.crs == plan.grid.crs
    for name, dataset in plan.datasets.items():
        var = ds[name]
        assert var.rio.crs == plan.grid.crs, name
        assert var.rio.transform() == plan.grid.transform, name
        with rasterio.open(mosaics[name]) as src:
            expected = src.read().astype("float64")
            nodata = src.nodata
        expected[expected == nodata] = np.nan  # xarray masks the fill value (_FillValue) as missing
        got = var.values.astype("float64")
        got = got if got.ndim == 3 else got[np.newaxis]
        assert got.shape == expected.shape, name
        assert np.array_equal(got, expected, equal_nan=True), name
        assert np.isnan(expected).any() and not np.isnan(expected).all(), name
    # A dataset of several bands: its own band dimension, labelled with the mosaic's band names.
    assert ds["shares"].dims == ("shares_band", "y", "x")
    assert list(ds["shares_band"].values) == list(plan.datasets["shares"].band_names) == ["water", "forest", "crops"]
    # Pixel centres, as GDAL's transform puts them.
    t = plan.grid.transform
    assert ds.x.values[0] == t.c + 0.5 * t.a and ds.y.values[-1] == t.f + (plan.grid.height - 0.5) * t.e
    # GeoZarr's attributes on the root.
    assert ds.attrs["spatial:transform"] == list(t)[:6]
    assert ds.attrs["spatial:shape"] == [plan.grid.height, plan.grid.width]


def test_chunks_are_tiles_and_a_changed_dataset_loses_only_its_own(made, tmp_path):
    plan, mosaics, store = made
    dem, landcover = plan.datasets["dem"], plan.datasets["landcover"]
    assert tiles_without_chunks(store, "dem", False, dem.tiles) == []
    files = sorted(f for _, _, fs in os.walk(os.path.join(store, "dem", "c")) for f in fs)
    assert len(files) == dem.tile_count  # one file per tile, no temporaries left
    # The same spec again: the array and its chunks stay.
    assert not prepare_array(store, plan.grid, dem)
    assert tiles_without_chunks(store, "dem", False, dem.tiles) == []
    # Another data type (its tiles' digest changes too): this array starts again, the others stay.
    import dataclasses
    changed = dataclasses.replace(dem, settings=dataclasses.replace(dem.settings, dst_dtype="float64"))
    assert prepare_array(store, plan.grid, changed)
    assert tiles_without_chunks(store, "dem", False, changed.tiles) == list(changed.tiles)
    assert tiles_without_chunks(store, "landcover", False, landcover.tiles) == []
    assert os.path.exists(chunk_path(store, "landcover", landcover.tiles[0], False))
    assert os.path.exists(chunk_path(store, "shares", plan.datasets["shares"].tiles[0], True))
    # A tile of nodata only is a chunk too (zarr-python would skip it): its presence says the tile is done.
    empty = str(tmp_path / "empty.tif")
    first = landcover.tiles[0]
    with rasterio.open(first.path(os.path.join(os.path.dirname(store), "tiles", "landcover"))) as src:
        profile = src.profile
        with rasterio.open(empty, "w", **profile) as dst:
            dst.write(np.full((src.count, src.height, src.width), src.nodata, dtype=src.dtypes[0]))
    os.unlink(chunk_path(store, "landcover", first, False))
    writer = ChunkWriter(store, plan.grid, landcover, os.path.join(os.path.dirname(store), "tiles", "landcover"))
    with rasterio.open(empty) as src:
        writer.write(first, src.read())
    assert tiles_without_chunks(store, "landcover", False, landcover.tiles) == []
    # A chunk writer killed while it rewrote a chunk that was there: its temporary file makes the
    # tile's chunks count as missing, and writing them again removes it.
    leftover = chunk_path(store, "landcover", first, False) + ".partial"
    with open(leftover, "wb") as f:
        f.write(b"half a chunk")
    assert tiles_without_chunks(store, "landcover", False, landcover.tiles) == [first]
    writer.write(first)
    assert not os.path.exists(leftover)
    assert tiles_without_chunks(store, "landcover", False, landcover.tiles) == []
    # Put it back for the other tests of this module.
    assert prepare_array(store, plan.grid, dem)
    writer = ChunkWriter(store, plan.grid, dem, os.path.join(os.path.dirname(store), "tiles", "dem"))
    for index in dem.tiles:
        writer.write(index)
    finish_store(store, plan.grid, list(plan.datasets))
    assert np.array_equal(xr.open_zarr(store)["dem"].values, np.where(
        read_band(mosaics["dem"]) == -9999, np.nan, read_band(mosaics["dem"])), equal_nan=True)


def test_a_batch_job_refuses_an_array_it_would_not_encode_as_its_metadata_says(made, tmp_path):
    """The batch job encodes chunks itself (as zarr-python would): an array whose zarr.json says
    another codec or a fill value it cannot read (made by another tool or version) gets a one-line
    error naming the array, and no chunk is written into it."""
    import shutil

    from workflow_lib.errors import OutputWriteError

    plan, _, store = made
    copy = str(tmp_path / "copy.zarr")
    shutil.copytree(store, copy)
    dem = plan.datasets["dem"]
    meta_path = os.path.join(copy, "dem", "zarr.json")
    with open(meta_path) as f:
        original = json.load(f)
    for change, words in ((lambda m: m["codecs"][1]["configuration"].update(level=3), "codecs"),
                          (lambda m: m.update(fill_value="0x7fc00000"), "fill value")):
        meta = json.loads(json.dumps(original))
        change(meta)
        with open(meta_path, "w") as f:
            json.dump(meta, f)
        with pytest.raises(OutputWriteError) as error:
            ChunkWriter(copy, plan.grid, dem, str(tmp_path / "tiles"))
        assert os.path.join(copy, "dem") in str(error.value) and words in str(error.value)
        assert "\n" not in str(error.value)


def test_arrays_of_datasets_no_longer_in_the_run_are_removed(made, tmp_path):
    plan, _, store = made
    import shutil
    copy = str(tmp_path / "copy.zarr")
    shutil.copytree(store, copy)
    assert finish_store(copy, plan.grid, ["dem"]) == ["landcover", "shares", "shares_band", "temperature"]
    assert set(xr.open_zarr(copy).data_vars) == {"dem"}


def mosaic_as_xarray_reads_it(path) -> np.ndarray:
    with rasterio.open(path) as src:
        data = src.read().astype("float64")
        data[data == src.nodata] = np.nan
    return data


@pytest.mark.integration
def test_a_run_writes_the_store_and_with_zarr_alone_makes_no_mosaic(tmp_path, uninterrupted_run):
    """The shared uninterrupted run (both formats, written by batches of 6 tiles of 16 px): each
    array is its dataset's mosaic. The same config with ``formats: [zarr]``: the same arrays,
    statistics and quicklooks, no GeoTIFF mosaic or stack but a VRT of each mosaic; with ``table:
    parquet``, the per-cell table, each column its mosaic."""
    ref = uninterrupted_run.workdir / "results"
    ds = xr.open_zarr(ref / "stack.zarr")
    mosaics = sorted(p[:-4] for p in os.listdir(ref / "mosaics"))
    assert mosaics and set(mosaics) <= set(ds.data_vars)
    for name in mosaics:
        got = ds[name].values.astype("float64")
        assert np.array_equal(got[np.newaxis] if got.ndim == 2 else got,
                              mosaic_as_xarray_reads_it(ref / "mosaics" / f"{name}.tif"), equal_nan=True), name
    # In larger tiles than the reference (fewer jobs): the same values, tiling changes none.
    write_config(tmp_path, {**synthetic_config(tmp_path), "output": {"formats": ["zarr"], "table": "parquet"}})
    run = snakemake(tmp_path, "--cores", "2", "--resources", "mem_mb=2000")
    out = tmp_path / "results"
    assert not list((out / "mosaics").glob("*.tif")) and not (out / "stack.tif").exists()
    # For GIS software, each mosaic as a VRT over the tiles, paths relative to it: it moves with results/.
    os.rename(out, tmp_path / "moved")
    for name in mosaics:
        assert np.array_equal(mosaic_as_xarray_reads_it(tmp_path / "moved" / "mosaics" / f"{name}.vrt"),
                              mosaic_as_xarray_reads_it(ref / "mosaics" / f"{name}.tif"), equal_nan=True), name
    os.rename(tmp_path / "moved", out)
    assert "rule mosaic" not in run.stdout + run.stderr
    assert zarr_digest(out / "stack.zarr") == zarr_digest(ref / "stack.zarr")
    for name in mosaics:
        with open(out / "statistics" / f"{name}.json") as a, open(ref / "statistics" / f"{name}.json") as b:
            # Sums of the tiles' figures, merged as tiles finish: equal to the last bits.
            got, want = json.load(a), json.load(b)
            assert got.keys() == want.keys() and got["histogram"] == want["histogram"], name
            assert all(got[k] == pytest.approx(want[k], rel=1e-12)
                       for k in ("valid_pixels", "min", "max", "mean", "std")), name
        assert (out / "report" / "quicklooks" / f"{name}.png").stat().st_size > 1000
    # The per-cell table (output.table), from the tiles, no mosaic needed: each column is its mosaic.
    table = pd.read_parquet(out / "table")
    assert len(table) and not table.duplicated(["row", "col"]).any()
    for name in mosaics:
        want = mosaic_as_xarray_reads_it(ref / "mosaics" / f"{name}.tif")[0]
        got = np.full(want.shape, np.nan)
        got[table.row, table["col"]] = table[name].astype("float64")
        assert np.array_equal(got, want, equal_nan=True), name
    with open(out / "stac" / "collection.json") as f:
        assert json.load(f)["assets"]["table"]["href"] == "../table"
    # Each item's data assets: its array in the store and its VRT (no COG), with the VRT's size.
    for name in mosaics:
        with open(out / "stac" / name / f"{name}.json") as f:
            assets = json.load(f)["assets"]
        assert "cog" not in assets and {"zarr", "vrt"} <= set(assets), assets
        assert assets["vrt"]["href"] == f"../../mosaics/{name}.vrt"
        assert assets["vrt"]["file:size"] == os.path.getsize(out / "mosaics" / f"{name}.vrt")
    status = subprocess.run([sys.executable, "-m", "workflow_lib", "status"], cwd=tmp_path, capture_output=True,
                            text=True)
    assert "complete" in status.stdout, status.stdout


def test_another_grid_replaces_every_array_and_the_coordinates(made, tmp_path):
    """A config on another grid (here, pixels twice as large): every array starts again, and the
    coordinates and the root's attributes are those of the new grid once the store is finished."""
    import dataclasses
    import shutil

    from affine import Affine

    plan, _, store = made
    copy = str(tmp_path / "copy.zarr")
    shutil.copytree(store, copy)
    g = plan.grid
    coarse = dataclasses.replace(g, transform=g.transform @ Affine.scale(2), width=g.width // 2,
                                 height=g.height // 2)
    for dataset in plan.datasets.values():
        assert prepare_array(copy, coarse, dataset)
    os.unlink(os.path.join(copy, "zarr.json"))  # rule zarr_store's output: Snakemake removes it first
    finish_store(copy, coarse, list(plan.datasets))
    ds = xr.open_zarr(copy)
    assert ds.sizes["x"] == coarse.width and ds.sizes["y"] == coarse.height
    assert ds.rio.transform() == coarse.transform and ds["dem"].rio.transform() == coarse.transform
    assert ds.attrs["spatial:shape"] == [coarse.height, coarse.width]
    assert bool(ds["dem"].isnull().all())  # no chunk of the old grid survives



def sharded(dataset, shard):
    """The dataset as a job sees it (no batches), its array sharded by ``shard`` tiles."""
    return dataclasses.replace(dataset, batches=(), tile_count=dataset.tile_count, shard=shard)


def test_a_sharded_array_holds_one_file_per_batch_and_reads_as_its_mosaic(made, tmp_path):
    """A dataset of many tiles (planning.batches.SHARD_MIN_TILES) gets one shard per batch: here
    batches of 2 tiles, forced on the small grid. Each shard is written by ShardWriter (the
    tiles in any order, most as kept tiles) and read back by zarr-python and xarray, the reference
    of the format: each array equals its mosaic, with and without bands, edge tiles included. A
    batch that did not complete leaves no shard and no temporary file."""
    plan, mosaics, made_store = made
    store = str(tmp_path / "stack.zarr")
    for name in ("dem", "shares"):
        batches = make_batches(list(plan.datasets[name].tiles), plan.grid.tile_rows, plan.grid.tile_cols, 2)
        shard = (max(b.rows[1] - b.rows[0] for b in batches), max(b.cols[1] - b.cols[0] for b in batches))
        # Several shards, some cut by the grid's edge.
        assert len(batches) > 2 and any((b.rows[1] - b.rows[0], b.cols[1] - b.cols[0]) != shard for b in batches)
        dataset = sharded(plan.datasets[name], shard)
        assert prepare_array(store, plan.grid, dataset)
        folder = os.path.join(os.path.dirname(made_store), "tiles", name)
        for b in batches:
            writer = ShardWriter(store, plan.grid, dataset, folder, b.id)
            tiles = list(reversed(b.tiles))
            writer.write(tiles[0])
            assert writer.fill_missing(tiles) == tiles[1:]
            writer.close(True)
            assert os.path.isfile(chunk_path(store, name, shard_index(b.id, shard), name == "shares"))
        files = [f for _, _, names in os.walk(os.path.join(store, name, "c")) for f in names]
        assert len(files) == len(batches), files  # one file per batch, none per tile
        # A batch paused or failed: its shard is not replaced, nothing is left beside it.
        writer = ShardWriter(store, plan.grid, dataset, folder, batches[0].id)
        writer.write(batches[0].tiles[0])
        writer.close(False)
        assert sorted(f for _, _, names in os.walk(os.path.join(store, name, "c")) for f in names) == sorted(files)
    assert finish_store(store, plan.grid, ["dem", "shares"]) == []
    ds = xr.open_zarr(store)
    for name in ("dem", "shares"):
        got = ds[name].values.astype("float64")
        got = got if got.ndim == 3 else got[np.newaxis]
        with rasterio.open(mosaics[name]) as src:
            expected = src.read().astype("float64")
            expected[expected == src.nodata] = np.nan
        assert np.array_equal(got, expected, equal_nan=True), name


def test_a_missing_shard_reopens_its_batch(made, tmp_path, monkeypatch):
    """forget_incomplete_batches with a sharded array: a batch whose shard file is missing loses
    its manifest (it runs again and writes the shard whole); one whose shard is there keeps it."""
    from workflow_lib.planning import batches as planning_batches

    plan, _, _ = made
    monkeypatch.setattr(planning_batches, "SHARD_MIN_TILES", 0)
    dem = plan.datasets["dem"]
    cut = make_batches(list(dem.tiles), plan.grid.tile_rows, plan.grid.tile_cols, 2)
    dataset = dataclasses.replace(dem, batches=tuple(cut), tile_count=-1)
    assert dataset.shard == (1, 2) and len(cut) > 2
    small = Plan(plan.grid, {"dem": dataset}, (OutputFormat.ZARR,))
    results = tmp_path / "results"
    for b in cut:
        (results / "manifests").mkdir(parents=True, exist_ok=True)
        manifest = manifest_path("dem", b.id, str(results))
        os.makedirs(os.path.dirname(manifest), exist_ok=True)
        open(manifest, "w").close()
        for index in b.tiles:
            path = index.path(tile_dir("dem", str(results)))
            os.makedirs(os.path.dirname(path), exist_ok=True)
            open(path, "w").close()
    store = zarr_store_path(str(results))
    first = chunk_path(store, "dem", shard_index(cut[0].id, dataset.shard), False)
    os.makedirs(os.path.dirname(first), exist_ok=True)
    open(first, "w").close()
    removed = forget_incomplete_batches(small, str(results))
    assert sorted(removed) == sorted(manifest_path("dem", b.id, str(results)) for b in cut[1:])


def test_overview_levels_are_block_reductions_of_the_full_resolution(tmp_path, monkeypatch):
    """A grid large enough for overview levels (461 x 440 pixels, tiles of 64: factors 2 and 4):
    each tile's part of level 2 (chunks of 32 pixels) is written with its chunk, level 4 (whose
    chunks would be 16 pixels) is made from level 2 and its counts at the end. Each level, opened
    by xarray as a group of its own (consolidated, no warning), has the grid's CRS, its own
    transform, and equals the NumPy reduction of the mosaic's full-resolution pixels (a block
    mean, or a block's centre pixel for classes), edge blocks and every band included. The root
    lists the levels (GeoZarr multiscales); a missing part of a level reopens its tile; the
    quicklook reads the coarsest level that is large enough."""
    os.chdir(tmp_path)
    config = synthetic_config(tmp_path)
    config["target"]["resolution"] = 10
    config["tile_size"] = 64
    config["datasets"]["shares"] = {"path": config["datasets"]["landcover"]["path"], "method": "fractions",
                                    "classes": {1: "water", 2: "forest", 3: "crops"}}
    plan, mosaics = run_tiles_and_mosaics(config, tmp_path)
    grid = plan.grid
    assert grid.overview_factors() == (2, 4) and grid.tile_level_factors() == (2,), (grid.width, grid.height)
    store = str(tmp_path / "stack.zarr")
    for dataset in plan.datasets.values():
        assert prepare_array(store, grid, dataset)
        assert not prepare_array(store, grid, dataset)  # the same spec: all kept
        writer = ChunkWriter(store, grid, dataset, str(tmp_path / "tiles" / dataset.name))
        assert writer.fill_missing(dataset.tiles) == list(dataset.tiles)
    assert finish_store(store, grid, list(plan.datasets)) == []
    root = xr.open_zarr(store)
    # As GDAL 3.13 writes it: one of the root's arrays first (the full resolution), then each level.
    layout = root.attrs["multiscales"]["layout"]
    assert [(e["asset"], e.get("derived_from"), e["transform"]["scale"]) for e in layout] == [
        ("dem", None, [1.0, 1.0]), ("overviews/2", "dem", [2.0, 2.0]), ("overviews/4", "dem", [4.0, 4.0])]
    assert root.attrs["zarr_conventions"][0]["name"] == "multiscales"
    assert "overviews" not in root.data_vars
    for f in (2, 4):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # each level has its consolidated metadata
            level = xr.open_zarr(store, group=f"overviews/{f}")
        assert level.rio.crs == grid.crs
        assert level.attrs["spatial:shape"] == [-(-grid.height // f), -(-grid.width // f)]
        for name, dataset in plan.datasets.items():
            var = level[name]
            assert var.rio.transform() == grid.transform @ grid.transform.scale(f), name
            got = var.values.astype("float64")
            got = got if got.ndim == 3 else got[np.newaxis]
            expected = level_reference(mosaics[name], f, dataset.settings.method.is_categorical,
                                       base=2 if f == 4 else None)
            assert got.shape == expected.shape, name
            assert np.array_equal(np.isnan(got), np.isnan(expected)), (name, f)
            assert np.allclose(got, expected, rtol=1e-6, atol=0, equal_nan=True), (name, f)
            assert np.isnan(expected).any() and not np.isnan(expected).all(), name
        assert list(level["shares_band"].values) == ["water", "forest", "crops"]
    # A tile whose part of a level is missing (a run killed between the two writes is not: the
    # full-resolution chunk is written last) is made again.
    dem = plan.datasets["dem"]
    tile = dem.tiles[-1]
    assert dem.level_arrays(grid) == ("overviews/2/dem", "overviews/counts/dem")
    for part in dem.level_arrays(grid):
        os.unlink(chunk_path(store, part, tile, False))
        assert tiles_without_chunks(store, "dem", False, dem.tiles) == []
        assert tiles_without_chunks(store, "dem", False, dem.tiles, dem.level_arrays(grid)) == [tile]
        writer = ChunkWriter(store, grid, dem, str(tmp_path / "tiles" / "dem"))
        assert writer.fill_missing(dem.tiles) == [tile]
        assert tiles_without_chunks(store, "dem", False, dem.tiles, dem.level_arrays(grid)) == []
    # The same levels from sharded arrays (batches of 2 x 2 tiles, a shard per batch and level,
    # written in any order), bit for bit.
    sharded_store = str(tmp_path / "sharded.zarr")
    for name, dataset in plan.datasets.items():
        cut = make_batches(list(dataset.tiles), grid.tile_rows, grid.tile_cols, 4)
        shard = (max(b.rows[1] - b.rows[0] for b in cut), max(b.cols[1] - b.cols[0] for b in cut))
        dataset = sharded(dataset, shard)
        assert prepare_array(sharded_store, grid, dataset)
        for b in cut:
            writer = ShardWriter(sharded_store, grid, dataset, str(tmp_path / "tiles" / name), b.id)
            tiles = list(reversed(b.tiles))
            writer.write(tiles[0])
            writer.fill_missing(tiles)
            writer.close(True)
        files = [f for _, _, names in os.walk(os.path.join(sharded_store, "overviews", "2", name)) for f in names]
        assert len(files) == len(cut) + 1, (name, files)  # a shard per batch, and zarr.json
    assert finish_store(sharded_store, grid, list(plan.datasets)) == []
    # Level 4 was made from level 2 read shard by shard (not through zarr-python: zarr_store._ChunkRows).
    import zarr
    from workflow_lib.mosaics.zarr_store import _ChunkRows

    assert _ChunkRows(zarr.open_array(os.path.join(sharded_store, "overviews/2/shares")), "").sharded
    for group in ("overviews/2", "overviews/4"):
        assert xr.open_zarr(sharded_store, group=group).equals(xr.open_zarr(store, group=group)), group
    # Levels down to 16 pixels (factors 4 to 32, each made from the one before in sums and counts,
    # in strips whose rows do not pair up): the same block reductions of the full resolution.
    from workflow_lib.planning import grid as grid_module

    monkeypatch.setattr(grid_module, "LEVEL_MIN_SIDE", 16)
    assert grid.overview_factors() == (2, 4, 8, 16, 32) and grid.tile_level_factors() == (2,)
    finish_store(store, grid, list(plan.datasets))
    assert [e["asset"] for e in xr.open_zarr(store).attrs["multiscales"]["layout"]][-1] == "overviews/32"
    for f in (8, 16, 32):
        level = xr.open_zarr(store, group=f"overviews/{f}")
        for name, dataset in plan.datasets.items():
            got = level[name].values.astype("float64")
            got = got if got.ndim == 3 else got[np.newaxis]
            expected = level_reference(mosaics[name], f, dataset.settings.method.is_categorical, base=2)
            assert got.shape == expected.shape and np.allclose(got, expected, rtol=1e-6, atol=0, equal_nan=True), \
                (name, f)
    monkeypatch.undo()
    assert finish_store(store, grid, list(plan.datasets)) == ["overviews/16", "overviews/32", "overviews/8"]
    # The quicklook reads the coarsest level at least as large as it, whole where it fits.
    from workflow_lib.mosaics.zarr_store import zarr_quicklook

    side = max(grid.width, grid.height)
    for longest, factor in ((-(-side // 4), 4.0), (-(-side // 2), 2.0), (-(-side // 2) - 1, 4.0), (side, 1.0)):
        data, got_factor = zarr_quicklook(os.path.join(store, "dem"), longest)
        assert got_factor == factor and max(data.shape) <= longest, (longest, got_factor, data.shape)


def _make_groups(store, grid, barrier):
    from workflow_lib.mosaics.zarr_store import ensure_store

    barrier.wait()
    ensure_store(store, grid)


def test_register_jobs_making_the_stores_groups_at_once_all_succeed(tmp_path):
    """The register jobs of several datasets make the root and every overview level's group at
    the same moment: none fails because another made a group first (zarr-python's ContainsGroupError
    between its look and its write; 13 of 60 such processes failed before), and the groups are
    whole."""
    import multiprocessing

    from affine import Affine
    from rasterio.crs import CRS
    from workflow_lib.planning.grid import TargetGrid

    grid = TargetGrid(CRS.from_epsg(3035), Affine(10, 0, 0, 0, -10, 0), 4000, 3000, 256)
    context = multiprocessing.get_context("fork")
    for attempt in range(10):
        store = str(tmp_path / f"s{attempt}.zarr")
        barrier = context.Barrier(3)
        jobs = [context.Process(target=_make_groups, args=(store, grid, barrier)) for _ in range(3)]
        for job in jobs:
            job.start()
        for job in jobs:
            job.join(60)
        assert [job.exitcode for job in jobs] == [0, 0, 0], attempt
        for f in grid.overview_factors():
            level = xr.open_zarr(store, group=f"overviews/{f}", consolidated=False)
            assert level.sizes == {"y": -(-grid.height // f), "x": -(-grid.width // f)}, (attempt, f)
