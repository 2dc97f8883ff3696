"""Planning onto any grid: global, continental, polar, antimeridian-crossing and tiny inputs, real
rasters, x 10 target CRSs, against an independent reference of where data lands.

The reference for each pair is GDAL's own warp of an all-valid copy of the input (same size and
georeferencing, every pixel 1): nearest onto the full grid, and average onto a grid of one pixel
per tile (which catches inputs smaller than a target pixel), plus the tiles that the input's
pixel centres fall into when moved one by one with rasterio.warp.transform (which catches inputs
smaller than GDAL's average can see). Every tile where data lands must be planned; a tile planned
without data must lie within the kernel's reach of one that has data (along the footprint's edge).
"""

import math
import os

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.warp import reproject
from rasterio.warp import transform as move_points

from workflow_lib.config import validate_config
from workflow_lib.errors import ConfigError
from workflow_lib.planning.footprint import footprint_bounds
from workflow_lib.planning.grid import TargetGrid
from workflow_lib.planning.plan import build_plan
from workflow_lib.planning.settings import kernel_reach
from workflow_lib.sources.header import read_header

from .helpers import REAL_DATA

TILE = 16
TARGETS = ["EPSG:32632", "EPSG:3035", "EPSG:3857", "EPSG:2193", "EPSG:3832", "EPSG:3413", "EPSG:3031",
           "EPSG:4326", "EPSG:32618", "EPSG:32759"]
# Local grids (left, bottom, right, top) as users have them: central Europe in LAEA and UTM 32N,
# New Zealand, the Pacific in Pacific-centred Mercator, the Arctic.
LOCAL = {
    "EPSG:3035": (3900000, 2900000, 4100000, 3100000),
    "EPSG:32632": (400000, 4900000, 600000, 5100000),
    "EPSG:2193": (1000000, 4700000, 2100000, 6200000),
    "EPSG:3832": (-3000000, -3000000, 3000000, 3000000),
    "EPSG:3413": (-3000000, -3000000, 3000000, 3000000),
}
SYNTHETIC = {  # name: (width, height, crs, transform)
    "global 0..360": (720, 360, "EPSG:4326", Affine(0.5, 0, 0, 0, -0.5, 90)),
    "europe 4326": (800, 450, "EPSG:4326", Affine(0.1, 0, -30, 0, -0.1, 75)),
    "pacific 150..210": (600, 400, "EPSG:4326", Affine(0.1, 0, 150, 0, -0.1, 0)),
    "arctic 3413": (500, 500, "EPSG:3413", Affine(10000, 0, -2500000, 0, -10000, 2500000)),
    "tiny 1 m UTM 32N": (1000, 1000, "EPSG:32632", Affine(1, 0, 500000, 0, -1, 5000000)),
}
REAL = {
    "world.byte": "rasterio__world.byte.tif",
    "RGB.byte UTM 18N": "rasterio__RGB.byte.tif",
    "umbra rotated UTM 59S": "geotiff-test-data__umbra_mount_yasur.tif",
    "Albers custom WKT": "rio-cogeo__image_nodata.tif",
}
# Union extents that must be refused: the input and the target CRS's area of use do not meet
# (Europe is not in New Zealand, the Antarctic or UTM zones 18N and 59S; the equatorial Pacific is
# not in Europe, the Arctic or UTM 32N and 18N; the Arctic is not in the southern hemisphere).
NO_OVERLAP = {("europe 4326", t) for t in ("EPSG:2193", "EPSG:3031", "EPSG:32618", "EPSG:32759")} | \
             {("pacific 150..210", t) for t in ("EPSG:32632", "EPSG:3035", "EPSG:3413", "EPSG:32618")} | \
             {("arctic 3413", t) for t in ("EPSG:2193", "EPSG:3031", "EPSG:32759")}
GLOBAL = ("global 0..360", "world.byte")
# Each pair's outcome, filled by the pair's test: (name, target, extent) -> "planned" or "refused";
# and the rows printed at the end of the run (and in closing notes).
MATRIX: dict[tuple[str, str, str], str] = {}
ROWS: list[str] = []


def write_ones(path, width, height, crs, transform) -> str:
    with rasterio.open(path, "w", driver="GTiff", width=width, height=height, count=1, dtype="uint8", crs=crs,
                       transform=transform) as dst:
        dst.write(np.ones((height, width), "uint8"), 1)
    return str(path)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("matrix")
    found = {name: write_ones(folder / f"{i}.tif", *spec) for i, (name, spec) in enumerate(SYNTHETIC.items())}
    if os.path.isdir(REAL_DATA):
        for name, file in REAL.items():
            with rasterio.open(os.path.join(REAL_DATA, file)) as src:
                found[name] = write_ones(folder / file, src.width, src.height, src.crs, src.transform)
    return found


def tiles_where_data_lands(path: str, grid: TargetGrid) -> set[tuple[int, int]]:
    with rasterio.open(path) as src:
        data, transform, crs = src.read(1), src.transform, src.crs
    found = set()
    out = np.zeros((grid.height, grid.width), "uint8")
    reproject(data, out, src_transform=transform, src_crs=crs, src_nodata=0, dst_transform=grid.transform,
              dst_crs=grid.crs, dst_nodata=0, resampling=Resampling.nearest, warp_mem_limit=1024)
    found |= {(int(r) // TILE, int(c) // TILE) for r, c in zip(*np.nonzero(out))}
    coarse = np.zeros((grid.tile_rows, grid.tile_cols), "float32")
    reproject(data.astype("float32"), coarse, src_transform=transform, src_crs=crs, src_nodata=0,
              dst_transform=grid.tile_transform, dst_crs=grid.crs, dst_nodata=0, resampling=Resampling.average,
              warp_mem_limit=1024)
    found |= {(int(r), int(c)) for r, c in zip(*np.nonzero(coarse))}
    # Pixel centres on a lattice of at most 400 x 400, moved in batches; a batch that PROJ refuses
    # (a point outside the target projection's domain) is moved point by point.
    cols = np.linspace(0.5, data.shape[1] - 0.5, min(400, data.shape[1]))
    rows = np.linspace(0.5, data.shape[0] - 0.5, min(400, data.shape[0]))
    xs, ys = transform @ np.meshgrid(cols, rows)
    xs, ys = xs.ravel(), ys.ravel()
    for i in range(0, xs.size, 4000):
        batch = list(zip(xs[i:i + 4000], ys[i:i + 4000]))
        try:
            tx, ty = move_points(crs, grid.crs, [p[0] for p in batch], [p[1] for p in batch])
        except Exception:  # noqa: BLE001 - PROJ's error for a point outside the projection's domain
            tx, ty = [], []
            for x, y in batch:
                try:
                    (a,), (b,) = move_points(crs, grid.crs, [x], [y])
                except Exception:  # noqa: BLE001
                    continue
                tx.append(a)
                ty.append(b)
        with np.errstate(invalid="ignore"):  # PROJ's inf for points it could not move
            pc, pr = ~grid.transform @ (np.asarray(tx, float), np.asarray(ty, float))
        ok = np.isfinite(pc) & np.isfinite(pr) & (pc >= 0) & (pc < grid.width) & (pr >= 0) & (pr < grid.height)
        found |= {(int(r) // TILE, int(c) // TILE) for c, r in zip(pc[ok], pr[ok])}
    return found


def pairs():
    for name in list(SYNTHETIC) + list(REAL):
        for target in TARGETS:
            yield pytest.param(name, target, "union", id=f"{name}->{target}-union")
            if target in LOCAL:
                yield pytest.param(name, target, "local", id=f"{name}->{target}-local")


@pytest.mark.slow
@pytest.mark.parametrize("name,target,extent", list(pairs()))
def test_every_tile_where_data_lands_is_planned(inputs, name, target, extent):
    if name not in inputs:
        pytest.skip(f"real test rasters not found at {REAL_DATA}")
    path = inputs[name]
    config = {"target": {"crs": target, "resolution": 1.0}, "tile_size": TILE,
              "datasets": {"d": {"path": path, "method": "nearest"}}}
    if extent == "local":
        box = LOCAL[target]
        config["target"]["extent"] = dict(zip(["left", "bottom", "right", "top"], box))
    else:
        box = footprint_bounds(read_header("d", path), CRS.from_user_input(target)).box
    if box is None:  # the input and the target CRS's area of use do not meet
        with pytest.raises(ConfigError, match="does not overlap the area of use"):
            build_plan(validate_config(config))
        ROWS.append(f"{name:<24} {target:<10} {extent:<5}  no overlap with the CRS's area of use (refused)")
        MATRIX[name, target, extent] = "refused"
        return
    # About 512 pixels (32 tiles) along the longer side.
    config["target"]["resolution"] = max(box[2] - box[0], box[3] - box[1]) / 512
    try:
        plan = build_plan(validate_config(config))
    except ConfigError as exc:
        assert "does not overlap" in str(exc), exc
        grid = TargetGrid.from_bounds(CRS.from_user_input(target), box, (config["target"]["resolution"],) * 2,
                                      (0.0, 0.0), TILE)
        landed = tiles_where_data_lands(path, grid)
        assert not landed, f"refused as not overlapping, but data lands in {len(landed)} tiles"
        ROWS.append(f"{name:<24} {target:<10} {extent:<5}  no overlap (refused); GDAL lands nothing either")
        MATRIX[name, target, extent] = "refused"
        return
    grid = plan.grid
    planned = {(t.row, t.col) for t in plan.datasets["d"].tiles}
    landed = tiles_where_data_lands(path, grid)
    missed = landed - planned
    settings = plan.datasets["d"].settings
    reach = 1 + math.ceil(kernel_reach(settings) * max(settings.x_scale, settings.y_scale) / TILE)
    stray = {t for t in planned - landed
             if not any((t[0] + dr, t[1] + dc) in landed for dr in range(-reach, reach + 1)
                        for dc in range(-reach, reach + 1))}
    ROWS.append(f"{name:<24} {target:<10} {extent:<5}  grid {grid.tile_rows:>2}x{grid.tile_cols:<2} tiles  "
                f"expected {len(landed):>4}  planned {len(planned):>4}  missed {len(missed)}  stray {len(stray)}")
    assert not missed, f"tiles where data lands but not planned: {sorted(missed)[:10]}"
    assert not stray, f"tiles planned far from any data: {sorted(stray)[:10]}"
    MATRIX[name, target, extent] = "planned"


def test_the_matrix_is_whole_and_refuses_only_where_input_and_crs_do_not_meet(request, record):
    """Runs last in this module: over every pair that ran in this session, each pair has an
    outcome, global inputs are planned onto every target CRS, union extents are refused exactly
    where the input lies outside the target CRS's area of use, and every target CRS plans some
    input. Prints the matrix."""
    ran = [item.callspec.params for item in request.session.items
           if item.originalname == "test_every_tile_where_data_lands_is_planned"
           and item.callspec.params["name"] in SYNTHETIC | REAL]
    if not ran:
        pytest.skip("no pair of the matrix ran in this session")
    for row in ROWS:
        record("planning: " + row)
    pairs_ran = {(p["name"], p["target"], p["extent"]) for p in ran}
    real_missing = not os.path.isdir(REAL_DATA)
    expected = {k for k in pairs_ran if not (real_missing and k[0] in REAL)}
    assert set(MATRIX) == expected, f"pairs without an outcome: {sorted(expected - set(MATRIX))[:10]}"
    refused = {(n, t) for (n, t, e), outcome in MATRIX.items() if e == "union" and outcome == "refused"}
    assert refused == {k for k in NO_OVERLAP if (k[0], k[1], "union") in MATRIX}, refused ^ NO_OVERLAP
    for name in GLOBAL:
        assert all(o == "planned" for (n, _, _), o in MATRIX.items() if n == name), name
    for target in {t for _, t, _ in MATRIX}:
        assert any(o == "planned" for (_, t, _), o in MATRIX.items() if t == target), target
