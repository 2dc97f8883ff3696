"""Compiled block reductions (numba): one pass over the input, no temporaries, the GIL released.

The same reductions as engines.blocks.reduce_blocks, bit for bit (tests/test_kernels.py compares
them over every method, type and kind of missing pixel): GDAL's sequential per-block arithmetic
(the running mean in double precision, the running mode, the lower median) is a loop over each
block's pixels in row-major order, which NumPy can only do as one pass per position in the block
over output-sized arrays, plus an input-sized validity mask. Here validity (nodata, NaN, a mask of
the pixels beyond the raster) is tested pixel by pixel as it is read.

Compiled code is cached on disk (numba's ``cache=True``: beside this file, or in
``NUMBA_CACHE_DIR``), so that only the first job on a machine, or on a shared file system, pays
the compile (about a second per input type); every later job loads it.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from workflow_lib.domain import Method
from workflow_lib.engines.blocks import block_shape, reduce_blocks_masked, to_output

# Integer types whose mode is counted in a histogram (their values offset to start at 0).
_HISTOGRAM = {"uint8": (0, 256), "int8": (128, 256), "uint16": (0, 65536), "int16": (32768, 65536)}
_METHOD_CODES = {Method.SUM: 0, Method.MIN: 1, Method.MAX: 2, Method.AVERAGE: 3}

_jit = numba.njit(nogil=True, cache=True)


@numba.njit(inline="always")
def _missing(v, mask, use_mask, r, c, nodata, use_nodata):
    if v != v:  # NaN (never true for integers)
        return True
    if use_nodata and v == nodata:
        return True
    return use_mask and not mask[r, c]


@numba.njit(inline="always")
def _gather(data, mask, use_mask, nodata, use_nodata, kx, ky, i, j, buf):
    """The valid pixels of block (i, j) into ``buf`` (converted to its type), in row-major order;
    returns how many."""
    m = 0
    for dy in range(ky):
        r = i * ky + dy
        for dx in range(kx):
            c = j * kx + dx
            v = data[r, c]
            if not _missing(v, mask, use_mask, r, c, nodata, use_nodata):
                buf[m] = v
                m += 1
    return m


@_jit
def _accumulate(data, mask, use_mask, nodata, use_nodata, kx, ky, code, values, found):
    """average (GDAL 3.10's running mean: mean += (value - mean) * (1 / n)), sum (in double
    precision), min or max, row-major within each block. Rows are streamed: row dy of every block
    of an output row, then row dy + 1, which keeps each block's order and reads the input once,
    sequentially."""
    h, w = values.shape
    acc = np.empty(w, np.float64)
    count = np.empty(w, np.int64)
    start = np.inf if code == 1 else -np.inf if code == 2 else 0.0
    for i in range(h):
        acc[:] = start
        count[:] = 0
        for dy in range(ky):
            r = i * ky + dy
            for j in range(w):
                a = acc[j]
                n = count[j]
                for dx in range(kx):
                    c = j * kx + dx
                    v = data[r, c]
                    if _missing(v, mask, use_mask, r, c, nodata, use_nodata):
                        continue
                    n += 1
                    x = np.float64(v)
                    if code == 3:
                        a += (x - a) * (1.0 / n)
                    elif code == 0:
                        a += x
                    elif code == 1:
                        if x < a:
                            a = x
                    elif x > a:
                        a = x
                acc[j] = a
                count[j] = n
        for j in range(w):
            values[i, j] = acc[j]
            found[i, j] = count[j] > 0


@_jit
def _mode_histogram(data, mask, use_mask, nodata, use_nodata, kx, ky, offset, bins, values, found):
    """GDAL's running mode for 8- and 16-bit integers: a value replaces the mode only when its
    count becomes strictly larger (so among equals the one whose last occurrence comes first).
    A bin's count belongs to the block whose number its stamp holds, and starts again from 1 in any
    other block: no pass to clear the histogram (a second walk over each block cost a third of
    the kernel's time).

    The count of the value last seen is kept in a register and written back to its bin only when
    another value comes: class rasters repeat a value pixel after pixel, and a load of the bin
    just stored waits for that store. Measured on a 4096 x 4096 window of the benchmark's uint8
    classes in 4 x 4 blocks: 38 ms instead of 43 per reduction; on classes drawn at random, which
    seldom repeat, 74 ms either way."""
    h, w = values.shape
    counts = np.zeros(bins, np.int32)
    stamps = np.zeros(bins, np.int64)
    block = 0
    for i in range(h):
        for j in range(w):
            block += 1
            best = 0
            best_count = 0
            last = -1  # the bin of the value last seen in this block, whose count is ``n``
            n = 0
            for dy in range(ky):
                r = i * ky + dy
                for dx in range(kx):
                    c = j * kx + dx
                    v = data[r, c]
                    if _missing(v, mask, use_mask, r, c, nodata, use_nodata):
                        continue
                    k = np.int64(v) + offset
                    if k == last:
                        n += 1
                    else:
                        if last >= 0:
                            counts[last] = n
                            stamps[last] = block
                        n = counts[k] + 1 if stamps[k] == block else 1
                        last = k
                    if n > best_count:
                        best_count = n
                        best = np.int64(v)
            values[i, j] = best
            found[i, j] = best_count > 0


@_jit
def _mode_pairs(data, mask, use_mask, nodata, use_nodata, kx, ky, values, found):
    """The same running mode for other types: each valid pixel counted against the ones before it
    in its block (blocks here hold at most engines.blocks.LARGE_BLOCK pixels)."""
    h, w = values.shape
    buf = np.empty(kx * ky, data.dtype)
    for i in range(h):
        for j in range(w):
            m = _gather(data, mask, use_mask, nodata, use_nodata, kx, ky, i, j, buf)
            best_count = 0
            for p in range(m):
                n = 1
                for q in range(p):
                    if buf[q] == buf[p]:
                        n += 1
                if n > best_count:
                    best_count = n
                    values[i, j] = buf[p]
            found[i, j] = best_count > 0


@_jit
def _median(data, mask, use_mask, nodata, use_nodata, kx, ky, values, found):
    """The lower median, sorted[(n - 1) // 2], of each block's valid pixels (insertion sort: blocks
    here are small)."""
    h, w = values.shape
    buf = np.empty(kx * ky, np.float64)
    for i in range(h):
        for j in range(w):
            m = _gather(data, mask, use_mask, nodata, use_nodata, kx, ky, i, j, buf)
            for p in range(1, m):  # insertion sort of the block's values
                x = buf[p]
                k = p
                while k > 0 and buf[k - 1] > x:
                    buf[k] = buf[k - 1]
                    k -= 1
                buf[k] = x
            values[i, j] = buf[(m - 1) // 2] if m else 0.0
            found[i, j] = m > 0


def reduce_blocks_compiled(
    data: np.ndarray,
    valid: np.ndarray | None,
    src_nodata: float | None,
    kx: int,
    ky: int,
    method: Method,
    dst_dtype: str,
    dst_nodata: float,
) -> np.ndarray:
    """engines.blocks.reduce_blocks without its validity mask: a pixel is missing where it is NaN,
    equals ``src_nodata`` (in the data's type, as valid_mask compares), or is False in ``valid``
    (the pixels beyond the raster's edge; None: no such pixels)."""
    method = Method(method)
    h, w = block_shape(data, kx, ky)
    if not method.is_compiled or kx == ky == 1 or data.dtype.kind not in "iuf":
        return reduce_blocks_masked(data, valid, src_nodata, kx, ky, method, dst_dtype, dst_nodata)
    use_nodata = src_nodata is not None and not math.isnan(src_nodata)
    nodata = data.dtype.type(src_nodata) if use_nodata else data.dtype.type(0)
    use_mask = valid is not None
    mask = valid if use_mask else np.ones((1, 1), bool)
    found = np.empty((h, w), bool)
    if method is Method.MODE:
        values = np.zeros((h, w), np.int64 if data.dtype.kind in "iu" else np.float64)
        if data.dtype.name in _HISTOGRAM:
            offset, bins = _HISTOGRAM[data.dtype.name]
            _mode_histogram(data, mask, use_mask, nodata, use_nodata, kx, ky, offset, bins, values, found)
        else:
            if data.dtype.kind in "iu":  # int64 holds every value of these types exactly
                values = np.zeros((h, w), data.dtype)
            _mode_pairs(data, mask, use_mask, nodata, use_nodata, kx, ky, values, found)
    else:
        values = np.empty((h, w), np.float64)
        if method is Method.MED:
            _median(data, mask, use_mask, nodata, use_nodata, kx, ky, values, found)
        else:
            _accumulate(data, mask, use_mask, nodata, use_nodata, kx, ky, _METHOD_CODES[method], values, found)
    return to_output(values, found, dst_dtype, dst_nodata)


def warm_up(dtype: str, method: Method) -> None:
    """Compile, or load from the cache, the kernels that blocks of ``dtype`` reduced by ``method``
    use, with and without a mask of missing pixels: the specialisations a tile calls.

    A job calls this before its memory limit is set (jobs.memory_limit): LLVM does not survive an
    allocation that fails (the process dies of SIGSEGV, with no error to report), so it must never
    run under the limit. The memory it takes stays counted against the limit afterwards
    (runtime.KERNELS_MB)."""
    data = np.zeros((2, 2), dtype)
    for valid in (None, np.ones((2, 2), bool)):
        reduce_blocks_compiled(data, valid, 0.0, 2, 2, method, dtype, 0.0)
