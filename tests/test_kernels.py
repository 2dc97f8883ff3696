"""The compiled block kernels give the NumPy block engine's results bit for bit (engines.blocks is
itself compared with GDAL's warper in test_blocks.py and test_accuracy.py)."""

from __future__ import annotations

import math
import zlib

import numpy as np
import pytest

from workflow_lib.engines.blocks import reduce_blocks, valid_mask
from workflow_lib.engines.kernels import reduce_blocks_compiled

METHODS = ("average", "sum", "min", "max", "med", "mode", "nearest")


def _data(dtype: str, shape, rng, classes: int | None = None) -> np.ndarray:
    if classes:  # few values: many ties for mode and median
        return rng.integers(0, classes, shape).astype(dtype)
    if np.dtype(dtype).kind == "f":
        return (rng.normal(100, 50, shape)).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(max(info.min, -50_000), min(info.max, 50_000), shape, endpoint=True).astype(dtype)


def _reference(data, src_nodata, inside, kx, ky, method, dst_dtype, dst_nodata):
    valid = valid_mask(data, src_nodata)
    if inside is not None:
        valid = inside if valid is None else valid & inside
    return reduce_blocks(data, valid, kx, ky, method, dst_dtype, dst_nodata)


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b, equal_nan=a.dtype.kind == "f")


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("dtype,dst_dtype,src_nodata,dst_nodata,classes", [
    ("float32", "float32", -9999.0, -9999.0, None),
    ("float32", "float32", None, math.nan, None),  # NaN gaps only
    ("float64", "float64", math.nan, math.nan, None),
    ("uint8", "uint8", 0, 0, 6),
    ("uint8", "uint8", None, 255, 4),
    ("int8", "int8", -128, -128, 5),
    ("int16", "int16", -32768, -32768, None),
    ("uint16", "float32", 65535, -1.0, 9),
    ("int32", "int32", -1, -1, 7),
    ("uint32", "float64", None, -1.0, None),
    ("float32", "uint8", -9999.0, 255, None),  # integer output of real input: rounding, nudging off nodata
])
@pytest.mark.parametrize("k", [(2, 2), (4, 4), (3, 5), (16, 16)])
def test_compiled_equals_numpy(method, dtype, dst_dtype, src_nodata, dst_nodata, classes, k):
    kx, ky = k
    rng = np.random.default_rng(zlib.crc32(repr((method, dtype, dst_dtype, src_nodata, k)).encode()))  # the same every run
    shape = (ky * 7, kx * 9)
    data = _data(dtype, shape, rng, classes)
    if dst_dtype == "uint8" and method in ("sum",):
        data = np.abs(data) / 20
        data = data.astype(dtype)
    # Missing pixels: scattered, and whole blocks missing.
    holes = rng.random(shape) < 0.2
    holes[:ky, :kx] = True
    if src_nodata is not None and not math.isnan(src_nodata):
        data[holes] = data.dtype.type(src_nodata)
    elif data.dtype.kind == "f":
        data[holes] = np.nan
    if data.dtype.kind == "f":
        data[rng.random(shape) < 0.05] = np.nan  # NaN beside a nodata value is missing too
    for inside in (None, rng.random(shape) > 0.1):
        ours = reduce_blocks_compiled(data, inside, src_nodata, kx, ky, method, dst_dtype, dst_nodata)
        ref = _reference(data, src_nodata, inside, kx, ky, method, dst_dtype, dst_nodata)
        assert _same(ours, ref), (method, dtype, k, np.argwhere(~((ours == ref) | (ours != ours)))[:5])


def test_running_mean_is_gdals_sequence_of_operations():
    """Each block's mean is mean += (value - mean) * (1 / n) in double precision, in row-major
    order: checked against that loop written out in Python, not against another vectorisation."""
    rng = np.random.default_rng(7)
    data = rng.normal(0, 1e6, (6, 9)).astype(np.float32)
    ours = reduce_blocks_compiled(data, None, None, 3, 3, "average", "float64", -1.0)
    for i in range(2):
        for j in range(3):
            mean, n = 0.0, 0
            for v in data[3 * i:3 * i + 3, 3 * j:3 * j + 3].ravel():
                n += 1
                mean += (float(v) - mean) * (1.0 / n)
            assert ours[i, j] == mean


def test_mode_tie_goes_to_the_value_whose_last_occurrence_comes_first():
    # 1 occurs at positions 0 and 3, 2 at 1 and 2: 2 reaches a count of 2 first, so 2 wins.
    data = np.array([[1, 2], [2, 1]], np.uint8)
    assert reduce_blocks_compiled(data, None, None, 2, 2, "mode", "uint8", 255)[0, 0] == 2
    wide = data.astype(np.int32)
    assert reduce_blocks_compiled(wide, None, None, 2, 2, "mode", "int32", -1)[0, 0] == 2


def test_large_uint8_class_blocks_equal_numpy():
    """The benchmark's case: uint8 classes, mode x4, complete blocks (the NumPy sorting network)."""
    rng = np.random.default_rng(3)
    data = rng.integers(1, 13, (512, 768)).astype(np.uint8)
    ours = reduce_blocks_compiled(data, None, None, 4, 4, "mode", "uint8", 0)
    assert _same(ours, reduce_blocks(data, None, 4, 4, "mode", "uint8", 0))
