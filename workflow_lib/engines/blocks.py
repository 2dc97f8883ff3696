"""The NumPy block engine: aligned integer-factor resampling within one CRS, with GDAL's semantics.

When the target grid's pixels are whole blocks of kx x ky input pixels (same CRS, no rotation,
origins on each other's pixel corners), every output pixel is a reduction of exactly one block,
with weight 1 for each input pixel. This engine computes those reductions with strided NumPy views
(one pass per position in the block, each over output-sized arrays) and reproduces what GDAL 3.10's
warper gives for the same inputs (measured with ``rasterio.warp.reproject``, see tests):

- missing pixels (nodata, NaN, outside the raster) are skipped; the output is nodata only where
  every pixel of the block is missing;
- ``nearest`` takes the block's pixel (ky // 2, kx // 2), nodata if that pixel is missing;
- ``average`` is GDAL's running mean in double precision over the block's valid pixels in
  row-major order, mean += (value - mean) * (1 / n), bit for bit; ``sum`` adds them in double
  precision (GDAL's order differs: float64 sums may differ in their last bits); ``med`` takes the
  lower median (sorted[(n - 1) // 2]);
- ``mode`` takes the most frequent value; among equally frequent values, the one whose last
  occurrence in row-major order comes first (GDAL keeps a running mode, replaced only when
  another value's count becomes strictly larger);
- integer outputs are rounded half up, clamped to the type, and (except for ``nearest``) nudged
  off the nodata value: nodata - 1, or nodata + 1 when nodata is the type's minimum.

GDAL's behaviour at a raster's top and left edges is reproduced where the blocks are read
(``resample.read_blocks``); the cases where GDAL's result is not the exact block result are left to
GDAL by ``choose_engine``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from affine import Affine

BLOCK_METHODS = ("nearest", "average", "sum", "min", "max", "med", "mode")
ENGINE_LABELS = {"numpy": "numpy-blocks", "gdal": "gdal-warp"}
# Relative tolerance for calling a resolution ratio an integer and an offset a whole pixel: headers
# hold decimal resolutions (0.1, 1/3600) that are not exact in binary.
_ALIGN_RTOL = 1e-9


@dataclass(frozen=True)
class BlockGeometry:
    """Target pixels are kx x ky input pixels; the target origin is input pixel (col_off, row_off)."""

    kx: int
    ky: int
    col_off: int
    row_off: int


def _whole(value: float) -> int | None:
    nearest = round(value)
    return int(nearest) if abs(value - nearest) <= _ALIGN_RTOL * max(1.0, abs(value)) else None


def block_geometry(src_transform: Affine, dst_transform: Affine) -> tuple[BlockGeometry | None, str]:
    """How ``dst_transform``'s pixels sit on ``src_transform``'s, or None and why they do not align."""
    a, b, c, d, e, f = tuple(src_transform)[:6]
    A, B, C, D, E, F = tuple(dst_transform)[:6]
    if b or d or B or D:
        return None, "the input's geotransform is rotated or sheared"
    if e >= 0 or E >= 0 or a <= 0 or A <= 0:
        return None, "the input is not north-up"
    kx, ky = _whole(A / a), _whole(E / e)
    if not kx or not ky:
        return None, f"target pixels are {A / a:.6g} x {E / e:.6g} input pixels, not whole numbers"
    col_off, row_off = _whole((C - c) / a), _whole((F - f) / e)
    if col_off is None or row_off is None:
        return None, "the target grid's pixel corners fall between the input's"
    return BlockGeometry(kx, ky, col_off, row_off), f"aligned {kx}x{ky} blocks"


def choose_engine(
    requested: str, method: str, same_crs: bool, src_dtype: str, src_transform: Affine, dst_transform: Affine
) -> tuple[str, str]:
    """The engine for a dataset ("numpy" or "gdal") and why. ``requested``: auto, numpy or gdal.

    "auto" picks NumPy only where its result has been shown equal to GDAL's; "numpy" may be asked
    for in three more cases, where it computes the exact block result and GDAL does not (README,
    "Engines"): average and sum on geotransforms with non-dyadic numbers (GDAL's weights are then
    1 only to within ~1e-11), sums over blocks whose sides are not powers of two (GDAL lets
    neighbouring pixels in with weights of ~1e-15), and the mode of data that float32 cannot hold
    exactly (GDAL's mode rounds values to float32). Outside the aligned case asking for NumPy is an error, so that a config
    never silently gets something else than it asked for.
    """
    if requested == "gdal":
        return "gdal", "asked for in the config"
    geometry = None
    if not same_crs:
        reason = "the input and the target are in different CRSs"
    elif method not in BLOCK_METHODS:
        reason = f"method {method} is an interpolation, not a block reduction"
    else:
        geometry, reason = block_geometry(src_transform, dst_transform)
    if geometry is None:
        if requested == "numpy":
            raise ValueError(f"the numpy engine cannot be used: {reason}")
        return "gdal", reason
    if requested == "numpy":
        return "numpy", f"{reason}, asked for in the config"
    if method in ("average", "sum") and not all(map(_dyadic, (*src_transform[:6], *dst_transform[:6]))):
        return "gdal", (f"{reason}, but GDAL's {method} weights are then only 1 to within ~1e-11 (the "
                        "geotransforms are not whole multiples of 1/65536): it differs from the exact block "
                        f"{method} in the last bits and in integer rounding")
    if method == "sum" and not (_power_of_two(geometry.kx) and _power_of_two(geometry.ky)):
        return "gdal", f"{reason}: GDAL's sum over blocks whose sides are not powers of two is not a plain sum"
    if src_dtype == "int8":  # not compared with GDAL in the tests
        return "gdal", f"{reason}, but the numpy engine is not verified against GDAL for int8"
    if method == "mode" and src_dtype not in _MODE_LIKE_GDAL:
        return "gdal", (f"{reason}, but GDAL's mode of {src_dtype} differs from the exact mode (it rounds "
                        "values to float32, and writes nodata where the mode of signed integers is -1)")
    return "numpy", reason


# Data types whose mode GDAL computes exactly: float32 holds every value (GDAL's mode works on
# float32) and no value is -1 (GDAL 3.10 writes nodata where a signed block's mode is -1; measured).
_MODE_LIKE_GDAL = {"uint8", "uint16", "float32"}


def _dyadic(x: float) -> bool:
    """Whether ``x`` is a whole multiple of 2**-16 of moderate size: sums and products of such
    coordinates are exact in double precision, and so are GDAL's block weights (measured)."""
    return abs(x) < 2.0**36 and (x * 65536.0).is_integer()


def _power_of_two(n: int) -> bool:
    return n & (n - 1) == 0


def valid_mask(data: np.ndarray, src_nodata: float | None) -> np.ndarray | None:
    """Where ``data`` holds a value (None: everywhere)."""
    if src_nodata is None:
        return ~np.isnan(data) if data.dtype.kind == "f" else None
    if math.isnan(src_nodata):
        return ~np.isnan(data)
    mask = data != data.dtype.type(src_nodata)
    if data.dtype.kind == "f":
        np.logical_and(mask, data == data, out=mask)  # NaN is missing too (NaN != NaN)
    return mask


def reduce_blocks(
    data: np.ndarray,
    valid: np.ndarray | None,
    kx: int,
    ky: int,
    method: str,
    dst_dtype: str,
    dst_nodata: float,
) -> np.ndarray:
    """Reduce every ky x kx block of ``data`` (whose shape is a multiple of the block) to one pixel.

    ``valid`` marks the pixels that count (None: all of them).
    """
    h, w = data.shape[0] // ky, data.shape[1] // kx
    if (h * ky, w * kx) != data.shape:
        raise ValueError(f"data of shape {data.shape} is not made of whole {ky}x{kx} blocks")
    if kx == ky == 1:
        method = "nearest"  # GDAL copies pixels for pixels, as nearest (no nudging off nodata)
    views = [data[dy::ky, dx::kx] for dy in range(ky) for dx in range(kx)]
    masks = None if valid is None else [valid[dy::ky, dx::kx] for dy in range(ky) for dx in range(kx)]
    if method == "nearest":
        centre = (ky // 2) * kx + kx // 2
        found = np.ones((h, w), bool) if masks is None else masks[centre]
        return _to_output(views[centre], found, dst_dtype, dst_nodata, avoid_nodata=False)
    if masks is None:
        values, found = _reduce(method, views, None, (h, w))
    else:
        # Most blocks are usually complete: reduce every block as if it were (the fast path, no
        # masks), then again, with masks, only the blocks that miss a pixel.
        complete = masks[0].copy()
        for mask in masks[1:]:
            complete &= mask
        values, found = _reduce(method, views, None, (h, w))
        partial = np.nonzero(~complete)
        if partial[0].size:
            sub_values, sub_found = _reduce(method, [v[partial] for v in views], [m[partial] for m in masks],
                                            partial[0].shape)
            values[partial] = sub_values
            found[partial] = sub_found
    return _to_output(values, found, dst_dtype, dst_nodata)


def _reduce(method: str, views, masks, shape) -> tuple[np.ndarray, np.ndarray]:
    """Block values (writable) and where a block had any valid pixel, for one method."""
    if method == "mode":
        return _mode(views, masks, shape)
    if method == "med":
        return _median(views, masks, shape)
    count = np.zeros(shape, np.int32)
    if method == "average":
        acc = _running_mean(views, masks, count)
    elif method == "sum":
        acc = np.zeros(shape, np.float64)
        for i, view in enumerate(views):  # GDAL's order: rows of the block, top to bottom
            _accumulate(np.add, acc, view, None if masks is None else masks[i], count)
    elif method in ("min", "max"):
        acc = np.full(shape, np.inf if method == "min" else -np.inf)
        func = np.minimum if method == "min" else np.maximum
        for i, view in enumerate(views):
            _accumulate(func, acc, view, None if masks is None else masks[i], count)
    else:
        raise ValueError(f"method {method} is not a block reduction")
    return acc, count > 0


def _accumulate(func, acc: np.ndarray, view: np.ndarray, mask: np.ndarray | None, count: np.ndarray) -> None:
    if mask is None:
        func(acc, view, out=acc)
        count += 1
    else:
        func(acc, view, out=acc, where=mask)
        count += mask


def _running_mean(views, masks, count: np.ndarray) -> np.ndarray:
    """GDAL 3.10's average: a running mean, mean += (value - mean) * (1 / n), in double precision over the
    block's valid pixels in row-major order (which is why a mean of 4.5 can come out 4.4999999999999991,
    and round to 4 in an integer output)."""
    step = np.empty(count.shape, np.float64)
    if masks is None:  # complete blocks: the i-th value has weight ratio 1 / i, the same everywhere
        mean = views[0].astype(np.float64)  # 0 + (v - 0) * (1 / 1)
        for i, view in enumerate(views[1:], 2):
            np.subtract(view, mean, out=step)
            step *= 1.0 / i
            mean += step
        count += len(views)
        return mean
    mean = np.zeros(count.shape, np.float64)
    ratio = np.empty(count.shape, np.float64)
    for i, view in enumerate(views):
        mask = None if masks is None else masks[i]
        if mask is None:
            count += 1
        else:
            count += mask
        where = True if mask is None else mask
        np.divide(1.0, count, out=ratio, where=where)  # GDAL multiplies by weight / total weight
        np.subtract(view, mean, out=step, where=where)
        np.multiply(step, ratio, out=step, where=where)
        np.add(mean, step, out=mean, where=where)
    return mean


def _median(views, masks, shape) -> tuple[np.ndarray, np.ndarray]:
    stacked = np.empty((*shape, len(views)), np.float64)
    for i, view in enumerate(views):
        stacked[..., i] = view
        if masks is not None:
            stacked[..., i][~masks[i]] = np.nan  # sorts after every number
    stacked.sort(axis=-1)
    count = np.sum(~np.isnan(stacked), axis=-1) if masks is not None or views[0].dtype.kind == "f" else None
    if count is None:
        count = np.full(shape, len(views))
    index = np.maximum(count - 1, 0) // 2
    return np.take_along_axis(stacked, index[..., None], axis=-1)[..., 0], count > 0


# Small integer types whose (value, position) pairs pack into one sortable unsigned key:
# key type and the offset that makes every value non-negative.
_MODE_KEYS = {"uint8": (np.uint16, 0), "int8": (np.uint16, 128), "uint16": (np.uint32, 0), "int16": (np.uint32, 32768)}


def _mode(views, masks, shape) -> tuple[np.ndarray, np.ndarray]:
    """GDAL's running mode, vectorised: a value can only win at its last occurrence in the block,
    and a later position wins only with a strictly larger count."""
    n = len(views)
    if masks is None and views[0].dtype.name in _MODE_KEYS and n <= 256:
        return _mode_sorted(views, shape)
    count_type = np.uint8 if n < 255 else np.uint16 if n < 65535 else np.uint32
    # Each pair of positions is compared once: counts[p] is how many other valid positions hold
    # view p's value, later[p] whether one of them comes after p.
    counts = [np.zeros(shape, count_type) for _ in range(n)]
    later = [np.zeros(shape, bool) for _ in range(n)]
    same = np.empty(shape, bool)
    for p in range(n):
        for q in range(p + 1, n):
            np.equal(views[p], views[q], out=same)
            if masks is not None:
                same &= masks[p]
                same &= masks[q]
            np.add(counts[p], same, out=counts[p], casting="unsafe")
            np.add(counts[q], same, out=counts[q], casting="unsafe")
            later[p] |= same
    best = np.zeros(shape, views[0].dtype)
    best_count = np.zeros(shape, np.int64)
    for p in range(n):
        wins = ~later[p] & (counts[p].astype(np.int64) + 1 > best_count)
        if masks is not None:
            wins &= masks[p]
        best[wins] = views[p][wins]
        best_count[wins] = counts[p][wins].astype(np.int64) + 1
    return best, best_count > 0


def _mode_sorted(views, shape) -> tuple[np.ndarray, np.ndarray]:
    """The same mode for complete blocks of small integers, faster (measured 1.7x on uint8 4x4
    blocks): each block's (value << 8 | position) keys are sorted by a sorting network of
    vectorised compare-exchanges; runs of one value then end at its last occurrence, and the
    longest run wins, ties going to the run that ends first, as in GDAL's running mode."""
    n = len(views)
    key_type, offset = _MODE_KEYS[views[0].dtype.name]
    keys = [((view.astype(np.int32) + offset) << 8 | i).astype(key_type) for i, view in enumerate(views)]
    low = np.empty(shape, key_type)
    for a, b in _sorting_network(n):
        np.minimum(keys[a], keys[b], out=low)
        np.maximum(keys[a], keys[b], out=keys[b])
        keys[a], low = low, keys[a]
    # Scan the sorted keys; every array is updated in place, in the narrowest type that holds it.
    values = [key >> 8 for key in keys]
    best = np.zeros(shape, key_type)
    best_score = np.zeros(shape, np.int32)  # run length * 256 + (255 - last position), > 0 at run ends
    run = np.zeros(shape, np.int32)
    same = np.zeros(shape, bool)
    score = np.empty(shape, np.int32)
    wins = np.empty(shape, bool)
    for i in range(n):
        np.multiply(run, same, out=run)  # a new value starts a new run
        run += 1
        np.bitwise_and(keys[i], 0xFF, out=score, casting="unsafe")
        np.subtract(run * 256 + 255, score, out=score)
        if i + 1 < n:
            np.equal(values[i], values[i + 1], out=same)
            score[same] = 0  # not the end of its run
        np.greater(score, best_score, out=wins)
        np.copyto(best, values[i], where=wins)
        np.maximum(best_score, score, out=best_score)
    return (best.astype(np.int32) - offset).astype(views[0].dtype), np.ones(shape, bool)


def _sorting_network(n: int) -> list[tuple[int, int]]:
    """Batcher's odd-even merge sort network for n inputs: the pairs to compare-exchange, in order."""
    pairs = []
    p = 1
    while p < n:
        k = p
        while k >= 1:
            for j in range(k % p, n - k, 2 * k):
                for i in range(min(k, n - j - k)):
                    if (i + j) // (2 * p) == (i + j + k) // (2 * p):
                        pairs.append((i + j, i + j + k))
            k //= 2
        p *= 2
    return pairs


def _to_output(
    values: np.ndarray, found: np.ndarray, dst_dtype: str, dst_nodata: float, avoid_nodata: bool = True
) -> np.ndarray:
    """Cast to the output type as GDAL's warper does, nodata where nothing was found."""
    dtype = np.dtype(dst_dtype)
    if dtype.kind == "f":
        out = values.astype(dtype)
    else:
        info = np.iinfo(dtype)
        if values.dtype.kind in "iu":
            v = values.astype(np.int64)
        else:  # GDAL rounds half up; blocks with nothing found hold no number and become nodata below
            v = np.floor(np.where(found, values, 0.0).astype(np.float64) + 0.5)
        out = np.clip(v, info.min, info.max).astype(dtype)
        if avoid_nodata:
            nodata = dtype.type(dst_nodata)
            out[out == nodata] = nodata + 1 if nodata == info.min else nodata - 1
    out[~found] = dtype.type(dst_nodata) if not (dtype.kind == "f" and math.isnan(dst_nodata)) else np.nan
    return out
