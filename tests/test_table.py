"""The per-cell table (mosaics.table, output.table: parquet), without Snakemake: read back as users
read it (pandas, pyarrow.dataset), it has one row per cell valid in at least one dataset, and each
column is its dataset band's mosaic (a NumPy reference from the GeoTIFF mosaics), null where nodata."""

import json
import os

import numpy as np
import pandas as pd
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
import rasterio

from .helpers import run_tiles_and_mosaics, synthetic_config
from workflow_lib.config import validate_config
from workflow_lib.errors import ConfigError
from workflow_lib.mosaics import table as table_module
from workflow_lib.mosaics.table import finish_table, write_table_part
from workflow_lib.planning import table as planning_table
from workflow_lib.planning.plan import build_plan
from workflow_lib.planning.table import Area, table_areas


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """The synthetic datasets and class fractions (several bands), as tiles and mosaics, and the
    table written area by area: areas of 2 tiles and row groups of strips of 100 cells, so that
    several of each meet at tile and area edges."""
    folder = tmp_path_factory.mktemp("table")
    cwd = os.getcwd()
    os.chdir(folder)
    patch = pytest.MonkeyPatch()
    try:
        config = synthetic_config(folder)
        config["datasets"]["shares"] = {"path": config["datasets"]["landcover"]["path"], "method": "fractions",
                                        "classes": {1: "water", 2: "forest", 3: "crops"}}
        config["output"] = {"table": "parquet"}
        plan, mosaics = run_tiles_and_mosaics(config, folder)
        patch.setattr(planning_table, "AREA_CELLS", 2 * plan.grid.tile_size ** 2)
        patch.setattr(table_module, "ROW_GROUP_CELLS", 100)
        areas = table_areas(plan)
        out = folder / "table"
        tiles = {name: list(d.tiles) for name, d in plan.datasets.items()}
        tile_dirs = {name: str(folder / "tiles" / name) for name in plan.datasets}
        rows = sum(write_table_part(str(out / f"{a.id}.parquet"), plan.grid, a, list(plan.datasets.values()),
                                    tile_dirs, tiles) for a in areas)
        assert finish_table(str(out), plan.grid, list(plan.datasets.values()), [a.id for a in areas]) == []
    finally:
        patch.undo()
        os.chdir(cwd)
    return plan, mosaics, areas, out, rows


def mosaic_columns(plan, mosaics) -> dict[str, np.ndarray]:
    """Each table column as its mosaic's band gives it (float64, NaN where nodata)."""
    columns = {}
    for name, path in mosaics.items():
        with rasterio.open(path) as src:
            data = src.read().astype("float64")
            data[data == src.nodata] = np.nan
        names = plan.datasets[name].band_names
        if len(names) <= 1:
            columns[name] = data[0]
        else:
            for band, label in zip(data, names):
                columns[label if label.startswith(f"{name}_") else f"{name}_{label}"] = band
    return columns


def test_each_column_is_its_mosaic_and_each_valid_cell_one_row(made):
    plan, mosaics, areas, out, rows = made
    assert len(areas) > 2 and len({a.id for a in areas}) == len(areas)
    df = pd.read_parquet(out)  # the folder: every area's file, and not _common_metadata
    assert len(df) == rows
    expected = mosaic_columns(plan, mosaics)
    assert list(df.columns) == ["row", "col", "x", "y", "dem", "landcover", "temperature", "shares_water",
                                "shares_forest", "shares_crops"]
    assert not df.duplicated(["row", "col"]).any()
    any_valid = np.logical_or.reduce([~np.isnan(v) for v in expected.values()])
    assert len(df) == any_valid.sum() < any_valid.size
    for column, want in expected.items():
        got = np.full(want.shape, np.nan)
        got[df.row, df.col] = df[column].astype("float64")
        assert np.array_equal(got, want, equal_nan=True), column
        assert np.isnan(want).any() and not np.isnan(want).all(), column
    # Cell centres in the grid's CRS, as GDAL's transform puts them.
    t = plan.grid.transform
    assert np.array_equal(df.x, t.c + (df.col + 0.5) * t.a) and np.array_equal(df.y, t.f + (df.row + 0.5) * t.e)
    # Types as the datasets': a uint8 class column keeps its type where pyarrow keeps nulls.
    table = pads.dataset(out, format="parquet").to_table()
    assert str(table.schema.field("landcover").type) == "uint8" and str(table.schema.field("dem").type) == "float"
    assert table.num_rows == rows


def test_an_area_is_read_a_strip_of_rows_at_a_time_never_a_whole_tile(made, tmp_path, monkeypatch):
    """The job's memory: it holds a strip of rows of each dataset, not a tile of each (twenty
    datasets of 4,096 px tiles would be 1.3 GB). Every read is a window of at most a strip, and the
    area's file holds the same rows as when written from whole tiles."""
    plan, _, areas, out, _ = made
    monkeypatch.setattr(table_module, "ROW_GROUP_CELLS", plan.grid.tile_size * 8)
    heights = []
    real_read = rasterio.io.DatasetReader.read

    def read(self, *args, window=None, **kwargs):
        heights.append(None if window is None else int(window.height))
        return real_read(self, *args, window=window, **kwargs)

    monkeypatch.setattr(rasterio.io.DatasetReader, "read", read)
    area = max(areas, key=lambda a: len(a.batches))
    tile_dirs = {name: str(out.parent / "tiles" / name) for name in plan.datasets}
    rows = write_table_part(str(tmp_path / "a.parquet"), plan.grid, area, list(plan.datasets.values()), tile_dirs,
                            {name: list(d.tiles) for name, d in plan.datasets.items()})
    assert rows and heights and all(h is not None and h <= 8 for h in heights), heights
    got, want = (pd.read_parquet(p).sort_values(["row", "col"]).reset_index(drop=True)
                 for p in (tmp_path / "a.parquet", out / f"{area.id}.parquet"))
    pd.testing.assert_frame_equal(got, want)


def test_the_files_say_the_grids_crs_and_what_each_column_holds(made):
    plan, _, areas, out, _ = made
    for path in [out / "_common_metadata", out / f"{areas[0].id}.parquet"]:
        meta = json.loads(pq.read_schema(path).metadata[b"onegrid"])
        assert meta["crs"] == "EPSG:32632" and rasterio.crs.CRS.from_wkt(meta["crs_wkt"]) == plan.grid.crs
        assert meta["transform"] == list(plan.grid.transform)[:6]
        assert meta["columns"]["shares_forest"] == {"dataset": "shares", "band": 2, "method": "fractions"}


def test_every_planned_tile_is_in_one_area(made):
    plan, _, areas, _, _ = made
    for dataset in plan.datasets.values():
        for index in dataset.tiles:
            assert sum(a.holds(index) for a in areas) == 1, index
    assert Area.parse(areas[-1].id).rows == areas[-1].rows and Area.parse(areas[-1].id).cols == areas[-1].cols


def test_finish_removes_files_of_other_areas_and_leftovers(made, tmp_path):
    plan, _, areas, out, _ = made
    folder = tmp_path / "table"
    folder.mkdir()
    for a in areas[:2]:
        (folder / f"{a.id}.parquet").write_bytes((out / f"{a.id}.parquet").read_bytes())
    (folder / ".tmp-a0000_0000_9x9.x.parquet").write_bytes(b"half")
    removed = finish_table(str(folder), plan.grid, list(plan.datasets.values()), [areas[0].id])
    assert sorted(os.path.basename(p) for p in removed) == sorted([f"{areas[1].id}.parquet",
                                                                    ".tmp-a0000_0000_9x9.x.parquet"])
    assert sorted(os.listdir(folder)) == ["_common_metadata", f"{areas[0].id}.parquet"]


@pytest.mark.parametrize("name", ["row", "x"])
def test_a_dataset_named_as_a_table_column_is_refused_before_any_job(tmp_path, name):
    config = synthetic_config(tmp_path)
    config["datasets"] = {name: config["datasets"]["dem"]}
    config["output"] = {"table": "parquet", "formats": ["cog"]}
    with pytest.raises(ConfigError, match=rf"datasets\.{name}: .*column '{name}' of results/table/"):
        build_plan(validate_config(config), cache_dir=str(tmp_path / "cache"))
