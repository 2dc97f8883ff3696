"""The plan of a run: the target grid and, per dataset, the tiles that are jobs.

Made from the config and raster headers only (never pixels) when the Snakefile is parsed, so that a
dry run lists every job. Parsing happens again in every cluster job, so the plan is cached on disk,
keyed by the config and each input's size and modification time.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from typing import Any

from workflow_lib.atomic import write_json_atomic
from workflow_lib.engines.blocks import choose_engine
from workflow_lib.config import nodata_override, target_crs, target_resolution
from workflow_lib.errors import ConfigError
from workflow_lib.planning.footprint import footprint_ring, pixel_scale, touched_tiles, union_bounds
from workflow_lib.planning.grid import TargetGrid
from workflow_lib.sources.header import RasterHeader, read_header
from workflow_lib.planning.settings import WarpSettings, resolve_settings

# Bump when the plan's content or its derivation changes, so that old caches are not reused.
PLAN_FORMAT = 3
DEFAULT_CACHE_DIR = ".cache/plan"


@dataclass(frozen=True)
class DatasetPlan:
    name: str
    header: RasterHeader
    settings: WarpSettings
    tiles: tuple[str, ...]

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "header": self.header.to_dict(),
            "settings": self.settings.to_dict(),
            "tiles": list(self.tiles),
        }

    @classmethod
    def from_dict(cls, data: dict) -> "DatasetPlan":
        return cls(
            data["name"],
            RasterHeader.from_dict(data["header"]),
            WarpSettings.from_dict(data["settings"]),
            tuple(data["tiles"]),
        )


@dataclass(frozen=True)
class Plan:
    grid: TargetGrid
    datasets: dict[str, DatasetPlan]

    @property
    def tile_count(self) -> int:
        return sum(len(d.tiles) for d in self.datasets.values())

    def to_dict(self) -> dict:
        return {
            "format": PLAN_FORMAT,
            "grid": self.grid.to_dict(),
            "datasets": {n: d.to_dict() for n, d in self.datasets.items()},
        }

    @classmethod
    def from_dict(cls, data: dict) -> "Plan":
        return cls(
            TargetGrid.from_dict(data["grid"]),
            {n: DatasetPlan.from_dict(d) for n, d in data["datasets"].items()},
        )


def build_plan(config: dict[str, Any]) -> Plan:
    """Read every input's header and work out the grid and the tiles. No caching here."""
    crs = target_crs(config)
    datasets = config["datasets"]
    headers = {name: read_header(name, ds["path"], ds.get("band", 1)) for name, ds in datasets.items()}
    # Tiles are chosen from outlines taken a pixel outside each raster, so that rounding never loses
    # a target pixel that grazes its edge; the union extent uses the exact outlines.
    rings = {name: footprint_ring(h, crs, margin_px=1.0) for name, h in headers.items()}
    for name, ring in rings.items():
        if len(ring) < 4:
            raise ConfigError(
                f"datasets.{name}: the footprint of {datasets[name]['path']} cannot be expressed in the "
                f"target CRS (no point of its outline transforms into {config['target']['crs']})"
            )
    extent = config["target"].get("extent", "union")
    if extent == "union":
        bounds = union_bounds([footprint_ring(h, crs, margin_px=0.0) for h in headers.values()])
    else:
        bounds = (extent["left"], extent["bottom"], extent["right"], extent["top"])
    target = config["target"]
    grid = TargetGrid.from_bounds(
        crs,
        bounds,
        target_resolution(config),
        tuple(target.get("origin", (0.0, 0.0))),
        config.get("tile_size", 4096),
    )
    error_threshold = config.get("warp", {}).get("error_threshold", 0.125)
    plans = {}
    for name, ds in datasets.items():
        header = headers[name]
        tiles = touched_tiles(grid, rings[name])
        if not tiles:
            raise ConfigError(
                f"datasets.{name}: {ds['path']} does not overlap the target extent {grid.bounds} "
                f"(in {target['crs']}); remove the dataset or widen target.extent"
            )
        same_crs = header.crs == crs
        try:
            engine = choose_engine(ds.get("engine", "auto"), ds["method"], same_crs, header.dtype, header.affine,
                                   grid.transform)
        except ValueError as exc:
            raise ConfigError(f"datasets.{name}.engine: {exc} ({ds['path']})") from None
        settings = resolve_settings(
            name,
            header,
            method=ds["method"],
            band=ds.get("band", 1),
            nodata_override=nodata_override(ds),
            dtype=ds.get("dtype"),
            scale=pixel_scale(header, grid),
            error_threshold=error_threshold,
            same_crs=same_crs,
            engine=engine,
        )
        plans[name] = DatasetPlan(name, header, settings, tuple(tiles))
    return Plan(grid, plans)


def plan_cache_key(config: dict[str, Any]) -> str:
    """Changes whenever the config or any input file (size, modification time) changes."""
    files = {}
    for name, ds in config["datasets"].items():
        stat = os.stat(ds["path"])
        files[name] = [os.path.abspath(ds["path"]), stat.st_size, stat.st_mtime_ns]
    text = json.dumps({"format": PLAN_FORMAT, "config": config, "files": files}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def plan_cache_path(config: dict[str, Any], cache_dir: str = DEFAULT_CACHE_DIR) -> str:
    return os.path.join(cache_dir, f"{plan_cache_key(config)}.json")


def load_plan(config: dict[str, Any], cache_dir: str = DEFAULT_CACHE_DIR, path: str | None = None) -> Plan:
    """The plan for this config, from the cache when inputs and config are unchanged (``path``:
    the cache file, when the caller has already worked it out)."""
    path = path or plan_cache_path(config, cache_dir)
    try:
        with open(path) as f:
            return Plan.from_dict(json.load(f))
    except (OSError, ValueError, KeyError, TypeError):
        pass  # no cache yet, or one from another version of this library: rebuild it below
    plan = build_plan(config)
    write_json_atomic(path, plan.to_dict())
    return plan
