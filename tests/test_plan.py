"""The plan: tiles from headers only, every tile with data planned, cached across parses."""

import json
import os

import numpy as np
import pytest
from affine import Affine

from workflow_lib.config import validate_config
from workflow_lib.domain import TileIndex
from workflow_lib.planning.plan import build_plan, load_plan, plan_cache_key
from workflow_lib.engines.chunks import MemoryBudget, chunk_cost, plan_chunks

from .helpers import reference_for, smooth_field, valid_mask, write_raster


def tiles_with_data(plan, name):
    """Tiles where GDAL's whole-image warp produced at least one valid pixel."""
    ref = reference_for(plan, name)
    valid = valid_mask(ref.data, ref.nodata)
    ts = plan.grid.tile_size
    found = set()
    for r, c in zip(*np.nonzero(valid)):
        found.add((int(r) // ts, int(c) // ts))
    return found


@pytest.mark.parametrize("crs,res", [("EPSG:32632", 30), ("EPSG:3035", 30), ("EPSG:4326", 0.0003),
                                     ("EPSG:3857", 40)])
def test_every_tile_with_data_is_planned_and_few_others(tmp_path, crs, res):
    # A raster turned 25 degrees: its footprint is a diamond, so its bounding box would hold many
    # tiles without data; the plan must hold only the touched ones.
    rotated = Affine.translation(500000, 5200000) @ Affine.rotation(25) @ Affine.scale(10, -10)
    path = write_raster(tmp_path / "r.tif", smooth_field(400, 300), "EPSG:32632", rotated, -9999.0)
    config = validate_config({"target": {"crs": crs, "resolution": res}, "tile_size": 16,
                              "datasets": {"d": {"path": path, "method": "average"}}})
    plan = build_plan(config)
    planned = {(t.row, t.col) for t in plan.datasets["d"].tiles}
    needed = tiles_with_data(plan, "d")
    assert needed <= planned, f"tiles with data but not planned: {sorted(needed - planned)}"
    # Only tiles along the footprint's edge may be planned without data.
    all_tiles = plan.grid.tile_rows * plan.grid.tile_cols
    assert len(planned) < 0.75 * all_tiles
    assert len(planned - needed) <= 0.25 * len(planned)


def test_plan_reads_headers_only(tmp_path):
    """A raster whose pixel data is unreadable still plans: the plan never touches pixels."""
    path = tmp_path / "big.tif"
    write_raster(path, smooth_field(256, 256), "EPSG:32632", Affine(10, 0, 500000, 0, -10, 5200000), -9999.0,
                 blockxsize=256, blockysize=256)
    size = os.path.getsize(path)
    with open(path, "r+b") as f:  # corrupt the compressed pixel data, keep the header
        f.seek(size // 2)
        f.write(b"\xff" * (size // 4))
    config = validate_config({"target": {"crs": "EPSG:32632", "resolution": 20}, "tile_size": 32,
                              "datasets": {"d": {"path": str(path), "method": "average"}}})
    plan = build_plan(config)
    assert len(plan.datasets["d"].tiles) == 16


def test_plan_is_cached_and_invalidated_by_input_changes(tmp_path):
    path = write_raster(tmp_path / "a.tif", smooth_field(64, 64), "EPSG:32632",
                        Affine(10, 0, 500000, 0, -10, 5200000), -9999.0)
    config = validate_config({"target": {"crs": "EPSG:32632", "resolution": 20}, "tile_size": 16,
                              "datasets": {"d": {"path": path, "method": "average"}}})
    cache = tmp_path / "cache"
    first = load_plan(config, str(cache))
    files = os.listdir(cache)
    assert files == [f"{plan_cache_key(config)}.json"]
    # The cached plan is what the next parse uses: mark it and see the mark come back.
    with open(cache / files[0]) as f:
        data = json.load(f)
    data["datasets"]["d"]["batches"] = [[[0, 1], [0, 1], ["r0000_c0000"]]]
    with open(cache / files[0], "w") as f:
        json.dump(data, f)
    assert load_plan(config, str(cache)).datasets["d"].tile_ids == ("r0000_c0000",)
    # Touching the input changes the key: the plan is made anew from the header.
    stat = os.stat(path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    again = load_plan(config, str(cache))
    assert again.datasets["d"].tiles == first.datasets["d"].tiles and len(again.datasets["d"].tiles) == 4
    # A change of config changes the key too.
    config["datasets"]["d"]["method"] = "bilinear"
    assert load_plan(config, str(cache)).datasets["d"].settings.method == "bilinear"


def test_plan_round_trips_through_json(tmp_path):
    path = write_raster(tmp_path / "a.tif", smooth_field(64, 64), "EPSG:32632",
                        Affine(10, 0, 500000, 0, -10, 5200000), None)
    config = validate_config({"target": {"crs": "EPSG:3035", "resolution": 25}, "tile_size": 16,
                              "datasets": {"d": {"path": path, "method": "cubic"}}})
    plan = build_plan(config)
    from workflow_lib.planning.plan import Plan

    again = Plan.from_dict(json.loads(json.dumps(plan.to_dict())))
    assert again.grid == plan.grid
    # NaN (undeclared nodata of a float input) survives JSON, where NaN != NaN.
    assert repr(again.datasets["d"].settings) == repr(plan.datasets["d"].settings)
    assert again.datasets["d"].tiles == plan.datasets["d"].tiles


@pytest.mark.parametrize("mem_mb", [300, 512, 2000])
def test_chunks_fit_the_memory_budget_whatever_the_tile(tmp_path, mem_mb):
    """A tile whose source region is far larger than the budget is cut into chunks that fit it."""
    # 12,000 x 12,000 float32 source (576 MB) declared by header only: a sparse GeoTIFF that is
    # cheap to create. The tile covers all of it at 10x coarser resolution.
    import rasterio

    path = tmp_path / "huge.tif"
    profile = dict(driver="GTiff", width=12000, height=12000, count=1, dtype="float32", crs="EPSG:32632",
                   transform=Affine(10, 0, 500000, 0, -10, 5200000), nodata=-9999.0, tiled=True,
                   blockxsize=512, blockysize=512, sparse_ok=True, compress="deflate")
    with rasterio.open(path, "w", **profile):
        pass
    config = validate_config({"target": {"crs": "EPSG:32632", "resolution": 100}, "tile_size": 1200,
                              "datasets": {"d": {"path": str(path), "method": "average"}}})
    plan = build_plan(config)
    d = plan.datasets["d"]
    tile = plan.grid.tile(d.tiles[0])
    budget = MemoryBudget.for_job(mem_mb)
    chunks = plan_chunks(d.header, d.settings, tile, plan.grid.crs, budget.chunk_bytes)
    costs = [chunk_cost(c.padded, c.window, d.header.dtype, d.settings.dst_dtype, d.settings.same_crs) for c in chunks]
    assert max(costs) <= budget.chunk_bytes
    assert budget.cache_mb * 1e6 + budget.chunk_bytes <= (mem_mb - 100) * 1e6
    # Chunks tile the tile exactly.
    cover = np.zeros((tile.height, tile.width), dtype=int)
    for c in chunks:
        w = c.window
        cover[int(w.row_off):int(w.row_off + w.height), int(w.col_off):int(w.col_off + w.width)] += 1
    assert (cover == 1).all()
    assert len(chunks) > 1


def test_each_tiles_estimated_work_is_the_source_pixels_under_it(tmp_path):
    """Two rasters on one grid: the small one covers a corner of the big one's extent, so the tiles
    it barely reaches weigh little (the ETA's weights), and the source pixels add up."""
    big = write_raster(tmp_path / "big.tif", smooth_field(1000, 1000), "EPSG:32632",
                       Affine(10, 0, 500000, 0, -10, 5200000), -9999.0)
    small = write_raster(tmp_path / "small.tif", smooth_field(130, 170), "EPSG:32632",
                         Affine(10, 0, 500000, 0, -10, 5200000), -9999.0)
    config = validate_config({"target": {"crs": "EPSG:32632", "resolution": 40, "origin": [0, 0]}, "tile_size": 64,
                              "datasets": {"big": {"path": big, "method": "average"},
                                           "small": {"path": small, "method": "average"}}})
    plan = build_plan(config)
    for name, source_pixels in (("big", 1000 * 1000), ("small", 130 * 170)):
        d = plan.datasets[name]
        work = d.tile_work_of(plan.grid)
        written = {t: min(64, plan.grid.width - 64 * t.col) *
                   min(64, plan.grid.height - 64 * t.row) for t in d.tiles}
        read = sum(work(t) - written[t] for t in d.tiles)
        assert read == pytest.approx(source_pixels, rel=0.1), name
    small = plan.datasets["small"]
    work = small.tile_work_of(plan.grid)
    # 170 x 130 px of 10 m are 42.5 x 32.5 target pixels: one tile, partly covered.
    first = TileIndex(0, 0)
    assert small.tile_ids == ("r0000_c0000",) and work(first) < plan.datasets["big"].tile_work_of(plan.grid)(first)
    big_work = plan.datasets["big"].tile_work_of(plan.grid)
    edge = TileIndex(3, 3)  # 1000 px of 10 m: 250 target pixels, the last tile holds 58 x 58 of 64 x 64
    assert big_work(edge) < big_work(first)
    assert json.loads(json.dumps(plan.to_dict()))["datasets"]["small"]["footprint"] == [0, 0, 43, 33]
