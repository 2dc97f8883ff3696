"""Where source pixels' corners (and points along their edges) land on the target grid, to
TOLERANCE of a target pixel, without sending every corner through PROJ.

PROJ moves about a million points a second here, and a 20,000² input has 4e8 corners. So the
raster's pixel space is cut into blocks of BLOCK x BLOCK pixels anchored at its origin; a block's
points are interpolated by a tensor quartic (5 x 5 nodes moved exactly) and checked against PROJ
at the 4 x 4 points halfway between nodes. A block that misses by more than TOLERANCE is cut into
SUB_BLOCK blocks checked the same way, and the points of a sub-block that still misses (near a
projection's singularity, the edge of its domain) are moved one by one. Every point belongs to one
block, the one whose half-open range holds it, so a corner has one position whatever chunk or tile
asks for it: results do not depend on tiling, and neighbouring pixels share their corners exactly
(no gap and no overlap between their footprints: sums are conserved).

Positions are target pixel coordinates on the whole grid (column, row; (0, 0) is the grid's
top-left corner). When the target CRS is geographic, longitudes within a block are made continuous
(no jump at the antimeridian); the engine moves each footprint by whole turns (``period``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

from workflow_lib.coords import transform_points
from workflow_lib.planning.grid import TargetGrid
from workflow_lib.sources.header import RasterHeader

BLOCK = 256
SUB_BLOCK = 32
NODES = np.linspace(0.0, 1.0, 5)  # quartic: 5 nodes per axis
CHECKS = (np.arange(4) + 0.5) / 4  # halfway between nodes
# Largest distance, in target pixels, between an interpolated position and PROJ's own.
TOLERANCE = 1e-8
_NO_BLOCK = -(2 ** 62)


@dataclass(frozen=True)
class Mapping:
    """Source pixel coordinates to target pixel coordinates, for one raster onto one grid."""

    header: RasterHeader
    grid: TargetGrid

    @property
    def period(self) -> float:
        """A whole turn of longitude in target pixels when the target CRS is geographic, else 0."""
        return 360.0 / abs(self.grid.transform.a) if self.grid.crs.is_geographic else 0.0

    def exact(self, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """PROJ's positions of source pixel coordinates (rows, cols, any shape); NaN where a point
        cannot be moved."""
        x, y = self.header.transform @ (np.asarray(cols, np.float64), np.asarray(rows, np.float64))
        if self.header.crs != self.grid.crs:
            x, y, _ = transform_points(self.header.crs, self.grid.crs, x, y)
        tc, tr = ~self.grid.transform @ (x, y)
        return np.asarray(tc, np.float64), np.asarray(tr, np.float64)


@numba.njit(cache=True)
def _basis(t: float, out: np.ndarray) -> None:
    """Lagrange basis of the 5 equally spaced nodes at t (0..1)."""
    for k in range(5):
        v = 1.0
        xk = k / 4.0
        for m in range(5):
            if m != k:
                v *= (t - m / 4.0) / (xk - m / 4.0)
        out[k] = v


def _unwrap(values: np.ndarray, period: float, axis_first) -> np.ndarray:
    """``values`` moved by whole periods to within half a period of ``axis_first``."""
    if not period:
        return values
    return values - period * np.round((values - axis_first) / period)


def _fit_blocks(mapping: Mapping, r0: np.ndarray, c0: np.ndarray, size: int):
    """For blocks of ``size`` pixels whose first corners are (r0, c0) (1-d arrays): nodes (n, 2, 5,
    5) and whether the quartic through them meets TOLERANCE at the checks (n,)."""
    n = r0.size
    # Nodes and checks of every block, moved together in one call to PROJ.
    node_r = r0[:, None, None] + size * NODES[None, :, None] + 0 * NODES[None, None, :]
    node_c = c0[:, None, None] + 0 * NODES[None, :, None] + size * NODES[None, None, :]
    check_r = r0[:, None, None] + size * CHECKS[None, :, None] + 0 * CHECKS[None, None, :]
    check_c = c0[:, None, None] + 0 * CHECKS[None, :, None] + size * CHECKS[None, None, :]
    rows = np.concatenate([node_r.reshape(n, -1), check_r.reshape(n, -1)], axis=1)
    cols = np.concatenate([node_c.reshape(n, -1), check_c.reshape(n, -1)], axis=1)
    x, y = mapping.exact(rows, cols)
    x = _unwrap(x, mapping.period, x[:, :1])
    nodes = np.stack([x[:, :25].reshape(n, 5, 5), y[:, :25].reshape(n, 5, 5)], axis=1)
    basis = np.array([[_lagrange(t, k) for k in range(5)] for t in CHECKS])  # (4, 5)
    fitted = np.einsum("ik,nakl,jl->naij", basis, nodes, basis)  # (n, 2, 4, 4)
    exact = np.stack([x[:, 25:].reshape(n, 4, 4), y[:, 25:].reshape(n, 4, 4)], axis=1)
    with np.errstate(invalid="ignore"):
        error = np.abs(fitted - exact).reshape(n, -1).max(axis=1)
    good = np.isfinite(error) & (error <= TOLERANCE)
    return nodes, good


def _lagrange(t: float, k: int) -> float:
    v = 1.0
    for m in range(5):
        if m != k:
            v *= (t - m / 4.0) / (k / 4.0 - m / 4.0)
    return v


@numba.njit(cache=True)
def _bases(coords, size):
    """Per coordinate, the Lagrange basis (5) at its place in its block of ``size``."""
    out = np.empty((coords.size, 5))
    for i in range(coords.size):
        first = np.floor(coords[i] / size) * size
        _basis((coords[i] - first) / size, out[i])
    return out


@numba.njit(nogil=True, cache=True)
def _evaluate(rows, cols, b0r, b0c, top_ok, top_nodes, sub_ok, sub_nodes, out_x, out_y, todo):
    """Positions of the points (rows[i], cols[j]) of a product grid from the blocks' quartics;
    ``todo`` marks the points of blocks whose quartic missed (moved by PROJ afterwards).

    Block (a, b) of the arrays is block (b0r + a, b0c + b) of the raster. Along a row, the nodes
    weighted by the row's basis are kept while the block stays the same: then each point costs
    one basis per column (5 products per coordinate)."""
    per = BLOCK // SUB_BLOCK
    row_top, row_sub = _bases(rows, BLOCK), _bases(rows, SUB_BLOCK)
    col_top, col_sub = _bases(cols, BLOCK), _bases(cols, SUB_BLOCK)
    part = np.empty((2, 5))
    for i in range(rows.size):
        tr = int(np.floor(rows[i] / BLOCK))
        sr = int(np.floor(rows[i] / SUB_BLOCK))
        # The block whose partial sums are in part (top: 2 x its column; sub-block: 2 x its column
        # + 1), none at first: columns may be negative (a ring of points around a raster).
        current = _NO_BLOCK
        for j in range(cols.size):
            tc = int(np.floor(cols[j] / BLOCK))
            a, b = tr - b0r, tc - b0c
            if top_ok[a, b]:
                key = 2 * tc
                if key != current:
                    nodes = top_nodes[a, b]
                    for d in range(2):
                        for m in range(5):
                            v = 0.0
                            for k in range(5):
                                v += row_top[i, k] * nodes[d, k, m]
                            part[d, m] = v
                    current = key
                basis = col_top[j]
            else:
                sc = int(np.floor(cols[j] / SUB_BLOCK))
                sa, sb = sr - b0r * per, sc - b0c * per
                if not sub_ok[sa, sb]:
                    todo[i, j] = True
                    continue
                key = 2 * sc + 1
                if key != current:
                    nodes = sub_nodes[sa, sb]
                    for d in range(2):
                        for m in range(5):
                            v = 0.0
                            for k in range(5):
                                v += row_sub[i, k] * nodes[d, k, m]
                            part[d, m] = v
                    current = key
                basis = col_sub[j]
            x = 0.0
            y = 0.0
            for m in range(5):
                x += basis[m] * part[0, m]
                y += basis[m] * part[1, m]
            out_x[i, j] = x
            out_y[i, j] = y


def positions(mapping: Mapping, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Target pixel coordinates (x, y), each of shape (rows.size, cols.size), of the source pixel
    coordinates rows x cols (ascending; whole or fractional); NaN where a point cannot be moved."""
    rows = np.ascontiguousarray(rows, np.float64)
    cols = np.ascontiguousarray(cols, np.float64)
    b0r, b1r = int(np.floor(rows[0] / BLOCK)), int(np.floor(rows[-1] / BLOCK)) + 1
    b0c, b1c = int(np.floor(cols[0] / BLOCK)), int(np.floor(cols[-1] / BLOCK)) + 1
    tr, tc = np.meshgrid(np.arange(b0r, b1r), np.arange(b0c, b1c), indexing="ij")
    top_nodes, top_ok = _fit_blocks(mapping, (tr * BLOCK).ravel().astype(np.float64),
                                    (tc * BLOCK).ravel().astype(np.float64), BLOCK)
    shape = tr.shape
    per = BLOCK // SUB_BLOCK
    sub_shape = (shape[0] * per, shape[1] * per)
    sub_nodes = np.zeros((*sub_shape, 2, 5, 5))
    sub_ok = np.zeros(sub_shape, bool)
    missed = np.flatnonzero(~top_ok)
    if missed.size:
        # The sub-blocks of the blocks that missed, and only those.
        sa, sb = np.meshgrid(np.arange(per), np.arange(per), indexing="ij")
        ra = (missed // shape[1])[:, None] * per + sa.ravel()[None, :]
        rb = (missed % shape[1])[:, None] * per + sb.ravel()[None, :]
        ra, rb = ra.ravel(), rb.ravel()
        nodes, ok = _fit_blocks(mapping, ((ra + b0r * per) * SUB_BLOCK).astype(np.float64),
                                ((rb + b0c * per) * SUB_BLOCK).astype(np.float64), SUB_BLOCK)
        sub_nodes[ra, rb] = nodes
        sub_ok[ra, rb] = ok
    # Every point is set below: by its block's quartic, or by PROJ (NaN where PROJ fails).
    out_x = np.empty((rows.size, cols.size))
    out_y = np.empty((rows.size, cols.size))
    todo = np.zeros((rows.size, cols.size), bool)
    _evaluate(rows, cols, b0r, b0c, top_ok.reshape(shape), top_nodes.reshape(*shape, 2, 5, 5), sub_ok, sub_nodes,
              out_x, out_y, todo)
    if todo.any():
        ii, jj = np.nonzero(todo)
        out_x[ii, jj], out_y[ii, jj] = mapping.exact(rows[ii], cols[jj])
    return out_x, out_y
