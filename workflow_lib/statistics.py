"""Statistics of a dataset's pixels, gathered while its tiles are written and merged for its mosaic.

Each tile computes them from the pixels it writes (the mosaic copies those pixels unchanged), and
keeps them in a GeoTIFF tag beside its settings digest, so a tile kept from an earlier run still
brings its figures. Merging needs no second pass over the data: counts add up, the mean and the
sum of squared deviations combine exactly (Chan et al.'s pairwise update), and the histogram is
kept on fixed bins that every tile shares whatever its values: the upper 16 bits of each value as a
float32 (sign, exponent, 7 bits of mantissa, in the order of the values). Each such bin is one
small interval of values: one per integer up to 256 in magnitude (classes, bytes), within 1/128 of
the value for any other. For display they are grouped into about 32 bins between the dataset's
minimum and maximum, whose edges are moved onto the fixed bins' boundaries, so that the counts are
exact for those edges.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import numpy as np

STATS_TAG = "WORKFLOW_TILE_STATS"
KEYS = 1 << 16
SLICE = 1 << 20


def _ordered(values: np.ndarray) -> np.ndarray:
    """float32 bit patterns mapped to unsigned integers in the order of the values (negatives
    flipped), so that a key's bin is one interval [start, next start) of values."""
    bits = np.ascontiguousarray(values, np.float32).view(np.uint32)
    return np.where(bits >> 31, ~bits, bits | np.uint32(0x80000000))


def _keys(values: np.ndarray) -> np.ndarray:
    return (_ordered(values) >> 16).astype(np.uint16)


def _from_ordered(ordered: np.ndarray) -> np.ndarray:
    ordered = ordered.astype(np.uint32)
    bits = np.where(ordered >> 31, ordered & np.uint32(0x7FFFFFFF), ~ordered)
    return bits.view(np.float32).astype(np.float64)


def key_starts(keys: np.ndarray) -> np.ndarray:
    """The lowest value of each key's bin (float32 values, as float64)."""
    return _from_ordered(keys.astype(np.uint32) << 16)


def key_values(keys: np.ndarray) -> np.ndarray:
    """The value each key stands for: the one in its bin whose lower 16 bits are zero, which is the
    exact value of every integer up to 256 in magnitude (and of 0.5, 0.25, ...): a class."""
    keys = keys.astype(np.uint32)
    bits = np.where(keys >= 0x8000, (keys - 0x8000) << 16, ((0x7FFF - keys) << 16) | np.uint32(0x80000000))
    return bits.astype(np.uint32).view(np.float32).astype(np.float64)


def snapped_edges(lo: float, hi: float, bins: int) -> np.ndarray:
    """About ``bins`` equal bins from ``lo`` to ``hi``, each edge moved down to the start of a
    key's bin, so that every key falls in exactly one bin: the counts are then exact, as
    numpy.histogram of the float32 values on these edges gives them."""
    targets = np.linspace(lo, hi, bins + 1)[:-1]
    keys = np.unique(_keys(targets))
    last = int(_keys(np.array([hi]))[0]) + 1  # one past the key of the maximum: the end is open
    ends = key_starts(np.array([last])) if last < KEYS else np.array([np.inf])
    return np.concatenate([key_starts(keys), ends])


@dataclass
class PixelStats:
    total: int = 0  # pixels, nodata included
    valid: int = 0
    min: float = math.inf
    max: float = -math.inf
    mean: float = 0.0
    m2: float = 0.0  # sum of squared deviations from the mean
    hist: np.ndarray = field(default_factory=lambda: np.zeros(KEYS, np.int64))

    def add(self, data: np.ndarray, nodata: float | None) -> None:
        """Add the pixels of ``data``, in slices of about a million so that the temporaries stay
        small beside the chunk itself."""
        self.total += int(data.size)
        flat = data.reshape(-1)
        for start in range(0, flat.size, SLICE):
            self._add(flat[start:start + SLICE], nodata)

    def _add(self, part: np.ndarray, nodata: float | None) -> None:
        ok = ~np.isnan(part) if part.dtype.kind == "f" else np.ones(part.shape, bool)
        if nodata is not None and not math.isnan(nodata):
            ok &= part != part.dtype.type(nodata)
        values = part[ok]
        if not values.size:
            return
        values64 = values.astype(np.float64)
        mean = float(values64.mean())
        values64 -= mean
        m2 = float(np.dot(values64, values64))
        self._combine(int(values.size), mean, m2, float(values.min()), float(values.max()))
        self.hist += np.bincount(_keys(values), minlength=KEYS)

    def _combine(self, n: int, mean: float, m2: float, lo: float, hi: float) -> None:
        if n == 0:
            return
        total = self.valid + n
        delta = mean - self.mean
        self.mean += delta * n / total
        self.m2 += m2 + delta * delta * self.valid * n / total
        self.valid = total
        self.min, self.max = min(self.min, lo), max(self.max, hi)

    def merge(self, other: "PixelStats") -> None:
        self.total += other.total
        self._combine(other.valid, other.mean, other.m2, other.min, other.max)
        self.hist += other.hist

    @property
    def std(self) -> float | None:
        return math.sqrt(self.m2 / self.valid) if self.valid else None

    def to_json(self) -> str:
        nz = np.flatnonzero(self.hist)
        return json.dumps({"total": self.total, "valid": self.valid,
                           "min": self.min if self.valid else None, "max": self.max if self.valid else None,
                           "mean": self.mean, "m2": self.m2,
                           "hist": [nz.tolist(), self.hist[nz].tolist()]}, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> "PixelStats":
        d = json.loads(text)
        hist = np.zeros(KEYS, np.int64)
        keys, counts = d["hist"]
        hist[np.asarray(keys, np.int64)] = np.asarray(counts, np.int64)
        return cls(d["total"], d["valid"], math.inf if d["min"] is None else d["min"],
                   -math.inf if d["max"] is None else d["max"], d["mean"], d["m2"], hist)

    def summary(self, bins: int = 32, categorical: bool = False) -> dict:
        """What the report and the database keep: counts, range, mean, standard deviation and a
        histogram; ``categorical``: one bar per value (classes) when there are at most 64."""
        out = {"total_pixels": self.total, "valid_pixels": self.valid,
               "valid_share": self.valid / self.total if self.total else 0.0,
               "min": self.min if self.valid else None, "max": self.max if self.valid else None,
               "mean": self.mean if self.valid else None, "std": self.std, "histogram": None}
        nz = np.flatnonzero(self.hist)
        if not nz.size:
            return out
        values, counts = key_values(nz), self.hist[nz]
        if categorical and nz.size <= 64:
            order = np.argsort(values)
            out["histogram"] = {"values": values[order].tolist(), "counts": counts[order].tolist()}
            return out
        if not (math.isfinite(self.min) and math.isfinite(self.max)):
            return out  # infinities among the values: no bins to draw
        edges = snapped_edges(self.min, self.max, bins)
        where = np.searchsorted(edges, key_starts(nz), side="right") - 1
        binned = np.bincount(where, weights=counts, minlength=len(edges) - 1).astype(np.int64)
        out["histogram"] = {"edges": edges.tolist(), "counts": binned.tolist()}
        return out


def merged(items) -> PixelStats:
    total = PixelStats()
    for item in items:
        total.merge(item)
    return total
