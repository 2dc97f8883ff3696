"""A dataset's registration: the check, just before its tiles are made, that the input still is
what the plan saw, and the record of its header and settings that the batch and mosaic jobs read."""

from __future__ import annotations

import json
import logging

from workflow_lib.atomic import write_json_atomic
from workflow_lib.domain import Engine, Method
from workflow_lib.errors import InputRasterError
from workflow_lib.planning.grid import TargetGrid
from workflow_lib.planning.plan import DatasetPlan
from workflow_lib.sources.header import read_header

log = logging.getLogger(__name__)


def register_dataset(name: str, dataset: dict, grid: dict, out_path: str) -> DatasetPlan:
    """Check that the input still is what the plan saw, and record its header and settings in
    ``out_path`` (with the grid: what the dataset's other jobs read, load_dataset)."""
    planned = DatasetPlan.from_dict(dataset)
    header = read_header(name, planned.header.path, planned.settings.band)
    if (header.size_bytes, header.mtime_ns) != (planned.header.size_bytes, planned.header.mtime_ns):
        raise InputRasterError(
            name, header.path, "the file changed after the workflow was planned; run snakemake again"
        )
    log.info(
        "dataset %s: %s, %dx%d px, %s, nodata %s, CRS %s, %d tiles, settings %s",
        name, header.path, header.width, header.height, header.dtype, header.nodata,
        header.crs.to_string(), planned.tile_count, planned.settings.describe(),
    )
    log.info("dataset %s: engine %s (%s)", name, planned.settings.engine.label, planned.settings.engine_reason)
    if planned.note:
        log.warning("dataset %s: %s", name, planned.note)
    settings = planned.settings
    if settings.method is Method.SUM and not settings.same_crs and settings.engine is Engine.WARP:
        log.warning(
            "dataset %s: sum across CRSs depends on how GDAL 3.10 chunks the warp (docs/accuracy.md); "
            "prefer summing in the input's CRS", name,
        )
    write_json_atomic(out_path, {"grid": grid, "dataset": planned.to_dict()})
    return planned


def load_dataset(meta_path: str) -> tuple[TargetGrid, DatasetPlan]:
    """The grid and the dataset as its registration recorded them."""
    with open(meta_path) as f:
        meta = json.load(f)
    return TargetGrid.from_dict(meta["grid"]), DatasetPlan.from_dict(meta["dataset"])
