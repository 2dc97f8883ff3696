"""The conservative engine against the truth: each source pixel's footprint moved exactly by PROJ and
clipped against the target pixels with shapely (tests/helpers.py: footprint_reference), over a
matrix of CRS pairs, scales, holes, NaN and raster edges; GDAL's warper measured beside it on the
same cases; results identical for every tile size; totals conserved."""

import math
import os

import numpy as np
import pytest
import rasterio
from affine import Affine

from workflow_lib.config import validate_config
from workflow_lib.planning.plan import build_plan

from .helpers import footprint_reference, run_tiles_and_mosaics, write_raster

CLASSES = (1, 2, 3, 4, 5)


def counts(height, width, seed=0):
    """Gamma counts with a fifth zeros, a hole of nodata (-1) and one of NaN."""
    rng = np.random.default_rng(seed)
    data = rng.gamma(2.0, 10.0, (height, width)).astype("float32")
    data[rng.random((height, width)) < 0.2] = 0
    data[height // 4:height // 4 + height // 10, width // 3:width // 3 + width // 8] = -1
    data[height // 2:height // 2 + 3, width // 5:width // 5 + width // 6] = np.nan
    return data


def classes(height, width, seed=0):
    """Patches of classes 1..5 (and 6, which no band counts), nodata 0 in a corner."""
    rng = np.random.default_rng(seed + 1)
    coarse = rng.integers(1, 7, (height // 4 + 1, width // 4 + 1)).astype("uint8")
    data = np.kron(coarse, np.ones((4, 4), "uint8"))[:height, :width]
    noise = rng.random((height, width)) < 0.15
    data[noise] = rng.integers(1, 7, int(noise.sum()))
    data[:height // 6, :width // 7] = 0
    return data


# name: (CRS, transform, height, width, target CRS, resolution)
CASES = {
    "4326->3035 25km": ("EPSG:4326", Affine(0.1, 0, 5, 0, -0.1, 56), 140, 200, "EPSG:3035", 25000),
    "4326->UTM33N 10km": ("EPSG:4326", Affine(0.05, 0, 12, 0, -0.05, 50), 100, 120, "EPSG:32633", 10000),
    "4326 1deg, limb->8857 100km": ("EPSG:4326", Affine(1, 0, -180, 0, -1, 90), 90, 90, "EPSG:8857", 100000),
    "3031->6932 polar": ("EPSG:3031", Affine(25000, 0, -2000000, 0, -25000, 2000000), 160, 160, "EPSG:6932", 50000),
    "antimeridian 4326->3832": ("EPSG:4326", Affine(0.1, 0, 170, 0, -0.1, 10), 120, 200, "EPSG:3832", 20000),
    "rotated UTM, one CRS": ("EPSG:32633", Affine(86.6, -50, 400000, -50, -86.6, 5500000), 120, 120, "EPSG:32633",
                             330),
    "upsampling 0.5x": ("EPSG:4326", Affine(0.2, 0, 10, 0, -0.2, 52), 30, 40, "EPSG:3035", 8000),
    "coarsening 50x": ("EPSG:4326", Affine(0.002, 0, 10, 0, -0.002, 50), 300, 500, "EPSG:3035", 10000),
    # The benchmark's reprojection in small: fine pixels on a grid turned by 10 degrees against
    # theirs, 2 points per edge (middles made from the corners), most footprints across grid lines.
    "fine LAEA->4326": ("EPSG:3035", Affine(10, 0, 4_000_000, 0, -10, 3_000_000), 150, 180, "EPSG:4326", 0.0005),
}
# Windows of real rasters (../shared/data/real/): name: (file, window (col, row, width, height),
# target CRS, resolution). Their values are the counts; binned into classes 1..5 (nodata kept) they
# are the classes.
REAL_CASES = {
    "real world.byte 4326->8857 50km": ("rasterio__world.byte.tif", (1380, 260, 240, 160), "EPSG:8857", 50000),
    "real RGB.byte UTM18N->4326": ("rasterio__RGB.byte.tif", (200, 200, 320, 300), "EPSG:4326", 0.01),
}
for _name, (_file, (_c, _r, _w, _h), _target, _res) in REAL_CASES.items():
    CASES[_name] = (None, None, _h, _w, _target, _res)
METHODS = ("average", "sum", "mode", "fractions")


def kind(method):
    return "classes" if method in ("mode", "fractions") else "counts"


def write_real(folder, case, method):
    """A window of a real raster: its values (float32, nodata -1) or its values binned into classes
    1..5 (nodata 0)."""
    from rasterio.windows import Window

    from .helpers import REAL_DATA

    name, (c, r, w, h), *_ = REAL_CASES[case]
    path = os.path.join(REAL_DATA, name)
    if not os.path.exists(path):
        pytest.skip(f"real test rasters not found at {REAL_DATA} (set REAL_DATA_DIR)")
    with rasterio.open(path) as src:
        window = Window(c, r, w, h)
        data, transform, crs = src.read(1, window=window), src.window_transform(window), src.crs
        missing = data == src.nodata if src.nodata is not None else np.zeros(data.shape, bool)
    if kind(method) == "classes":
        binned = (np.minimum(data.astype("int64") * 5 // (int(data.max()) + 1), 4) + 1).astype("uint8")
        return write_raster(folder / "classes.tif", np.where(missing, 0, binned).astype("uint8"), crs, transform, 0)
    return write_raster(folder / "counts.tif", np.where(missing, -1, data).astype("float32"), crs, transform, -1.0)


def write_source(folder, case, method):
    if case in REAL_CASES:
        return write_real(folder, case, method)
    crs, transform, height, width, *_ = CASES[case]
    if kind(method) == "classes":
        return write_raster(folder / "classes.tif", classes(height, width), crs, transform, 0)
    return write_raster(folder / "counts.tif", counts(height, width), crs, transform, -1.0)


def config(path, case, method, tile_size=64, **extra):
    target, resolution = CASES[case][4], CASES[case][5]
    dataset = {"path": path, "method": method, **extra}
    if method == "fractions":
        dataset["classes"] = list(CLASSES)
    if method == "sum":
        dataset["dtype"] = "float64"  # totals to 1e-9: float32 rounds each pixel to 6e-8
    return {"target": {"crs": target, "resolution": resolution}, "tile_size": tile_size,
            "warp": {"error_threshold": 0}, "datasets": {"d": dataset}}


def read_all(path):
    with rasterio.open(path) as src:
        return src.read().astype("float64"), src.nodata, list(src.descriptions), src.dtypes[0]


def valid(a, nodata):
    ok = ~np.isnan(a)
    if nodata is not None and not math.isnan(nodata):
        ok &= a != nodata
    return ok


@pytest.fixture(scope="module")
def truth(tmp_path_factory):
    """Per case and kind of raster: its file and the footprint reference on the planned grid, made
    once for the methods that share them. The reference's outlines have twice as many points per
    edge as the engine's (at least 8): closer to the truth than we are."""
    made = {}

    def get(case, method):
        key = (case, kind(method))
        if key not in made:
            folder = tmp_path_factory.mktemp("truth")
            path = write_source(folder, case, method)
            plan = build_plan(validate_config(config(path, case, method)), str(folder / ".cache"))
            g, points = plan.grid, max(8, 2 * plan.datasets["d"].settings.edge_points)
            with rasterio.open(path) as src:
                data = src.read(1)
                ok = (data != src.nodata) & ~np.isnan(data.astype("float64"))
                made[key] = path, footprint_reference(data, ok, src.transform, src.crs, g.transform, g.crs,
                                                      (g.height, g.width), classes=kind(method) == "classes",
                                                      points_per_edge=points)
        return made[key]

    return get


def difference(method, got, nodata, ref):
    """(largest difference in the measure the issue bounds, pixels where one has a value and the
    other not, pixels compared): average and fractions as a share of the reference's data range,
    sum relative to the pixel's own value (wholly covered pixels), mode in pixels that differ
    (ties aside)."""
    if method == "fractions":
        worst, mismatch = 0.0, 0
        for k, c in enumerate(CLASSES):
            band = got[k]
            have = valid(band, nodata)
            truth = np.where(ref.coverage > 0, ref.areas.get(float(c), np.zeros(band.shape)), np.nan)
            both = have & ~np.isnan(truth)
            worst = max(worst, float(np.abs(band[both] - truth[both]).max(initial=0)))
            mismatch += int((have != ~np.isnan(truth)).sum())
        return worst, mismatch, int(both.sum())
    band = got[0]
    have = valid(band, nodata)
    truth = getattr(ref, method)
    both = have & ~np.isnan(truth)
    mismatch = int((have != ~np.isnan(truth)).sum())
    if method == "average":
        span = float(np.nanmax(truth) - np.nanmin(truth))
        return float(np.abs(band[both] - truth[both]).max(initial=0)) / span, mismatch, int(both.sum())
    if method == "sum":
        # Relative to each wholly covered pixel's own value; not where that value is a sliver of a
        # source pixel (below 1 % of the median), whose area no method has to 1e-6 in float64.
        whole = both & (ref.coverage >= 1 - 1e-9)
        whole &= np.abs(truth) >= 0.01 * np.median(np.abs(truth[whole]))
        rel = np.abs(band[whole] - truth[whole]) / np.abs(truth[whole])
        return float(rel.max(initial=0)), mismatch, int(both.sum())
    compared = both & ~ref.mode_tied
    return float((band[compared] != truth[compared]).sum()), mismatch, int(compared.sum())


BOUND = {"average": 1e-6, "fractions": 1e-6, "sum": 1e-6, "mode": 0}


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("case", list(CASES))
def test_area_methods_equal_the_footprint_reference(tmp_path, truth, record, case, method):
    path, ref = truth(case, method)
    plan, mosaics = run_tiles_and_mosaics(config(path, case, method), tmp_path / "ours")
    s = plan.datasets["d"].settings
    assert s.engine == "conservative", s.engine_reason
    got, nodata, names, _ = read_all(mosaics["d"])
    ours, mismatch, compared = difference(method, got, nodata, ref)
    gdal = "-"
    if method != "fractions":  # GDAL's warper on the same grid (exact transformation), beside it
        gplan, gmos = run_tiles_and_mosaics(config(path, case, method, engine="gdal"), tmp_path / "gdal")
        g, gnodata, _, _ = read_all(gmos["d"])
        gdal = f"{difference(method, g, gnodata, ref)[0]:.3g}"
    unit = {"average": "of range", "fractions": "share", "sum": "rel. per pixel", "mode": "px differ"}[method]
    record(f"conservative: {case:<30} {method:<9} edge points {s.edge_points:>2}  ours {ours:.3g} {unit} "
           f"(GDAL's warper {gdal})  value/nodata mismatches {mismatch} of {compared}")
    assert compared > 50, compared
    assert mismatch == 0
    assert ours <= BOUND[method], (method, ours)
    if method == "sum":
        total_ours = got[0][valid(got[0], nodata)].sum()
        total_ref = np.nansum(ref.sum)
        assert abs(total_ours - total_ref) <= 1e-9 * abs(total_ref), (total_ours, total_ref)


@pytest.mark.slow
@pytest.mark.parametrize("case", ["4326->3035 25km", "antimeridian 4326->3832", "rotated UTM, one CRS",
                                  "fine LAEA->4326"])
def test_results_are_the_same_for_every_tile_size_bit_for_bit(tmp_path, truth, record, case):
    """Tile sizes 16, 64 and 1024 (and tiles of 16 cut into chunks of 1 MB: a few per tile at these
    edge points) give the same mosaics: every target pixel sums its source pixels in one order,
    whatever tile or chunk holds it."""
    for method in METHODS:
        path, _ = truth(case, method)
        mosaics = []
        for size in (16, 64, 1024):
            chunks = 1_000_000 if size == 16 else None
            _, out = run_tiles_and_mosaics(config(path, case, method, tile_size=size, coverage=True),
                                           tmp_path / f"{method}-{size}", max_chunk_bytes=chunks)
            mosaics.append(read_all(out["d"])[0])
        same = all(np.array_equal(mosaics[0], m, equal_nan=True) for m in mosaics[1:])
        record(f"conservative: {case:<30} {method:<9} tile sizes 16/64/1024: {'identical' if same else 'DIFFER'}")
        assert same, method


def test_sum_conserves_the_total_of_a_raster_inside_the_grid(tmp_path, record):
    """Every source pixel's value is shared out in full: over a grid that holds the whole raster the
    total is the input's (0.1-degree counts over Europe onto 25 km equal-area pixels)."""
    data = counts(140, 200)
    path = write_raster(tmp_path / "c.tif", data, "EPSG:4326", Affine(0.1, 0, 5, 0, -0.1, 56), -1.0)
    plan, out = run_tiles_and_mosaics({"target": {"crs": "EPSG:3035", "resolution": 25000}, "tile_size": 32,
                                       "datasets": {"d": {"path": path, "method": "sum", "dtype": "float64"}}},
                                      tmp_path / "run")
    got, nodata, _, _ = read_all(out["d"])
    total_in = float(np.nansum(np.where(data == -1, 0, data), dtype=np.float64))
    total_out = float(got[0][valid(got[0], nodata)].sum())
    record(f"conservative: sum over a grid holding the raster: input {total_in:.10g}, output {total_out:.10g}, "
           f"relative {abs(total_out - total_in) / total_in:.2g}")
    assert abs(total_out - total_in) <= 1e-9 * total_in


def test_fractions_make_a_band_per_class_and_coverage_and_min_coverage_say_how_much_counts(tmp_path, truth):
    path, ref = truth("4326->3035 25km", "fractions")
    cfg = config(path, "4326->3035 25km", "fractions", coverage=True)
    cfg["datasets"]["d"]["classes"] = {1: "forest", 2: "water", 4: "crops"}
    plan, out = run_tiles_and_mosaics(cfg, tmp_path / "run")
    got, nodata, names, dtype = read_all(out["d"])
    assert names == ["forest", "water", "crops", "d_coverage"] and dtype == "float32" and math.isnan(nodata)
    covered = ref.coverage > 0
    for band, c in zip(got[:3], (1, 2, 4)):
        assert np.array_equal(~np.isnan(band), covered)
        assert np.nanmax(np.abs(band - ref.areas[float(c)])) <= 1e-6
    # Class 3, 5 and 6 count in no band; the coverage band holds what every class covers.
    assert np.nanmax(np.abs(got[3] - np.where(covered, np.minimum(ref.coverage, 1), np.nan))) <= 1e-6
    assert np.nanmax(got[0] + got[1] + got[2] - got[3]) <= 1e-6
    # min_coverage: values only where at least half the pixel is covered by valid source pixels.
    cfg = config(path, "4326->3035 25km", "mode", min_coverage=0.5)
    _, out = run_tiles_and_mosaics(cfg, tmp_path / "min")
    mode, nodata, _, _ = read_all(out["d"])
    assert np.array_equal(valid(mode[0], nodata), ref.coverage >= 0.5)


@pytest.mark.parametrize("dataset,message", [
    ({"method": "fractions"}, r"datasets\.d\.classes: method fractions needs the classes"),
    ({"method": "average", "classes": [1, 2]}, r"datasets\.d\.classes: only method fractions has classes"),
    ({"method": "fractions", "classes": [1, 1]}, r"datasets\.d\.classes: a class is given twice"),
    ({"method": "fractions", "classes": [1], "dtype": "uint8"}, r"datasets\.d\.dtype: class fractions are shares"),
    ({"method": "fractions", "classes": [1], "engine": "gdal"}, r"datasets\.d\.engine: GDAL's warper gives no class"),
    ({"method": "bilinear", "engine": "conservative"}, r"the conservative engine does average, sum, mode and"),
])
def test_config_mistakes_about_areas_are_named(tmp_path, dataset, message):
    from workflow_lib.errors import ConfigError

    path = write_raster(tmp_path / "c.tif", classes(40, 40), "EPSG:4326", Affine(0.1, 0, 5, 0, -0.1, 56), 0)
    with pytest.raises(ConfigError, match=message):
        build_plan(validate_config({"target": {"crs": "EPSG:3035", "resolution": 25000},
                                    "datasets": {"d": {"path": path, **dataset}}}), str(tmp_path / ".cache"))


def test_class_fractions_of_files_in_two_utm_zones_are_painted_in_order(tmp_path, monkeypatch):
    """Two class rasters across the border of UTM zones 32 and 33: each file's shares (and
    coverage) are made on their own, and the later file's valid pixels paint over the earlier's."""
    from rasterio.warp import transform as move

    monkeypatch.chdir(tmp_path)
    (tmp_path / "parts").mkdir()
    (x33,), (y33,) = move("EPSG:32632", "EPSG:32633", [709000.0], [5198000.0])
    specs = [("a", "EPSG:32632", 700000.0, 5200000.0), ("b", "EPSG:32633", round(x33, -1), round(y33, -1))]
    paths = [write_raster(f"parts/{name}.tif", classes(200, 240, seed=k), crs, Affine(30, 0, x, 0, -30, y), 0)
             for k, (name, crs, x, y) in enumerate(specs)]
    cfg = {"target": {"crs": "EPSG:3035", "resolution": 200}, "tile_size": 32,
           "datasets": {"d": {"path": "parts/*.tif", "method": "fractions", "classes": [1, 2, 3],
                              "coverage": True}}}
    plan, out = run_tiles_and_mosaics(cfg, tmp_path / "run")
    got, nodata, names, _ = read_all(out["d"])
    assert len(plan.datasets["d"].parts) == 2 and names == ["d_1", "d_2", "d_3", "d_coverage"]
    g = plan.grid
    expected = np.full(got.shape, np.nan)
    for path in paths:
        with rasterio.open(path) as src:
            data = src.read(1)
            ref = footprint_reference(data, data != 0, src.transform, src.crs, g.transform, g.crs, (g.height, g.width),
                                      classes=True, points_per_edge=8)
        later = ref.coverage > 0
        for k, c in enumerate((1, 2, 3)):
            expected[k][later] = ref.areas.get(float(c), np.zeros(later.shape))[later]
        expected[3][later] = np.minimum(ref.coverage, 1)[later]
    assert np.array_equal(np.isnan(got), np.isnan(expected))
    assert np.nanmax(np.abs(got - expected)) <= 1e-6


@pytest.mark.parametrize("case", list(CASES))
def test_interpolated_corners_are_where_proj_puts_them(tmp_path, record, case):
    """engines.corners interpolates PROJ over blocks of the raster, and of 2 points per edge the
    engine makes the middles of the edges from the corners around them (conservative._middle):
    every corner and edge point the engine uses (here all corners, and the edge points of every
    7th row and column) lies within 1e-6 of a target pixel of PROJ's own position, and fails (NaN)
    exactly where PROJ fails. Of 1 point per edge, the edges are straight: the corners alone."""
    from workflow_lib.engines.conservative import _edge_coordinates, _points
    from workflow_lib.engines.corners import Mapping, positions

    path = write_source(tmp_path, case, "average")
    plan = build_plan(validate_config(config(path, case, "average")), str(tmp_path / ".cache"))
    d = plan.datasets["d"]
    h, w, n = d.header.height, d.header.width, d.settings.edge_points
    mapping = Mapping(d.header, plan.grid)
    rows, cols = np.arange(h + 1.0), np.arange(w + 1.0)
    along_rows, along_cols = _edge_coordinates(0, w, max(n, 2)), _edge_coordinates(0, h, max(n, 2))
    hx, hy, vx, vy = _points(mapping, 0, 0, h, w, n)
    checks = [(rows, cols, *positions(mapping, rows, cols))]
    if n > 1:
        checks += [(rows[::7], along_rows, hx[::7], hy[::7]), (along_cols, cols[::7], vx[:, ::7], vy[:, ::7])]
    worst, points = 0.0, 0
    for r, c, got_x, got_y in checks:
        rr, cc = np.meshgrid(r, c, indexing="ij")
        want_x, want_y = mapping.exact(rr, cc)
        if mapping.period:  # the same place a whole turn away
            got_x = got_x - mapping.period * np.round((got_x - want_x) / mapping.period)
        assert np.array_equal(np.isnan(got_x), np.isnan(want_x))
        ok = ~np.isnan(want_x)
        worst = max(worst, float(np.abs(got_x[ok] - want_x[ok]).max()), float(np.abs(got_y[ok] - want_y[ok]).max()))
        points += int(ok.sum())
    record(f"conservative: {case:<30} corners and edge points: {points} against PROJ, largest miss {worst:.2g} px")
    assert worst <= 1e-6, worst
