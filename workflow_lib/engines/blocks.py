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

Pixels beyond the raster's edges are missing like nodata: a block that reaches past the edge is the
reduction of the pixels it holds, and a block wholly outside is nodata. (GDAL 3.10 gives the target
row above, and the column left of, a raster whose edge falls on a block edge the reduction of the
raster's first row or column, and overweights edge pixels in averages: the workflow does not copy
that; docs/accuracy.md.) Where GDAL's own result is not the exact block result (non-dyadic
geotransforms, sums over blocks whose sides are not powers of two, modes of data that float32
cannot hold, signed modes of -1) this engine keeps the exact one: docs/engines.md.
"""

from __future__ import annotations

import math

import numpy as np

from workflow_lib.domain import Method

# Blocks of more pixels than this are reduced segment by segment (reduce_large_blocks) instead of
# one pass per position in the block (reduce_blocks), whose Python loop would run kx x ky times.
LARGE_BLOCK = 256


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


def block_centres(n: int, k: int) -> np.ndarray:
    """The centre of each run of ``k`` of ``n`` positions (the last run may be shorter: the centre
    of its part): the pixels that overview levels take for categorical data."""
    starts = np.arange(0, n, k)
    return starts + np.minimum(k, n - starts) // 2


def block_shape(data: np.ndarray, kx: int, ky: int) -> tuple[int, int]:
    """The (rows, columns) of blocks in ``data``, whose shape must be a multiple of the block."""
    h, w = data.shape[0] // ky, data.shape[1] // kx
    if (h * ky, w * kx) != data.shape:
        raise ValueError(f"data of shape {data.shape} is not made of whole {ky}x{kx} blocks")
    return h, w


def reduce_blocks_masked(
    data: np.ndarray,
    valid: np.ndarray | None,
    src_nodata: float | None,
    kx: int,
    ky: int,
    method: Method,
    dst_dtype: str,
    dst_nodata: float,
) -> np.ndarray:
    """reduce_blocks of the pixels that are not missing: not NaN, not ``src_nodata``, and True in
    ``valid`` (the pixels beyond the raster's edge; None: no such pixels). The NumPy twin of
    engines.kernels.reduce_blocks_compiled, with the same arguments."""
    if src_nodata is not None or data.dtype.kind == "f":
        own = valid_mask(data, src_nodata)
        valid = own if valid is None else (valid & own if own is not None else valid)
    return reduce_blocks(data, valid, kx, ky, method, dst_dtype, dst_nodata)


def reduce_blocks(
    data: np.ndarray,
    valid: np.ndarray | None,
    kx: int,
    ky: int,
    method: Method,
    dst_dtype: str,
    dst_nodata: float,
) -> np.ndarray:
    """Reduce every ky x kx block of ``data`` (whose shape is a multiple of the block) to one pixel.

    ``valid`` marks the pixels that count (None: all of them).
    """
    method = Method(method)
    h, w = block_shape(data, kx, ky)
    if kx == ky == 1:
        method = Method.NEAREST  # GDAL copies pixels for pixels, as nearest (no nudging off nodata)
    views = [data[dy::ky, dx::kx] for dy in range(ky) for dx in range(kx)]
    masks = None if valid is None else [valid[dy::ky, dx::kx] for dy in range(ky) for dx in range(kx)]
    if method is Method.NEAREST:
        centre = (ky // 2) * kx + kx // 2
        found = np.ones((h, w), bool) if masks is None else masks[centre]
        return to_output(views[centre], found, dst_dtype, dst_nodata, avoid_nodata=False)
    if masks is None:
        values, found = reduce_views(method, views, None, (h, w))
    else:
        # Most blocks are usually complete: reduce every block as if it were (the fast path, no
        # masks), then again, with masks, only the blocks that miss a pixel.
        complete = masks[0].copy()
        for mask in masks[1:]:
            complete &= mask
        values, found = reduce_views(method, views, None, (h, w))
        partial = np.nonzero(~complete)
        if partial[0].size:
            sub_values, sub_found = reduce_views(method, [v[partial] for v in views],
                                                 [m[partial] for m in masks], partial[0].shape)
            values[partial] = sub_values
            found[partial] = sub_found
    return to_output(values, found, dst_dtype, dst_nodata)


def reduce_views(method: Method, views, masks, shape) -> tuple[np.ndarray, np.ndarray]:
    """Block values (writable) and where a block had any valid pixel, for one method: ``views``
    are the positions of the blocks in row-major order, ``masks`` (or None) where each is valid.
    The window engine (engines.windows) reduces its gathered pixels by the same rules."""
    if method is Method.MODE:
        return _mode(views, masks, shape)
    if method is Method.MED:
        return _median(views, masks, shape)
    count = np.zeros(shape, np.int32)
    if method is Method.AVERAGE:
        acc = _running_mean(views, masks, count)
    elif method is Method.SUM:
        acc = np.zeros(shape, np.float64)
        for i, view in enumerate(views):  # GDAL's order: rows of the block, top to bottom
            _accumulate(np.add, acc, view, None if masks is None else masks[i], count)
    elif method in (Method.MIN, Method.MAX):
        acc = np.full(shape, np.inf if method is Method.MIN else -np.inf)
        func = np.minimum if method is Method.MIN else np.maximum
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
    if n > _PAIRWISE_MAX and views[0].dtype.kind in "iu" and views[0].dtype.itemsize <= 4 and n < 2 ** 15:
        return _mode_by_sort(views, masks, shape)
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


# Up to this many positions, comparing every pair of them is cheapest; beyond, its n^2 / 2 passes
# lose to one sort (measured: world.byte to 2.1 degrees, 18 x 18 windows, 12 s down to 0.6 s).
_PAIRWISE_MAX = 16


def _mode_by_sort(views, masks, shape) -> tuple[np.ndarray, np.ndarray]:
    """The same running mode for many positions, masked or not, of integers up to 32 bits: the
    (value << bits | position) keys of each target pixel are sorted in one int64 array (invalid
    pixels last), then scanned as in _mode_sorted. Memory: 8 bytes per position and pixel, which
    window_cost counts."""
    n = len(views)
    dtype = views[0].dtype
    offset = -int(np.iinfo(dtype).min)
    bits = max(1, (n - 1).bit_length())
    invalid = np.iinfo(np.int64).max
    keys = np.empty((*shape, n), np.int64)
    for i, view in enumerate(views):
        key = keys[..., i]
        key[...] = view
        key += offset
        np.left_shift(key, bits, out=key)
        np.bitwise_or(key, i, out=key)
        if masks is not None:
            key[~masks[i]] = invalid
    keys.sort(axis=-1)
    low = (1 << bits) - 1
    best = np.zeros(shape, np.int64)
    best_score = np.zeros(shape, np.int64)  # run length * n + (n - 1 - last position), > 0 at run ends
    run = np.zeros(shape, np.int64)
    same = np.zeros(shape, bool)
    value = keys[..., 0] >> bits
    for i in range(n):
        key = keys[..., i]
        np.multiply(run, same, out=run)  # a new value starts a new run
        run += 1
        score = run * n + (n - 1) - (key & low)
        score[key == invalid] = 0
        if i + 1 < n:
            following = keys[..., i + 1] >> bits
            np.equal(value, following, out=same)
            score[same] = 0  # not the end of its run
        wins = score > best_score
        np.copyto(best, value, where=wins)
        np.maximum(best_score, score, out=best_score)
        if i + 1 < n:
            value = following
    return (best - offset).astype(dtype), best_score > 0


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


def to_output(
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


def reduce_large_blocks(
    data: np.ndarray,
    valid: np.ndarray | None,
    row_starts: np.ndarray,
    col_starts: np.ndarray,
    centre: tuple[np.ndarray, np.ndarray],
    method: Method,
    dst_dtype: str,
    dst_nodata: float,
) -> np.ndarray:
    """Reduce blocks of many pixels over the part of them that exists (no padding).

    ``data`` is the source under a chunk, clipped to the raster; output pixel (i, j) is the
    reduction of ``data[row_starts[i]:row_starts[i + 1], col_starts[j]:col_starts[j + 1]]`` (the
    last running to the end); ``centre``: the rows and columns in ``data`` of each block's pixel
    (ky // 2, kx // 2), for nearest (outside ``data``: nodata). ``average`` is the sum over the
    count in double precision: for blocks this large GDAL's running mean differs from it only in
    the last bits. ``med`` and ``mode`` take one block at a time (blocks this large are few:
    each holds more than ``LARGE_BLOCK`` pixels), with the same rules as reduce_blocks.
    """
    method = Method(method)
    shape = (row_starts.size, col_starts.size)
    if method is Method.NEAREST:
        rows, cols = centre
        inside_r = (rows >= 0) & (rows < data.shape[0])
        inside_c = (cols >= 0) & (cols < data.shape[1])
        values = data[np.clip(rows, 0, data.shape[0] - 1)][:, np.clip(cols, 0, data.shape[1] - 1)]
        found = inside_r[:, None] & inside_c[None, :]
        if valid is not None:
            found &= valid[np.clip(rows, 0, data.shape[0] - 1)][:, np.clip(cols, 0, data.shape[1] - 1)]
        return to_output(values, found, dst_dtype, dst_nodata, avoid_nodata=False)
    mask = np.ones(data.shape, bool) if valid is None else valid
    count = np.add.reduceat(np.add.reduceat(mask.astype(np.int64), row_starts, axis=0), col_starts, axis=1)
    found = count > 0
    if method.is_weighted:
        values = np.where(mask, data, 0).astype(np.float64)
        total = np.add.reduceat(np.add.reduceat(values, row_starts, axis=0), col_starts, axis=1)
        result = total if method is Method.SUM else np.divide(total, count, out=np.zeros(shape), where=found)
    elif method in (Method.MIN, Method.MAX):
        func = np.minimum if method is Method.MIN else np.maximum
        fill = np.inf if method is Method.MIN else -np.inf
        values = np.where(mask, data.astype(np.float64), fill)
        result = func.reduceat(func.reduceat(values, row_starts, axis=0), col_starts, axis=1)
    elif method in (Method.MED, Method.MODE):
        result = np.zeros(shape, np.float64 if data.dtype.kind == "f" else np.int64)
        row_ends = np.append(row_starts[1:], data.shape[0])
        col_ends = np.append(col_starts[1:], data.shape[1])
        for i, j in zip(*np.nonzero(found)):
            rows = slice(row_starts[i], row_ends[i])
            cols = slice(col_starts[j], col_ends[j])
            values = data[rows, cols][mask[rows, cols]]  # row-major, as GDAL visits them
            result[i, j] = _lower_median(values) if method is Method.MED else _running_mode(values)
    else:
        raise ValueError(f"method {method} is not reduced over large blocks")
    return to_output(result, found, dst_dtype, dst_nodata)


def _lower_median(values: np.ndarray):
    k = (values.size - 1) // 2
    return np.partition(values, k)[k]


def _running_mode(values: np.ndarray):
    """The most frequent value; among equals, the one whose last occurrence comes first."""
    unique, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    last = np.zeros(unique.size, np.int64)
    np.maximum.at(last, inverse, np.arange(values.size))
    best = np.lexsort((last, -counts))[0]  # most counts first, then the earliest last occurrence
    return unique[best]

