"""The conservative engine: area-weighted resampling between any two CRSs.

Each source pixel's footprint on the target grid is a polygon: its corners (and, where the map
bends within a pixel, points along its edges) moved onto the target grid (engines.corners). The
polygon is cut by the target grid's lines; the area of each piece, measured in the target CRS, is
the weight of that source pixel in that target pixel:

- ``average``: the overlap-weighted mean of the valid source pixels;
- ``sum``: each source pixel's value shared out by the fraction of its footprint in each target
  pixel (the total is conserved);
- ``mode``: the class covering the largest area (among equal areas, the one whose last source
  pixel comes first in row-major order, as GDAL's running mode breaks ties);
- ``fractions``: per class, the share of the target pixel's area that it covers;
- the coverage: the share of the target pixel's area covered by valid source pixels.

Nodata and NaN never count. A source pixel whose footprint lies within 2 x 2 target pixels (every
one, when coarsening) takes a fast path: inside one target pixel its whole area goes there;
across one or two grid lines its pieces come in closed form, in one pass over its edges. The
others (upsampling, footprints a whole turn may move) are clipped in a second pass. Every target
pixel sums its source pixels of the fast path in row-major order, then the others in row-major
order, whatever the chunk or tile that holds it: results do not depend on tiling, bit for bit.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from rasterio.windows import Window

from workflow_lib.domain import Method
from workflow_lib.engines.blocks import to_output
from workflow_lib.engines.corners import Mapping, positions
from workflow_lib.planning.grid import TargetGrid
from workflow_lib.planning.settings import WarpSettings
from workflow_lib.sources.header import RasterHeader

AVERAGE, SUM, FRACTIONS = 0, 1, 2
_CODES = {Method.AVERAGE: AVERAGE, Method.SUM: SUM, Method.FRACTIONS: FRACTIONS}

_jit = numba.njit(nogil=True, cache=True)


@numba.njit(inline="always")
def _shoelace(xs, ys, n):
    s = 0.0
    for k in range(n):
        k1 = k + 1 if k + 1 < n else 0
        s += xs[k] * ys[k1] - xs[k1] * ys[k]
    return 0.5 * s


@numba.njit(inline="always")
def _footprint(i, j, hx, hy, vx, vy, n, px, py, period, box):
    """The footprint of source pixel (i, j) into (px, py): its top edge left to right, its right
    edge down, its bottom edge right to left, its left edge up (4 n vertices), and its bounding box
    into ``box`` (min x, max x, min y, max y); False if a point could not be moved. Longitudes are
    made continuous from its first corner."""
    m = 0
    for k in range(n):
        px[m] = hx[i, j * n + k]
        py[m] = hy[i, j * n + k]
        m += 1
    for k in range(n):
        px[m] = vx[i * n + k, j + 1]
        py[m] = vy[i * n + k, j + 1]
        m += 1
    for k in range(n):
        px[m] = hx[i + 1, (j + 1) * n - k]
        py[m] = hy[i + 1, (j + 1) * n - k]
        m += 1
    for k in range(n):
        px[m] = vx[(i + 1) * n - k, j]
        py[m] = vy[(i + 1) * n - k, j]
        m += 1
    return _outline(px, py, m, period, box)


@numba.njit(inline="always")
def _outline(px, py, m, period, box):
    """Finish a footprint of ``m`` vertices in (px, py): longitudes made continuous from its first
    point, its bounding box into ``box`` (min x, max x, min y, max y); False if a point could not
    be moved."""
    first = px[0]
    half = 0.5 * period
    minx, maxx, miny, maxy = np.inf, -np.inf, np.inf, -np.inf
    for k in range(m):
        x, y = px[k], py[k]
        if not (np.isfinite(x) and np.isfinite(y)):
            return False
        if period > 0.0 and abs(x - first) > half:
            x -= period * np.floor((x - first) / period + 0.5)
            px[k] = x
        minx = min(minx, x)
        maxx = max(maxx, x)
        miny = min(miny, y)
        maxy = max(maxy, y)
    box[0], box[1], box[2], box[3] = minx, maxx, miny, maxy
    return True


@numba.njit(inline="always")
def _clamped_integral(length, y_start, y_end, y0, y1):
    """The integral of clamp(y, y0, y1) - y0 over an interval of ``length`` along which y goes
    linearly from y_start to y_end."""
    a, b = min(y_start, y_end), max(y_start, y_end)
    if b <= y0:
        return 0.0
    if a >= y1:
        return (y1 - y0) * length
    if b - a <= 0.0:
        return (min(max(a, y0), y1) - y0) * length
    inv = 1.0 / (b - a)
    t0 = max(0.0, (y0 - a) * inv)
    t1 = min(1.0, (y1 - a) * inv)
    return length * ((t1 - t0) * (0.5 * (max(a, y0) + min(b, y1)) - y0) + (1.0 - t1) * (y1 - y0))


@numba.njit(inline="always")
def _edges(bx, by, nv, lo_x, y_lo, hi_x, slope, sign):
    """The polygon's non-vertical edges, left end first: x (lo_x, hi_x), y at the left end, slope,
    and +1 or -1 for their direction along x. Returns how many."""
    m = 0
    ax, ay = bx[nv - 1], by[nv - 1]
    for k in range(nv):
        cx, cy = bx[k], by[k]
        if ax < cx:
            lo_x[m], y_lo[m], hi_x[m], slope[m], sign[m] = ax, ay, cx, (cy - ay) / (cx - ax), 1.0
            m += 1
        elif ax > cx:
            lo_x[m], y_lo[m], hi_x[m], slope[m], sign[m] = cx, cy, ax, (ay - cy) / (ax - cx), -1.0
            m += 1
        ax, ay = cx, cy
    return m


@numba.njit(inline="always")
def _area_in(lo_x, y_lo, hi_x, slope, sign, m, x0, x1, y0, y1):
    """The area of the polygon of edges (_edges) inside the rectangle [x0, x1] x [y0, y1].

    By Green's theorem the area of a region is the integral of its height along x over its
    boundary; the part of the polygon's boundary over the rectangle's columns, with heights
    clamped to the rectangle's rows, is all that counts (the rectangle's own sides add nothing:
    its vertical ones have no length along x, and clamping accounts for its horizontal ones). So
    each edge adds what lies over [x0, x1] of it, without building the clipped polygon."""
    total = 0.0
    for k in range(m):
        lo, hi = max(lo_x[k], x0), min(hi_x[k], x1)
        if hi > lo:
            start = y_lo[k] + slope[k] * (lo - lo_x[k])
            end = y_lo[k] + slope[k] * (hi - lo_x[k])
            total += sign[k] * _clamped_integral(hi - lo, start, end, y0, y1)
    return abs(total)


@numba.njit(inline="always")
def _area_in_strip(lo_x, y_lo, hi_x, slope, sign, m, x0, x1):
    """The area of the polygon of edges (_edges) between x0 and x1: _area_in with no rows to clamp
    to (a polygon within one row of target pixels, or one column with x and y swapped)."""
    total = 0.0
    for k in range(m):
        lo, hi = max(lo_x[k], x0), min(hi_x[k], x1)
        if hi > lo:
            total += sign[k] * (hi - lo) * (y_lo[k] + slope[k] * (0.5 * (lo + hi) - lo_x[k]))
    return abs(total)


@numba.njit(inline="always")
def _pieces(px, py, nv, shift, box, wc0, wr0, ww, wh, bx, by, e_lo, e_y, e_hi, e_slope, e_sign, out_r, out_c, out_a,
            whole):
    """The pieces of polygon (px + shift, py)[:nv] (bounding box ``box``, unshifted) in the target
    pixels of the window (columns wc0 .. wc0 + ww, rows wr0 .. wr0 + wh of the grid): their cells
    (relative to the window) and areas into out_*, the polygon's whole area into whole[0]; returns
    how many. out_* hold the bounding box's cells."""
    c0, c1 = int(np.floor(box[0] + shift)), int(np.ceil(box[1] + shift))
    r0, r1 = int(np.floor(box[2])), int(np.ceil(box[3]))
    if c1 == c0:
        c1 += 1
    if r1 == r0:
        r1 += 1
    lo_c, hi_c = max(c0, wc0), min(c1, wc0 + ww)
    lo_r, hi_r = max(r0, wr0), min(r1, wr0 + wh)
    if lo_c >= hi_c or lo_r >= hi_r:
        return 0
    # Local coordinates (the bounding box's first cell at 0, 0): areas without cancellation.
    off_x = shift - c0
    for k in range(nv):
        bx[k] = px[k] + off_x
        by[k] = py[k] - r0
    whole[0] = abs(_shoelace(bx, by, nv))
    if c1 - c0 == 1 and r1 - r0 == 1:  # inside one target pixel
        out_r[0] = r0 - wr0
        out_c[0] = c0 - wc0
        out_a[0] = whole[0]
        return 1
    count = 0
    if r1 - r0 == 1 or c1 - c0 == 1:  # across the lines of one direction only: strips, no clamping
        along_x = r1 - r0 == 1  # one row, across column lines; else one column (x and y swapped)
        if along_x:
            m = _edges(bx, by, nv, e_lo, e_y, e_hi, e_slope, e_sign)
            lo, hi, first = lo_c, hi_c, c0
        else:
            m = _edges(by, bx, nv, e_lo, e_y, e_hi, e_slope, e_sign)
            lo, hi, first = lo_r, hi_r, r0
        for k in range(lo, hi):
            a = _area_in_strip(e_lo, e_y, e_hi, e_slope, e_sign, m, float(k - first), float(k - first + 1))
            if a > 0.0:
                out_r[count] = (r0 if along_x else k) - wr0
                out_c[count] = (k if along_x else c0) - wc0
                out_a[count] = a
                count += 1
        return count
    m = _edges(bx, by, nv, e_lo, e_y, e_hi, e_slope, e_sign)
    for c in range(lo_c, hi_c):
        for r in range(lo_r, hi_r):
            a = _area_in(e_lo, e_y, e_hi, e_slope, e_sign, m, float(c - c0), float(c - c0 + 1), float(r - r0),
                         float(r - r0 + 1))
            if a > 0.0:
                out_r[count] = r - wr0
                out_c[count] = c - wc0
                out_a[count] = a
                count += 1
    return count


@numba.njit(inline="always")
def _missing(v, nodata, use_nodata):
    return v != v or (use_nodata and v == nodata)


@numba.njit(inline="always")
def _class_index(v, classes):
    """Index of ``v`` in the sorted ``classes``, or -1."""
    lo, hi = 0, classes.size
    while lo < hi:
        mid = (lo + hi) // 2
        if classes[mid] < v:
            lo = mid + 1
        else:
            hi = mid
    return lo if lo < classes.size and classes[lo] == v else -1


@numba.njit(inline="always")
def _cells_in(box):
    return (int(np.ceil(box[1])) - int(np.floor(box[0])) + 1) * (int(np.ceil(box[3])) - int(np.floor(box[2])) + 1)


@numba.njit(inline="always")
def _shifts(box, period, wc0, ww):
    """The whole turns (-1, 0, 1) by which a footprint may reach the window (0 alone without one)."""
    lo = -1 if period > 0.0 and box[1] - period > wc0 else 0
    hi = 1 if period > 0.0 and box[0] + period < wc0 + ww else 0
    return lo, hi


@numba.njit(inline="always")
def _middle(a, b, c, d, period, curved):
    """The point halfway between corners b and c, of the four successive corners a, b, c, d: on the
    cubic through all four when ``curved``, else on the chord."""
    if not curved:
        return 0.5 * (b + c)
    if np.isfinite(a + d) and (period == 0.0 or abs(a - b) + abs(c - b) + abs(d - b) < 0.5 * period):
        return (9.0 * (b + c) - (a + d)) * 0.0625
    return _middle_otherwise(a, b, c, d, period)


@_jit
def _middle_otherwise(a, b, c, d, period):
    """_middle where a or d could not be moved (the quadratic through the three others, or the
    chord), or where a longitude turns within the four: made continuous from b first."""
    if period > 0.0:
        half = 0.5 * period
        if abs(a - b) > half:
            a -= period * np.floor((a - b) / period + 0.5)
        if abs(c - b) > half:
            c -= period * np.floor((c - b) / period + 0.5)
        if abs(d - b) > half:
            d -= period * np.floor((d - b) / period + 0.5)
    if np.isfinite(a) and np.isfinite(d):
        return (9.0 * (b + c) - (a + d)) * 0.0625
    if np.isfinite(d):
        return (3.0 * b + 6.0 * c - d) * 0.125
    if np.isfinite(a):
        return (6.0 * b + 3.0 * c - a) * 0.125
    return 0.5 * (b + c)


@numba.njit(inline="always")
def _load8(i, j, cx, cy, period, curved):
    """The 8 vertices of the footprint of pixel (i, j), in _footprint's order (each corner, then
    the middle of the edge that follows it), from the positions of the corners around the window
    (``cx``, ``cy``: a ring of one corner around it, so pixel (i, j)'s first corner is at
    [i + 1, j + 1]); the middles by _middle, each made alike by the two pixels that share it.
    Returns x0 .. x7, y0 .. y7."""
    x0, y0 = cx[i + 1, j + 1], cy[i + 1, j + 1]
    x2, y2 = cx[i + 1, j + 2], cy[i + 1, j + 2]
    x4, y4 = cx[i + 2, j + 2], cy[i + 2, j + 2]
    x6, y6 = cx[i + 2, j + 1], cy[i + 2, j + 1]
    x1 = _middle(cx[i + 1, j], x0, x2, cx[i + 1, j + 3], period, curved)
    y1 = _middle(cy[i + 1, j], y0, y2, cy[i + 1, j + 3], 0.0, curved)
    x3 = _middle(cx[i, j + 2], x2, x4, cx[i + 3, j + 2], period, curved)
    y3 = _middle(cy[i, j + 2], y2, y4, cy[i + 3, j + 2], 0.0, curved)
    x5 = _middle(cx[i + 2, j], x6, x4, cx[i + 2, j + 3], period, curved)
    y5 = _middle(cy[i + 2, j], y6, y4, cy[i + 2, j + 3], 0.0, curved)
    x7 = _middle(cx[i, j + 1], x0, x6, cx[i + 3, j + 1], period, curved)
    y7 = _middle(cy[i, j + 1], y0, y6, cy[i + 3, j + 1], 0.0, curved)
    return x0, x1, x2, x3, x4, x5, x6, x7, y0, y1, y2, y3, y4, y5, y6, y7


@numba.njit(inline="always")
def _eight(i, j, cx, cy, period, curved, px, py, box):
    """The footprint of a pixel of 2 points per edge (_load8) into (px, py) and its bounding box
    into ``box``, as _footprint; False if a point could not be moved."""
    px[0], px[1], px[2], px[3], px[4], px[5], px[6], px[7], py[0], py[1], py[2], py[3], py[4], py[5], py[6], py[7] = \
        _load8(i, j, cx, cy, period, curved)
    return _outline(px, py, 8, period, box)


@numba.njit(inline="always")
def _below_one(ax, ay, bx, by):
    """Twice the integral along x of min(y, 1) over the segment from (ax, ay) to (bx, by)."""
    if ay <= 1.0 and by <= 1.0:
        return (bx - ax) * (ay + by)
    if ay >= 1.0 and by >= 1.0:
        return (bx - ax) * 2.0
    xm = ax + (bx - ax) * ((1.0 - ay) / (by - ay))
    if ay < 1.0:
        return (xm - ax) * (ay + 1.0) + (bx - xm) * 2.0
    return (xm - ax) * 2.0 + (bx - xm) * (1.0 + by)


@numba.njit(inline="always")
def _edge_parts(ax, ay, bx, by):
    """For the edge from (ax, ay) to (bx, by): twice the integral along x of y, and of min(y, 1),
    over its part left of x = 1, then over its part right of it (_simple8)."""
    if ax <= 1.0 and bx <= 1.0:
        return (bx - ax) * (ay + by), _below_one(ax, ay, bx, by), 0.0, 0.0
    if ax >= 1.0 and bx >= 1.0:
        return 0.0, 0.0, (bx - ax) * (ay + by), _below_one(ax, ay, bx, by)
    y = ay + (by - ay) * ((1.0 - ax) / (bx - ax))
    first, first_below = (1.0 - ax) * (ay + y), _below_one(ax, ay, 1.0, y)
    second, second_below = (bx - 1.0) * (y + by), _below_one(1.0, y, bx, by)
    if ax < 1.0:
        return first, first_below, second, second_below
    return second, second_below, first, first_below


@numba.njit(inline="always")
def _simple8(points, period, grid_w, wc0, wr0, ww, wh, piece):
    """The fast path of a pixel of 2 points per edge, from its 8 ``points`` alone (x0 .. x7, y0 ..
    y7 as _load8 returns them; nothing stored: this is most of the work): when its footprint lies
    within 2 x 2 target pixels (inside one, or across one or two grid lines) and no whole turn may
    bring it onto the grid elsewhere, its pieces in the window as (row, column relative to the
    window, area) into ``piece`` [0:3], [3:6] ... and the footprint's area into ``piece[12]``;
    returns how many (1 to 4). -1: it adds nothing to the window (outside it, or a point could not
    be moved); 0: the clipping must decide. Which of these a footprint gets depends on it and the
    grid alone, never on the window."""
    x0, x1, x2, x3, x4, x5, x6, x7, y0, y1, y2, y3, y4, y5, y6, y7 = points
    # NaN or an infinity in any point makes the sum so (pixel coordinates are far from overflowing).
    if not np.isfinite(x0 + x1 + x2 + x3 + x4 + x5 + x6 + x7 + y0 + y1 + y2 + y3 + y4 + y5 + y6 + y7):
        return -1
    lo_x = min(min(min(x0, x1), min(x2, x3)), min(min(x4, x5), min(x6, x7)))
    hi_x = max(max(max(x0, x1), max(x2, x3)), max(max(x4, x5), max(x6, x7)))
    lo_y = min(min(min(y0, y1), min(y2, y3)), min(min(y4, y5), min(y6, y7)))
    hi_y = max(max(max(y0, y1), max(y2, y3)), max(max(y4, y5), max(y6, y7)))
    c, r = int(np.floor(lo_x)), int(np.floor(lo_y))
    across_x, across_y = hi_x > c + 1, hi_y > r + 1  # a column line; a row line
    if hi_x > c + 2 or hi_y > r + 2:
        return 0
    if period > 0.0 and (hi_x - period > 0.0 or lo_x + period < grid_w):  # a whole turn may bring it onto the grid
        return 0
    if c + across_x < wc0 or c >= wc0 + ww or r + across_y < wr0 or r >= wr0 + wh:
        return -1
    # Relative to the first target pixel's corner: areas without cancellation between large numbers.
    x0, x1, x2, x3, x4, x5, x6, x7 = x0 - c, x1 - c, x2 - c, x3 - c, x4 - c, x5 - c, x6 - c, x7 - c
    y0, y1, y2, y3, y4, y5, y6, y7 = y0 - r, y1 - r, y2 - r, y3 - r, y4 - r, y5 - r, y6 - r, y7 - r
    whole = 0.5 * abs((x0 * y1 - x1 * y0) + (x1 * y2 - x2 * y1) + (x2 * y3 - x3 * y2) + (x3 * y4 - x4 * y3)
                      + (x4 * y5 - x5 * y4) + (x5 * y6 - x6 * y5) + (x6 * y7 - x7 * y6) + (x7 * y0 - x0 * y7))
    piece[12] = whole
    if not (across_x or across_y):
        piece[0], piece[1], piece[2] = r - wr0, c - wc0, whole
        return 1
    # Across a column line (x = 1 here), a row line (y = 1), or both: per side of x = 1, twice the
    # integral along x of y and of min(y, 1) over the boundary. By Green's theorem (as _area_in)
    # the first is, up to sign, the area of that side, the second that of its part in the first
    # row (y < 1); the lines themselves add nothing. Written out edge by edge: as a loop over
    # the points' tuples the fast path ran 5 to 8 % slower.
    ly, lm, ry, rm = _edge_parts(x7, y7, x0, y0)
    t0, t1, t2, t3 = _edge_parts(x0, y0, x1, y1)
    ly, lm, ry, rm = ly + t0, lm + t1, ry + t2, rm + t3
    t0, t1, t2, t3 = _edge_parts(x1, y1, x2, y2)
    ly, lm, ry, rm = ly + t0, lm + t1, ry + t2, rm + t3
    t0, t1, t2, t3 = _edge_parts(x2, y2, x3, y3)
    ly, lm, ry, rm = ly + t0, lm + t1, ry + t2, rm + t3
    t0, t1, t2, t3 = _edge_parts(x3, y3, x4, y4)
    ly, lm, ry, rm = ly + t0, lm + t1, ry + t2, rm + t3
    t0, t1, t2, t3 = _edge_parts(x4, y4, x5, y5)
    ly, lm, ry, rm = ly + t0, lm + t1, ry + t2, rm + t3
    t0, t1, t2, t3 = _edge_parts(x5, y5, x6, y6)
    ly, lm, ry, rm = ly + t0, lm + t1, ry + t2, rm + t3
    t0, t1, t2, t3 = _edge_parts(x6, y6, x7, y7)
    ly, lm, ry, rm = ly + t0, lm + t1, ry + t2, rm + t3
    count = 0
    for dr, dc, a in ((0, 0, lm), (1, 0, ly - lm), (0, 1, rm), (1, 1, ry - rm)):
        a = 0.5 * abs(a)
        pr, pc = r + dr, c + dc
        if a > 0.0 and wr0 <= pr < wr0 + wh and wc0 <= pc < wc0 + ww:
            piece[3 * count], piece[3 * count + 1], piece[3 * count + 2] = pr - wr0, pc - wc0, a
            count += 1
    return count if count else -1


@_jit
def _add_inside(data, nodata, use_nodata, cx, cy, curved, wc0, wr0, ww, wh, grid_w, period, code, classes, acc,
                cover, left):
    """accumulate's first pass, for pixels of 2 points per edge: add each valid pixel whose
    footprint lies within 2 x 2 target pixels (_simple8: all of them when coarsening), and mark
    the others in ``left`` for the second. Which pass takes a pixel depends on its footprint and
    the grid alone, never on the window: each target pixel sums its source pixels in the same
    order whatever the tiling. A loop of its own: beside the general clipping, the compiler no
    longer kept this path in registers and it ran 2.5 times slower."""
    h, w = data.shape
    piece = np.empty(13)
    # The middles of the edges of a row of pixels, each made once (_load8 makes each twice: it
    # serves the few pixels of the second pass): along their top and bottom edges (the next row's
    # top), and down the edges between them.
    top_x, top_y, bottom_x, bottom_y = np.empty(w), np.empty(w), np.empty(w), np.empty(w)
    down_x, down_y = np.empty(w + 1), np.empty(w + 1)
    _row_middles(0, cx, period, curved, top_x)
    _row_middles(0, cy, 0.0, curved, top_y)
    for i in range(h):
        _row_middles(i + 1, cx, period, curved, bottom_x)
        _row_middles(i + 1, cy, 0.0, curved, bottom_y)
        _down_middles(i, cx, period, curved, down_x)
        _down_middles(i, cy, 0.0, curved, down_y)
        for j in range(w):
            v = data[i, j]
            if _missing(v, nodata, use_nodata):
                continue
            points = (cx[i + 1, j + 1], top_x[j], cx[i + 1, j + 2], down_x[j + 1], cx[i + 2, j + 2], bottom_x[j],
                      cx[i + 2, j + 1], down_x[j], cy[i + 1, j + 1], top_y[j], cy[i + 1, j + 2], down_y[j + 1],
                      cy[i + 2, j + 2], bottom_y[j], cy[i + 2, j + 1], down_y[j])
            found = _simple8(points, period, grid_w, wc0, wr0, ww, wh, piece)
            if found == 0:
                left[i, j] = True
                continue
            if found < 0 or piece[12] <= 0.0:  # a footprint of no area counts nowhere, as in the clipping
                continue
            k = _class_index(v, classes) if code == FRACTIONS else 0
            for q in range(found):
                r, c, a = int(piece[3 * q]), int(piece[3 * q + 1]), piece[3 * q + 2]
                cover[r, c] += a
                if code == AVERAGE:
                    acc[0, r, c] += a * v
                elif code == SUM:
                    acc[0, r, c] += v * (a / piece[12])
                elif k >= 0:
                    acc[k, r, c] += a
        top_x, bottom_x = bottom_x, top_x
        top_y, bottom_y = bottom_y, top_y


@numba.njit(inline="always")
def _row_middles(k, ring, period, curved, out):
    """The middles (_middle) of the edges along row k of the window's corners, from the ring of
    corners around it (_load8), into ``out``."""
    for j in range(out.size):
        out[j] = _middle(ring[k + 1, j], ring[k + 1, j + 1], ring[k + 1, j + 2], ring[k + 1, j + 3], period, curved)


@numba.njit(inline="always")
def _down_middles(k, ring, period, curved, out):
    """The middles (_middle) of the edges between rows k and k + 1 of the window's corners, from
    the ring of corners around it (_load8), into ``out``."""
    for j in range(out.size):
        out[j] = _middle(ring[k, j + 1], ring[k + 1, j + 1], ring[k + 2, j + 1], ring[k + 3, j + 1], period, curved)


@_jit
def _add_clipped(data, hx, hy, vx, vy, n, curved, wc0, wr0, ww, wh, period, code, classes, acc, cover, left):
    """accumulate's second pass: cut the footprint of each pixel marked in ``left`` by the target
    pixels of the window and add each piece."""
    h, w = data.shape
    nv = 4 * n  # vertices per footprint
    px, py, bx, by = np.empty(nv), np.empty(nv), np.empty(nv), np.empty(nv)
    e_lo, e_y, e_hi, e_slope, e_sign = np.empty(nv), np.empty(nv), np.empty(nv), np.empty(nv), np.empty(nv)
    box, whole = np.empty(4), np.empty(1)
    cells = 64
    out_r, out_c, out_a = np.empty(cells, np.int64), np.empty(cells, np.int64), np.empty(cells)
    for i in range(h):
        for j in range(w):
            if not left[i, j]:
                continue
            loaded = _eight(i, j, hx, hy, period, curved, px, py, box) if n == 2 else \
                _footprint(i, j, hx, hy, vx, vy, n, px, py, period, box)
            if not loaded:
                continue
            v = data[i, j]
            k = _class_index(v, classes) if code == FRACTIONS else 0
            need = _cells_in(box)
            if need > cells:
                cells = 2 * need
                out_r, out_c, out_a = np.empty(cells, np.int64), np.empty(cells, np.int64), np.empty(cells)
            lo, hi = _shifts(box, period, wc0, ww)
            for s in range(lo, hi + 1):
                found = _pieces(px, py, nv, s * period, box, wc0, wr0, ww, wh, bx, by, e_lo, e_y, e_hi, e_slope,
                                e_sign, out_r, out_c, out_a, whole)
                if found == 0 or whole[0] <= 0.0:
                    continue
                for q in range(found):
                    r, c, a = out_r[q], out_c[q], out_a[q]
                    cover[r, c] += a
                    if code == AVERAGE:
                        acc[0, r, c] += a * v
                    elif code == SUM:
                        acc[0, r, c] += v * (a / whole[0])
                    elif k >= 0:
                        acc[k, r, c] += a


@_jit
def accumulate(data, nodata, use_nodata, hx, hy, vx, vy, n, curved, wc0, wr0, ww, wh, grid_w, period, code, classes,
               acc, cover):
    """Add every valid source pixel of ``data`` to the target pixels of the window its footprint
    covers: ``cover`` += area; ``acc[0]`` += area x value (average) or value x area / footprint
    area (sum); ``acc[k]`` += area for the pixels of class ``classes[k]`` (fractions). In two
    passes (_add_inside, then _add_clipped for the others), so each target pixel sums the pixels
    of the fast path in row-major order, then the others in row-major order. ``grid_w``: the
    grid's width (which footprints a whole turn may bring onto it). The points: for n == 2, the
    corners with a ring around them in (hx, hy) (_load8: of 2 points per edge when ``curved``,
    else of 1); for more, as _footprint reads them."""
    h, w = data.shape
    if n == 2:
        left = np.zeros((h, w), np.bool_)
        _add_inside(data, nodata, use_nodata, hx, hy, curved, wc0, wr0, ww, wh, grid_w, period, code, classes, acc,
                    cover, left)
    else:  # many points per edge: few pixels (planning.footprint.EDGE_POINT_BUDGET), all clipped
        left = np.empty((h, w), np.bool_)
        for i in range(h):
            for j in range(w):
                left[i, j] = not _missing(data[i, j], nodata, use_nodata)
    _add_clipped(data, hx, hy, vx, vy, n, curved, wc0, wr0, ww, wh, period, code, classes, acc, cover, left)


@_jit
def mode_of_areas(data, nodata, use_nodata, hx, hy, vx, vy, n, wc0, wr0, ww, wh, period, values, found, cover):
    """The class covering the largest area of each target pixel of the window into ``values``
    (``found`` where any valid pixel lies); among equal areas, the class whose last source pixel
    comes first in row-major order."""
    h, w = data.shape
    px, py, bx, by = np.empty(4 * n), np.empty(4 * n), np.empty(4 * n), np.empty(4 * n)
    e_lo, e_y, e_hi, e_slope, e_sign = np.empty(4 * n), np.empty(4 * n), np.empty(4 * n), np.empty(4 * n), \
        np.empty(4 * n)
    box, whole = np.empty(4), np.empty(1)
    cells = 64
    out_r, out_c, out_a = np.empty(cells, np.int64), np.empty(cells, np.int64), np.empty(cells)
    # First the pieces, as (target pixel, source pixel, area) in source order; then per target
    # pixel (a stable counting sort keeps the source order) the areas per class.
    cap = 4 * h * w + 16
    cell = np.empty(cap, np.int64)
    order = np.empty(cap, np.int64)
    area = np.empty(cap)
    m = 0
    for i in range(h):
        for j in range(w):
            if _missing(data[i, j], nodata, use_nodata):
                continue
            if not _footprint(i, j, hx, hy, vx, vy, n, px, py, period, box):
                continue
            need = _cells_in(box)
            if need > cells:
                cells = 2 * need
                out_r, out_c, out_a = np.empty(cells, np.int64), np.empty(cells, np.int64), np.empty(cells)
            lo, hi = _shifts(box, period, wc0, ww)
            for s in range(lo, hi + 1):
                got = _pieces(px, py, 4 * n, s * period, box, wc0, wr0, ww, wh, bx, by, e_lo, e_y, e_hi, e_slope,
                                e_sign, out_r, out_c, out_a, whole)
                if m + got > cap:
                    cap = 2 * (m + got)
                    cell = _grow_int(cell, cap)
                    order = _grow_int(order, cap)
                    area = _grow_float(area, cap)
                for q in range(got):
                    cell[m] = out_r[q] * ww + out_c[q]
                    order[m] = i * w + j
                    area[m] = out_a[q]
                    m += 1
    counts = np.zeros(ww * wh + 1, np.int64)
    for q in range(m):
        counts[cell[q] + 1] += 1
    for t in range(ww * wh):
        counts[t + 1] += counts[t]
    place = counts[:-1].copy()
    by_cell = np.empty(m, np.int64)
    for q in range(m):
        by_cell[place[cell[q]]] = q
        place[cell[q]] += 1
    for t in range(ww * wh):
        a, b = counts[t], counts[t + 1]
        if a == b:
            continue
        r, c = t // ww, t % ww
        picks = by_cell[a:b]
        klass = np.empty(b - a, data.dtype)
        for q in range(b - a):
            o = order[picks[q]]
            klass[q] = data[o // w, o % w]
        sort = np.argsort(klass, kind="mergesort")  # stable: source order within a class
        best_area, best_last, best = -1.0, 0, klass[sort[0]]
        q = 0
        while q < b - a:
            value = klass[sort[q]]
            total, last = 0.0, 0
            while q < b - a and klass[sort[q]] == value:
                p = picks[sort[q]]
                total += area[p]
                last = max(last, order[p])
                q += 1
            cover[r, c] += total
            if total > best_area or (total == best_area and last < best_last):
                best_area, best_last, best = total, last, value
        values[r, c] = best
        found[r, c] = True


@_jit
def _grow_int(a, size):
    out = np.empty(size, np.int64)
    out[:a.size] = a
    return out


@_jit
def _grow_float(a, size):
    out = np.empty(size)
    out[:a.size] = a
    return out


def method_code(method: Method) -> int:
    return _CODES[method]


def nodata_for_kernel(data: np.ndarray, src_nodata: float | None) -> tuple[object, bool]:
    """The nodata value in the data's own type, and whether to test it (NaN is always missing)."""
    use = src_nodata is not None and not math.isnan(src_nodata)
    return (data.dtype.type(src_nodata) if use else data.dtype.type(0)), use


def _edge_coordinates(first: int, count: int, n: int) -> np.ndarray:
    """Pixel coordinates first .. first + count in steps of 1 / n, each made as its whole pixel plus
    k / n: the same number for a point whatever chunk starts where (first + i / n would round
    differently from one chunk to the next)."""
    i = np.arange(count * n + 1)
    return (first + i // n).astype(np.float64) + (i % n) / n


def _ring(mapping: Mapping, r0: int, c0: int, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """The positions on the grid of the corners of the pixels (r0 .. r0 + h, c0 .. c0 + w) and of a
    ring of one corner around them: what the kernels make the points of pixels of 1 or 2 points
    per edge from (_load8)."""
    rows = r0 - 1 + np.arange(h + 3, dtype=np.float64)
    cols = c0 - 1 + np.arange(w + 3, dtype=np.float64)
    return positions(mapping, rows, cols)


def _points(mapping: Mapping, r0: int, c0: int, h: int, w: int, n: int):
    """The positions on the grid of the points of the pixels (r0 .. r0 + h, c0 .. c0 + w): along
    rows (corners and the n - 1 points between them) and along columns, as _footprint reads them.
    Of 1 or 2 points per edge, as _load8 makes them from the corners (_middle)."""
    if n > 2:
        rows = r0 + np.arange(h + 1, dtype=np.float64)
        cols = c0 + np.arange(w + 1, dtype=np.float64)
        hx, hy = positions(mapping, rows, _edge_coordinates(c0, w, n))
        vx, vy = positions(mapping, _edge_coordinates(r0, h, n), cols)
        return hx, hy, vx, vy
    cx, cy = _ring(mapping, r0, c0, h, w)
    hx, hy = np.empty((h + 1, 2 * w + 1)), np.empty((h + 1, 2 * w + 1))
    vx, vy = np.empty((2 * h + 1, w + 1)), np.empty((2 * h + 1, w + 1))
    _with_midpoints(cx, hx, vx, mapping.period, n == 2)
    _with_midpoints(cy, hy, vy, 0.0, n == 2)
    return hx, hy, vx, vy


@_jit
def _with_midpoints(ring, along_rows, along_cols, period, curved):
    """From the corners of the window and a ring of one around it (``ring``), the corners and the
    midpoints between them along rows and along columns (_points)."""
    h = ring.shape[0] - 2  # rows of the window's corners
    for i in range(h):
        along_rows[i, 0::2] = ring[i + 1, 1:-1]
        _row_middles(i, ring, period, curved, along_rows[i, 1::2])
        along_cols[2 * i] = ring[i + 1, 1:-1]
        if i + 1 < h:
            _down_middles(i, ring, period, curved, along_cols[2 * i + 1])


def resample_chunk(data: np.ndarray, source: Window, header: RasterHeader, grid: TargetGrid, window: Window,
                   settings: WarpSettings) -> np.ndarray:
    """The output of one chunk: ``data`` is the raster under ``source`` (its pixel window), and
    ``window`` the chunk's target pixels on the whole grid. Returns (bands, rows, cols) in the
    output type: the value, or one share per class, then the coverage when asked for."""
    mapping = Mapping(header, grid)
    h, w = data.shape
    r0, c0 = int(source.row_off), int(source.col_off)
    # Pixels of 1 point per edge are drawn with the middles of their (straight) edges: one fast
    # path, for 8 vertices, serves both.
    n = max(settings.edge_points, 2)
    wc0, wr0, ww, wh = int(window.col_off), int(window.row_off), int(window.width), int(window.height)
    nodata, use_nodata = nodata_for_kernel(data, settings.src_nodata)
    cover = np.zeros((wh, ww))
    method = settings.method
    if method is Method.MODE:
        values = np.zeros((wh, ww), data.dtype)
        found = np.zeros((wh, ww), bool)
        hx, hy, vx, vy = _points(mapping, r0, c0, h, w, settings.edge_points)
        mode_of_areas(data, nodata, use_nodata, hx, hy, vx, vy, n, wc0, wr0, ww, wh, mapping.period, values, found,
                      cover)
        result = [values]
    else:
        order = np.argsort(settings.classes, kind="stable") if settings.classes else np.zeros(1, np.int64)
        classes = np.asarray(settings.classes, np.float64)[order] if settings.classes else np.zeros(1)
        acc = np.zeros((max(len(settings.classes), 1), wh, ww))
        if data.dtype.kind == "f":  # a class matches the values the data's type holds (0.1 as float32)
            classes = classes.astype(data.dtype).astype(np.float64)
        if n == 2:  # the corners alone (and a ring around them): _load8 makes the rest
            hx, hy = _ring(mapping, r0, c0, h, w)
            vx, vy = hx, hy
        else:
            hx, hy, vx, vy = _points(mapping, r0, c0, h, w, n)
        accumulate(data, nodata, use_nodata, hx, hy, vx, vy, n, settings.edge_points == 2, wc0, wr0, ww, wh,
                   grid.width, mapping.period, _CODES[method], classes, acc, cover)
        found = cover > 0.0
        if method is Method.AVERAGE:
            result = [np.divide(acc[0], cover, out=np.zeros_like(cover), where=found)]
        elif method is Method.SUM:
            result = [acc[0]]
        else:  # fractions, in the config's order: the share of the target pixel's area
            back = np.empty_like(order)
            back[order] = np.arange(order.size)
            result = [np.minimum(acc[k], 1.0) for k in back]
    if settings.min_coverage > 0.0:
        found &= cover >= settings.min_coverage
    bands = [to_output(r, found, settings.dst_dtype, settings.dst_nodata,
                       avoid_nodata=method is not Method.FRACTIONS) for r in result]
    if settings.coverage:
        bands.append(to_output(np.minimum(cover, 1.0), cover > 0.0, settings.dst_dtype, settings.dst_nodata,
                               avoid_nodata=False))
    return np.stack(bands) if len(bands) > 1 else bands[0]


def warm_up(header: RasterHeader, grid: TargetGrid, settings: WarpSettings) -> None:
    """Load from numba's cache (or compile) what a chunk of this dataset calls, by resampling 2 x 2
    of its pixels: a job does this before its memory limit is set (engines.kernels.warm_up says
    why)."""
    data = np.zeros((min(2, header.height), min(2, header.width)), header.dtype)
    resample_chunk(data, Window(0, 0, data.shape[1], data.shape[0]), header, grid, Window(0, 0, 1, 1), settings)
