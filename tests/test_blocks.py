"""The NumPy block engine against GDAL's warper on the same inputs: synthetic data with nodata,
NaN, ties and edges, real rasters, and the engine choice."""

import math

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.enums import Resampling
from rasterio.warp import reproject

from workflow_lib.engines.blocks import reduce_blocks, valid_mask
from workflow_lib.planning.engine import block_geometry, choose_engine
from workflow_lib.config import validate_config
from workflow_lib.errors import ConfigError
from workflow_lib.planning.plan import build_plan

from .helpers import block_reference, compare, read_band, reference_for, run_tiles_and_mosaics, write_raster

SRC = Affine(10, 0, 1000, 0, -10, 5000)
METHODS = ["nearest", "average", "sum", "min", "max", "med", "mode"]


def gdal_blocks(data, kx, ky, method, src_nodata, dst_nodata, dst_dtype):
    """GDAL's warper on the whole array, onto the grid of kx x ky blocks."""
    out = np.full((data.shape[0] // ky, data.shape[1] // kx), dst_nodata, dst_dtype)
    reproject(data, out, src_transform=SRC, src_crs="EPSG:32632", src_nodata=src_nodata,
              dst_transform=SRC @ Affine.scale(kx, ky), dst_crs="EPSG:32632", dst_nodata=dst_nodata,
              resampling=Resampling[method], init_dest_nodata=True, warp_mem_limit=512)
    return out


def synthetic(dtype, src_nodata, kx, ky, seed):
    """Values with missing pixels scattered and in whole blocks; few distinct integers (mode ties)."""
    rng = np.random.default_rng(seed)
    shape = (ky * 30, kx * 28)
    if np.dtype(dtype).kind == "f":
        data = rng.normal(0, 1000, shape).astype(dtype)
    else:
        data = rng.integers(0, 6, shape).astype(dtype)
        if np.dtype(dtype).kind == "u":
            data[rng.random(shape) < 0.05] = np.iinfo(dtype).max  # the default output nodata as a value
    if src_nodata is not None:
        missing = rng.random(shape) < 0.25
        missing[: ky * 3, : kx * 4] = True  # blocks with no value at all
        data[missing] = src_nodata
    if np.dtype(dtype).kind == "f":
        data[rng.random(shape) < 0.05] = np.nan  # NaN is missing too (read_source maps it to nodata)
        if src_nodata is not None and not math.isnan(src_nodata):
            data[np.isnan(data)] = src_nodata
    return data


CASES = [  # dtype, input nodata, output dtype, output nodata
    ("float32", -9999.0, "float32", -9999.0),
    ("float32", math.nan, "float32", math.nan),
    ("float64", math.nan, "float64", math.nan),
    ("uint8", 0, "uint8", 0),
    ("uint8", None, "uint8", 255),  # no nodata: GDAL nudges values off the output's nodata
    ("uint8", 3, "uint8", 3),  # nodata inside the value range
    ("int16", -32768, "int16", -32768),
    ("uint16", 7, "uint16", 7),
    ("int16", -32768, "float32", -32768),
    ("uint8", None, "float32", math.nan),
]
FACTORS = [(1, 1), (2, 2), (4, 4), (3, 3), (5, 4), (2, 3)]


def gdal_is_exact(method: str, dtype: str, kx: int, ky: int) -> bool:
    """Where GDAL 3.10's warper gives the exact block result (on a dyadic grid, as SRC is): not the
    sum over blocks whose sides are not powers of two (neighbours leak in with weights of ~1e-15),
    not the mode of data that float32 cannot hold (GDAL's mode rounds to float32). Both are shown
    in test_where_gdal_is_not_exact_auto_takes_the_exact_block_result."""
    if method == "sum" and (kx & (kx - 1) or ky & (ky - 1)):
        return False
    return not (method == "mode" and dtype in ("float64", "int32", "uint32"))


@pytest.mark.parametrize("dtype,src_nodata,dst_dtype,dst_nodata", CASES)
@pytest.mark.parametrize("kx,ky", FACTORS)
def test_blocks_equal_an_independent_reference_and_gdal_where_gdal_is_exact(dtype, src_nodata, dst_dtype, dst_nodata,
                                                                             kx, ky, record):
    data = synthetic(dtype, src_nodata, kx, ky, seed=kx * 10 + ky)
    valid = valid_mask(data, src_nodata)
    for method in METHODS:
        choice = choose_engine("auto", method, True, SRC, SRC @ Affine.scale(kx, ky))
        assert choice.engine == "numpy", choice.reason
        ours = reduce_blocks(data, valid, kx, ky, method, dst_dtype, dst_nodata)
        # The independent reference: the same semantics, computed another way.
        ref = block_reference(data, valid, kx, ky, method, dst_dtype, dst_nodata)
        assert ours.dtype == ref.dtype
        assert np.array_equal(valid_mask(ours, dst_nodata), valid_mask(ref, dst_nodata)), method
        both = valid_mask(ref, dst_nodata)
        diff = np.abs(ours[both].astype("float64") - ref[both].astype("float64"))
        if method in ("average", "sum") and np.dtype(dst_dtype).kind == "f":
            # Running mean and sums in another order: the last bits.
            scale = reduce_blocks(np.abs(np.where(np.isnan(data), 0, data)), valid, kx, ky, "sum", "float64", 0)[both]
            assert (diff <= 8 * np.finfo(dst_dtype).eps * np.maximum(scale, 1)).all(), (method, diff.max())
        elif method == "average":
            # Integer means: GDAL's running mean puts an exact x.5 just below it (4.4999999999999991),
            # one lower (two where that lands on nodata and is nudged off it).
            exact = block_reference(data, valid, kx, ky, "average", "float64", -1)[both]
            ties = np.isclose(exact % 1.0, 0.5, rtol=0, atol=1e-9)
            assert (diff[~ties] == 0).all() and (diff <= 2).all(), method
        else:
            assert (diff == 0).all(), (method, diff.max())
        if not gdal_is_exact(method, dtype, kx, ky):
            continue
        gdal = gdal_blocks(data, kx, ky, method, src_nodata, dst_nodata, dst_dtype)
        same = (ours == gdal) | (np.isnan(ours.astype(float)) & np.isnan(gdal.astype(float)))
        if method == "sum" and dst_dtype == "float64":
            # GDAL adds in another order than row by row: the last bits of a float64 sum differ.
            # Stated bound: 4 float64 epsilons of the sum of the block's absolute values.
            bound = 4 * np.finfo("float64").eps * reduce_blocks(np.abs(data), valid, kx, ky, "sum", "float64", 0)
            assert np.array_equal(np.isnan(ours), np.isnan(gdal))
            assert (np.abs(ours - gdal)[~np.isnan(gdal)] <= bound[~np.isnan(gdal)]).all()
            record(f"numpy engine: float64 sum {kx}x{ky}: {int((~same).sum())} of {same.size} differ in the last "
                   f"bits, max {np.nanmax(np.abs(ours - gdal)):.3g}")
            continue
        assert same.all(), (method, ours[~same][:5], gdal[~same][:5], choice.reason)


def test_mode_ties_follow_gdal_running_mode():
    # Row-major blocks: 3,1,1,3 -> 1 (1 reaches two first); 1,3,3,1 -> 3; all distinct -> the first.
    blocks = [([3, 1], [1, 3]), ([1, 3], [3, 1]), ([5, 2], [7, 9]), ([9, 7], [2, 5])]
    for dtype in ("uint8", "int16", "float32"):
        data = np.block([[np.array(b, dtype) for b in blocks]] * 2)
        ours = reduce_blocks(data, None, 2, 2, "mode", dtype, 255)
        assert ours[0].tolist() == [1, 3, 5, 9]
        assert np.array_equal(ours, gdal_blocks(np.tile(data, (4, 4)), 2, 2, "mode", None, 255, dtype)[:2, :4])


def test_nearest_picks_the_block_pixel_gdal_picks():
    for k in (2, 3, 4, 5):
        data = np.arange(k * k * 16, dtype="float32").reshape(k * 4, k * 4)
        ours = reduce_blocks(data, None, k, k, "nearest", "float32", -1)
        assert ours[1, 1] == data[k + k // 2, k + k // 2]
        assert np.array_equal(ours, gdal_blocks(data, k, k, "nearest", None, -1, "float32"))


def test_integer_average_rounds_as_gdal_does():
    # Means of exactly x.5 come out of GDAL's running mean just below or at x.5: 4,7,3,3,... has mean
    # 4.5 but GDAL's 4.4999999999999991 rounds to 4, where a plain mean would give 5.
    block = np.array([4, 7, 3, 3, 8, 7, 6, 3, 2, 5, 4, 8, 4, 1, 5, 2], "uint8").reshape(4, 4)
    data = np.tile(block, (4, 4))
    ours = reduce_blocks(data, None, 4, 4, "average", "uint8", 255)
    assert block.mean() == 4.5 and (ours == 4).all()
    assert np.array_equal(ours, gdal_blocks(data, 4, 4, "average", None, 255, "uint8"))


def test_where_gdal_is_not_exact_auto_takes_the_exact_block_result():
    """Aligned blocks always go to NumPy under "auto": where GDAL is exact they agree bit for bit
    (above); here GDAL is not, and the engine keeps the exact result (docs/engines.md)."""
    dst3 = SRC @ Affine.scale(3, 3)
    for method, dtype, dst in [("sum", "float32", dst3), ("mode", "float64", dst3), ("mode", "int32", dst3),
                               ("average", "int8", SRC @ Affine.scale(2)), ("mode", "int16", dst3)]:
        assert choose_engine("auto", method, True, SRC, dst).engine == "numpy", (method, dtype)
    # Non-dyadic pixel sizes (GDAL's weights are then 1 only to within ~1e-11) go to NumPy too.
    odd = Affine(121.53, 0, 1000.7, 0, -164.76, 5000.3)
    assert choose_engine("auto", "average", True, odd, odd @ Affine.scale(2)).engine == "numpy"
    # Very large blocks too (reduced segment by segment, or block by block for med and mode).
    assert choose_engine("auto", "mode", True, SRC, SRC @ Affine.scale(17)).engine == "numpy"
    assert choose_engine("auto", "average", True, SRC, SRC @ Affine.scale(300)).engine == "numpy"
    # GDAL 3.10 writes nodata (5 here) where a signed block's mode is -1; the exact mode is -1.
    signed = np.tile(np.array([[-1, -1], [3, 4]], "int16"), (8, 8))
    assert gdal_blocks(signed, 2, 2, "mode", None, 5, "int16")[4, 4] == 5
    assert reduce_blocks(signed, None, 2, 2, "mode", "int16", 5)[4, 4] == -1
    # GDAL's mode rounds values to float32: two float64 values 1e-9 apart are one class to it.
    close = np.tile(np.array([[1.0, 1.0 + 1e-9], [1.0 + 1e-9, 2.0]]), (8, 8))
    assert gdal_blocks(close, 2, 2, "mode", None, -1.0, "float64")[0, 0] == 1.0
    assert reduce_blocks(close, None, 2, 2, "mode", "float64", -1.0)[0, 0] == 1.0 + 1e-9
    # GDAL's sum over 3x3 blocks depends on the image's size (its window-derived factor): on this
    # 108 x 90 image it lets neighbours in with weights of ~1e-15, so that blocks with no value get
    # ~1e-12 instead of nodata and sums move by up to a float32 epsilon; the exact block sum does not.
    data = np.random.default_rng(5).normal(0, 1000, (90, 108)).astype("float32")
    data[:9, :15] = -9999.0
    ours = reduce_blocks(data, valid_mask(data, -9999.0), 3, 3, "sum", "float32", -9999.0)
    ref = gdal_blocks(data, 3, 3, "sum", -9999.0, -9999.0, "float32")
    exact = data.astype("float64").reshape(30, 3, 36, 3).sum(axis=(1, 3))
    assert (ours[:3, :5] == -9999).all() and (np.abs(ref[:3, :5]) < 1e-9).any()
    valid = ours != -9999
    assert np.array_equal(ours[valid], exact[valid].astype("float32"))
    assert (ours[valid] != ref[valid]).any()
    assert np.allclose(ours[valid], ref[valid], rtol=2e-7, atol=1e-9)


@pytest.mark.parametrize("src,dst,expected", [
    (SRC, SRC @ Affine.scale(4), (4, 4, 0, 0)),
    (SRC, Affine(30, 0, 1020, 0, -20, 4960), (3, 2, 2, 4)),
    (Affine(0.1, 0, 5.3, 0, -0.1, 47.9), Affine(0.4, 0, 5.3, 0, -0.4, 47.9), (4, 4, 0, 0)),  # decimal steps
    (SRC, Affine(25, 0, 1000, 0, -20, 5000), None),  # 2.5 px
    (SRC, Affine(20, 0, 1005, 0, -20, 5000), None),  # corners between input pixels
    (Affine(10, 1, 1000, 0, -10, 5000), SRC @ Affine.scale(2), None),  # rotated
    (Affine(10, 0, 1000, 0, 10, 5000), SRC @ Affine.scale(2), None),  # south-up
])
def test_block_geometry(src, dst, expected):
    geometry, why = block_geometry(src, dst)
    if expected is None:
        assert geometry is None and why
    else:
        assert (geometry.kx, geometry.ky, geometry.col_off, geometry.row_off) == expected


def test_engine_is_chosen_per_dataset_and_can_be_overridden(tmp_path):
    path = write_raster(tmp_path / "a.tif", np.ones((64, 64), "float32"), "EPSG:32632", SRC, -9999.0)

    def plan(**dataset):
        config = {"target": {"crs": dataset.pop("crs", "EPSG:32632"), "resolution": 40}, "tile_size": 16,
                  "datasets": {"d": {"path": path, "method": "average", **dataset}}}
        return build_plan(validate_config(config)).datasets["d"].settings

    assert (plan().engine, plan().engine_reason) == ("numpy", "aligned 4x4 blocks")
    assert plan(method="bilinear").engine == "gdal"
    assert plan(engine="gdal").engine == "gdal"
    assert plan(crs="EPSG:3035").engine == "conservative"  # the area methods across CRSs
    assert plan(crs="EPSG:3035", method="bilinear").engine == "gdal"
    with pytest.raises(ConfigError, match=r"datasets\.d\.engine: the numpy engine cannot be used: the input and the "
                                          r"target are in different CRSs \(.*a\.tif\)"):
        plan(crs="EPSG:3035", engine="numpy")


def real_config(path, band, method, k, engine="auto"):
    """A grid aligned with the file: its own origin and CRS, whole multiples of its pixel size."""
    with rasterio.open(path) as src:
        crs, (rx, ry), t = src.crs.to_wkt(), src.res, src.transform
    return {"target": {"crs": crs, "resolution": [rx * k, ry * k], "origin": [t.c, t.f]}, "tile_size": 48,
            "datasets": {"d": {"path": path, "method": method, "band": band, "engine": engine}}}


def grid_reference(plan, name: str) -> np.ndarray:
    """The independent block reference on the plan's whole grid: the raster placed on a canvas of
    whole blocks under every target pixel (missing beyond its edges), reduced block by block."""
    d, g = plan.datasets[name], plan.grid
    s = d.settings
    with rasterio.open(d.header.path) as src:
        data = src.read(s.band)
        t = src.transform
    kx, ky = round(g.transform.a / t.a), round(g.transform.e / t.e)
    col_off, row_off = round((g.transform.c - t.c) / t.a), round((g.transform.f - t.f) / t.e)
    canvas = np.zeros((g.height * ky, g.width * kx), data.dtype)
    inside = np.zeros(canvas.shape, bool)
    r0, c0 = -row_off, -col_off  # where the raster's first pixel lands on the canvas
    rows = slice(max(r0, 0), min(r0 + data.shape[0], canvas.shape[0]))
    cols = slice(max(c0, 0), min(c0 + data.shape[1], canvas.shape[1]))
    part = data[rows.start - r0:rows.stop - r0, cols.start - c0:cols.stop - c0]
    canvas[rows, cols] = part
    found = valid_mask(part, s.src_nodata)
    inside[rows, cols] = True if found is None else found
    return block_reference(canvas, inside, kx, ky, s.method, s.dst_dtype, s.dst_nodata)


def assert_equals_block_reference(result, reference, settings, method):
    """Exact, except integer means at exact ties (x.5), which GDAL's running mean puts just below."""
    both = valid_mask(reference, settings.dst_nodata)
    assert np.array_equal(valid_mask(result, settings.dst_nodata), both)
    diff = np.abs(result[both].astype("float64") - reference[both].astype("float64"))
    if method in ("average", "sum") and np.dtype(settings.dst_dtype).kind == "f":
        assert (diff <= 1e-12 * np.maximum(np.abs(reference[both].astype("float64")), 1)).all(), diff.max()
    elif method == "average":
        assert (diff <= 2).all() and (diff > 0).mean() < 0.2, diff.max()
    else:
        assert (diff == 0).all(), diff.max()


@pytest.mark.slow
@pytest.mark.parametrize("method,k", [(m, k) for m in METHODS for k in (2, 3, 4)])
def test_real_raster_on_a_dyadic_grid_equals_gdal(tmp_path, real_raster, record, method, k):
    """world.byte (0.125 degree pixels from -180, 75): GDAL's block weights are exact, and the
    engine's tiles and chunks equal GDAL's warp of the whole image."""
    config = real_config(real_raster("rasterio__world.byte.tif"), 1, method, k)
    plan, mosaics = run_tiles_and_mosaics(config, tmp_path, max_chunk_bytes=100_000)
    settings = plan.datasets["d"].settings
    assert settings.engine == "numpy", settings.engine_reason
    result = read_band(mosaics["d"])
    c = compare(result, reference_for(plan, "d").data, settings.dst_nodata)
    record(c.row(f"numpy engine, real: world uint8 {method} x{k}"))
    assert c.compared > 10_000 and c.nodata_mismatch == 0 and c.max_abs_diff == 0, c
    assert_equals_block_reference(result, grid_reference(plan, "d"), settings, method)


REAL = {  # file, band, method, factor: pixel sizes such as 100.01126757344893 m, non-dyadic
    "RGB uint8 nodata 0 mode x3": ("rasterio__RGB.byte.tif", 1, "mode", 3),
    "RGB uint8 nodata 0 average x2": ("rasterio__RGB.byte.tif", 2, "average", 2),
    "cog int16 average x4": ("rio-tiler__cog_int16.tif", 1, "average", 4),
    "cog int16 med x3": ("rio-tiler__cog_int16.tif", 1, "med", 3),
    "cog int16 min x5": ("rio-tiler__cog_int16.tif", 1, "min", 5),
    "cog int16 nearest x4": ("rio-tiler__cog_int16.tif", 1, "nearest", 4),
    "cog int16 mode x2": ("rio-tiler__cog_int16.tif", 1, "mode", 2),
    "mosaic uint16 mode x2": ("rio-tiler__mosaic_cog1.tif", 3, "mode", 2),
    "mosaic uint16 sum x3": ("rio-tiler__mosaic_cog1.tif", 1, "sum", 3),
    "Albers int16 nodata max x2": ("rio-cogeo__image_nodata.tif", 1, "max", 2),
    "float64 NaN average x2": ("rio-cogeo__image_nan.tif", 1, "average", 2),
    "float64 NaN med x3": ("rio-cogeo__image_nan.tif", 1, "med", 3),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(REAL))
def test_real_rasters_on_non_dyadic_grids(tmp_path, real_raster, record, case):
    """Aligned grids whose numbers are not dyadic go to NumPy: its tiles equal the independent
    block reference exactly, and GDAL's whole-image warp where GDAL is exact (picks); GDAL's
    averages and sums differ from the exact ones by GDAL's ~1e-11 weight error (integer means on a
    x.5 tie flip), its signed modes where the mode is -1 (nodata instead)."""
    name, band, method, k = REAL[case]
    path = real_raster(name)
    plan, mosaics = run_tiles_and_mosaics(real_config(path, band, method, k), tmp_path, max_chunk_bytes=100_000)
    settings = plan.datasets["d"].settings
    assert settings.engine == "numpy", settings.engine_reason
    result, reference = read_band(mosaics["d"]), reference_for(plan, "d").data
    assert_equals_block_reference(result, grid_reference(plan, "d"), settings, method)
    c = compare(result, reference, settings.dst_nodata)
    record(c.row(f"numpy engine, real: {case} (vs GDAL)"))
    assert c.compared > 500, c
    if method in ("average", "sum"):
        assert c.nodata_mismatch == 0, c
        if np.dtype(settings.dst_dtype).kind == "f":
            assert c.max_abs_diff <= 1e-9 * np.nanmax(np.abs(reference)), c
        else:  # integer means that GDAL's weight error moves across a rounding boundary (x.5)
            assert c.max_abs_diff <= 1 and c.differing < 0.3 * c.compared, c
    elif method == "mode" and np.dtype(settings.dst_dtype).kind == "i":
        assert c.max_abs_diff == 0 and c.nodata_mismatch < 0.01 * c.compared, c
    else:
        assert c.max_abs_diff == 0 and c.nodata_mismatch == 0, c


@pytest.mark.parametrize("method", METHODS)
def test_edges_of_the_raster_inside_the_grid(tmp_path, method):
    """A raster whose top-left corner lies inside the grid on a block boundary: blocks that reach
    past its edges reduce the pixels they hold, blocks wholly outside are nodata. GDAL 3.10 alone
    gives the row above and the column left of the raster its first row and column; surrounded by
    nodata, GDAL agrees with the engine (and both with the independent reference)."""
    rng = np.random.default_rng(7)
    data = rng.integers(1, 9, (200, 180)).astype("uint16")
    data[rng.random(data.shape) < 0.1] = 0
    path = write_raster(tmp_path / "a.tif", data, "EPSG:32632", Affine(10, 0, 500040, 0, -10, 5199960), 0)
    config = {"target": {"crs": "EPSG:32632", "resolution": 20, "origin": [0, 0],
                         "extent": {"left": 499800, "bottom": 5197800, "right": 502000, "top": 5200200}},
              "tile_size": 16, "datasets": {"d": {"path": path, "method": method}}}
    plan, mosaics = run_tiles_and_mosaics(config, tmp_path, max_chunk_bytes=4_000)
    settings = plan.datasets["d"].settings
    assert settings.engine == "numpy"
    result = read_band(mosaics["d"])
    assert_equals_block_reference(result, grid_reference(plan, "d"), settings, method)
    c = compare(result, reference_for(plan, "d", padded=True).data, 0)
    assert c.nodata_mismatch == 0 and c.max_abs_diff == 0 and c.compared > 8000, c
    if method in ("average", "min", "max", "mode", "med"):
        bleeding = compare(result, reference_for(plan, "d", padded=False).data, 0)
        assert bleeding.nodata_mismatch > 0  # GDAL on the bare raster fills the row above it


def test_chunks_begin_where_the_inputs_rows_of_blocks_begin():
    """A block of the input cut by a chunk boundary would be decompressed twice."""
    from workflow_lib.engines.chunks import row_breaks

    breaks = row_breaks(4096, 244, 64, 4, 512)  # the tile starts 64 input rows into a block row
    assert breaks[0] == 0 and breaks[-1] == 4096
    assert all((64 + r * 4) % 512 == 0 for r in breaks[1:-1])
    assert max(b - a for a, b in zip(breaks, breaks[1:])) <= 244
    assert row_breaks(100, 30, 0, 4, 512) == [0, 30, 60, 90, 100]  # budget below one block row


@pytest.mark.parametrize("dtype", ["uint8", "int8", "uint16", "int16"])
@pytest.mark.parametrize("k", [2, 3, 4, 5])
def test_sorted_mode_equals_the_pairwise_mode_over_the_whole_value_range(dtype, k):
    """Complete blocks of small integers take the sorting-network mode, blocks with a missing pixel
    the pairwise one: both equal GDAL's mode, ties and extreme values included."""
    from workflow_lib.engines.blocks import _mode, _mode_sorted

    info = np.iinfo(dtype)
    rng = np.random.default_rng(k)
    choices = np.array([info.min, info.min + 1, -1 if info.min < 0 else 7, 0, info.max - 1, info.max], dtype)
    data = rng.choice(choices, (k * 40, k * 50))
    nodata = 5  # not among the values
    ours = reduce_blocks(data, None, k, k, "mode", dtype, nodata)  # complete blocks: sorting network
    if info.min == 0:  # signed modes are left to GDAL, which writes nodata where the mode is -1
        assert np.array_equal(ours, gdal_blocks(data, k, k, "mode", None, nodata, dtype))
    views = [data[dy::k, dx::k] for dy in range(k) for dx in range(k)]
    shape = (40, 50)
    masks = [np.ones(shape, bool)] * len(views)  # forces the pairwise path
    assert np.array_equal(_mode_sorted(views, shape)[0], _mode(views, masks, shape)[0])


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("kx,ky", [(17, 16), (20, 20), (33, 9)])
def test_large_blocks_equal_the_independent_reference(method, kx, ky):
    """Blocks of more than 256 pixels are reduced segment by segment (block by block for med and
    mode), over clipped data with partial blocks at its edges: the same results as the reference."""
    from workflow_lib.engines.blocks import reduce_large_blocks

    rng = np.random.default_rng(kx + ky)
    h, w = 5, 7
    data = rng.integers(0, 6, (ky * h, kx * w)).astype("int16")
    data[rng.random(data.shape) < 0.2] = -1  # nodata
    valid = data != -1
    valid[:ky, :kx] = False  # a block with no value
    # The chunk's source starts inside the first block and ends inside the last (clipped data).
    c0, r0 = 3, 5
    clipped, clipped_valid = data[r0:, c0:-4], valid[r0:, c0:-4]
    col_starts = np.maximum(np.arange(w) * kx, c0) - c0
    row_starts = np.maximum(np.arange(h) * ky, r0) - r0
    centre = (np.arange(h) * ky + ky // 2 - r0, np.arange(w) * kx + kx // 2 - c0)
    ours = reduce_large_blocks(clipped, clipped_valid, row_starts, col_starts, centre, method, "float32", -9999.0)
    full_valid = valid.copy()
    full_valid[:r0, :] = False
    full_valid[:, :c0] = False
    full_valid[:, data.shape[1] - 4:] = False
    ref = block_reference(data, full_valid, kx, ky, method, "float32", -9999.0)
    np.testing.assert_allclose(ours, ref, rtol=1e-6)


@pytest.mark.parametrize("dtype", ["uint8", "int16", "uint16", "int32"])
@pytest.mark.parametrize("n", [17, 64, 324])
def test_mode_by_sort_equals_the_pairwise_running_mode(dtype, n):
    """Many positions (coarse windows) take the sort; it must pick exactly what the pairwise
    comparison picks (GDAL's running mode, checked against GDAL above), ties and holes included."""
    from workflow_lib.engines import blocks

    rng = np.random.default_rng(n)
    shape = (40, 30)
    low = -3 if np.dtype(dtype).kind == "i" else 0
    views = [rng.integers(low, low + 5, shape).astype(dtype) for _ in range(n)]
    masks = [rng.random(shape) > 0.4 for _ in range(n)]
    for m in masks:
        m[:3, :3] = False  # pixels with no valid value at all
    got, found = blocks._mode_by_sort(views, masks, shape)
    expected, expected_found = _pairwise_mode(blocks, views, masks, shape)
    assert np.array_equal(found, expected_found) and not found[:3, :3].any()
    assert np.array_equal(got[found], expected[found])


def _pairwise_mode(blocks, views, masks, shape):
    saved = blocks._PAIRWISE_MAX
    blocks._PAIRWISE_MAX = 10 ** 9
    try:
        return blocks._mode(views, masks, shape)
    finally:
        blocks._PAIRWISE_MAX = saved
