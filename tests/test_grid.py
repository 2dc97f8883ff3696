import numpy as np
import pytest
from affine import Affine
from rasterio.crs import CRS

from workflow_lib.domain import TileIndex
from workflow_lib.planning.grid import TargetGrid

CRS3035 = CRS.from_epsg(3035)


def test_extent_is_snapped_outwards_to_the_grid_origin():
    grid = TargetGrid.from_bounds(CRS3035, (1003.0, 2001.0, 1999.0, 2950.5), (100.0, 100.0), (0.0, 0.0), 4)
    assert grid.bounds == (1000.0, 2000.0, 2000.0, 3000.0)
    assert (grid.width, grid.height) == (10, 10)


def test_bounds_on_grid_lines_add_no_empty_pixels():
    grid = TargetGrid.from_bounds(CRS3035, (1000.0, 2000.0, 2000.0, 3000.0000000001), (100.0, 100.0), (0.0, 0.0), 4)
    assert (grid.width, grid.height) == (10, 10)


def test_grids_with_the_same_origin_align_pixel_for_pixel():
    a = TargetGrid.from_bounds(CRS3035, (10.0, 10.0, 990.0, 990.0), (30.0, 30.0), (5.0, 7.0), 8)
    b = TargetGrid.from_bounds(CRS3035, (400.0, 300.0, 2000.0, 1500.0), (30.0, 30.0), (5.0, 7.0), 8)
    col, row = ~a.transform @ (b.transform.c, b.transform.f)
    assert col == pytest.approx(round(col), abs=1e-9) and row == pytest.approx(round(row), abs=1e-9)


def test_tiles_cover_the_grid_exactly_once():
    grid = TargetGrid.from_bounds(CRS3035, (0.0, 0.0, 1030.0, 770.0), (10.0, 10.0), (0.0, 0.0), 32)
    cover = np.zeros((grid.height, grid.width), dtype=int)
    for row in range(grid.tile_rows):
        for col in range(grid.tile_cols):
            tile = grid.tile(TileIndex(row, col))
            w = tile.window
            cover[int(w.row_off):int(w.row_off + w.height), int(w.col_off):int(w.col_off + w.width)] += 1
            assert tile.transform @ (0, 0) == grid.transform @ (w.col_off, w.row_off)
    assert (cover == 1).all()
    last = grid.tile(TileIndex(grid.tile_rows - 1, grid.tile_cols - 1))
    assert (last.width, last.height) == (103 - 3 * 32, 77 - 2 * 32)


def test_tile_ids_round_trip_and_reject_garbage():
    assert TileIndex.parse(TileIndex(3, 12).id) == TileIndex(3, 12)
    assert TileIndex(3, 12).id == "r0003_c0012"
    with pytest.raises(ValueError, match="not a tile id"):
        TileIndex.parse("tile_3_12")


def test_grid_round_trips_through_its_dict():
    grid = TargetGrid(CRS3035, Affine(25.0, 0, 4000000.0, 0, -25.0, 3000000.0), 123, 45, 16)
    assert TargetGrid.from_dict(grid.to_dict()) == grid


def test_non_positive_resolution_is_refused():
    with pytest.raises(ValueError, match="resolution must be positive"):
        TargetGrid.from_bounds(CRS3035, (0.0, 0.0, 10.0, 10.0), (0.0, 1.0), (0.0, 0.0), 4)


@pytest.mark.parametrize("size, tile_size, by_tiles, levels", [
    # Levels while the level before is larger than 128 pixels; the tiles make those whose chunk (a
    # tile's part) keeps 32 pixels a side, the others are made from the last of these.
    ((40000, 30000), 256, (2, 4, 8), (2, 4, 8, 16, 32, 64, 128, 256, 512)),
    ((783, 793), 256, (2, 4, 8), (2, 4, 8)),
    ((461, 440), 100, (2,), (2, 4)),  # a quarter of a tile is 25 pixels: the tiles stop at 2
    ((461, 440), 66, (2,), (2, 4)),  # 66 / 4 is not whole: at 2 as well
    ((461, 440), 48, (), ()),  # no level from the tiles: none at all
    ((128, 100), 256, (), ()),  # small enough already
])
def test_overview_levels_of_a_grid(size, tile_size, by_tiles, levels):
    grid = TargetGrid(CRS.from_epsg(3035), Affine(10, 0, 0, 0, -10, 0), size[0], size[1], tile_size)
    assert grid.tile_level_factors() == by_tiles
    assert grid.overview_factors() == levels
    level = grid.level(4)
    assert (level.width, level.height, level.tile_size) == (-(-size[0] // 4), -(-size[1] // 4), tile_size // 4)
    assert level.transform == Affine(40, 0, 0, 0, -40, 0)
