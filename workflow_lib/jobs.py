"""The Snakemake adapters: one function per rule, called by its script in scripts/. Each reads the
``snakemake`` object and calls the library; the work lives in the library, the process's set-up in
workflow_lib.runtime, and nothing here is worth a test of its own beyond the workflow's."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import threading
from collections.abc import Iterator

from workflow_lib.atomic import write_json_atomic
from workflow_lib.domain import RESULTS_DIR, OutputFormat, TileIndex, manifest_dir, tile_dir, zarr_store_path
from workflow_lib.engines.batch import batch_work, manifest, manifest_tiles, prepare_kernels, run_batch
from workflow_lib.errors import BatchError
from workflow_lib.mosaics.mosaic import (StackLayer, mosaic_statistics, write_mosaic, write_stack,
                                         write_virtual_mosaic)
from workflow_lib.mosaics.zarr_store import ChunkWriter, ShardWriter, finish_store, prepare_array
from workflow_lib.planning.grid import TargetGrid
from workflow_lib.planning.plan import output_formats
from workflow_lib.planning.registration import load_dataset, register_dataset
from workflow_lib.planning.table import Area
from workflow_lib.runtime import STOP_STARTING, THREAD_STACK_BYTES, job_logging, memory_limit, restart_after_compiling
from workflow_lib.status import DEFAULT_SPOOL_DIR, StatusStore, redact, resolve_url
from workflow_lib.status.events import DatasetStatistics
from workflow_lib.status.reporter import BatchReporter
from workflow_lib.status.run import PAUSED_EXIT_CODE, PAUSED_MARK, RUN_ID_ENV, dataset_recorded

log = logging.getLogger("workflow_lib.jobs")


def granted_mem_mb(snakemake) -> int:
    """The memory this job was granted, in MB, for its own use.

    Snakemake caps a job's declared mem_mb at the run's --resources limit: the value the job was
    actually granted is in snakemake.resources, so the budget comes from there. Inside a SLURM job,
    part of it is for the Snakemake processes running this job (config memory.cluster_overhead_mb,
    which the rules added to what they asked for).
    """
    granted = int(snakemake.resources.get("mem_mb", 1024))
    if os.environ.get("SLURM_JOB_ID"):
        granted = max(granted - int(snakemake.config["memory"]["cluster_overhead_mb"]), 64)
    return granted


def job_memory_limit(snakemake, what: str):
    return memory_limit(granted_mem_mb(snakemake), snakemake.config["memory"]["enforce"], snakemake.threads, what)


def database_url(snakemake) -> str:
    return resolve_url(snakemake.config["database"]["url"])


@contextlib.contextmanager
def status_store(snakemake, read_only: bool = False) -> Iterator[StatusStore]:
    """The run's status database, closed whatever happens."""
    store = StatusStore(database_url(snakemake), spool_dir=DEFAULT_SPOOL_DIR, read_only=read_only)
    try:
        yield store
    finally:
        store.close()


def zarr_chosen(snakemake) -> bool:
    return OutputFormat.ZARR in output_formats(snakemake.config)


def run_register_job(snakemake) -> None:
    with job_logging(snakemake.log[0]):
        planned = register_dataset(snakemake.wildcards.dataset, snakemake.params.dataset, snakemake.params.grid,
                                   snakemake.output[0])
        if zarr_chosen(snakemake):
            # Its array in the Zarr store, before its batches write chunks into it. From the config, not
            # a parameter: choosing formats must not rerun the registrations and everything after them.
            store = zarr_store_path()
            made = prepare_array(store, TargetGrid.from_dict(snakemake.params.grid), planned)
            log.info("zarr array of %s in %s: %s", planned.name, store, "created, no chunk yet" if made else
                     "kept with its chunks (same grid, data type and tiles)")
        with status_store(snakemake) as store:
            store.record(dataset_recorded(planned, "registered"))


def run_batch_job(snakemake) -> None:
    threading.stack_size(THREAD_STACK_BYTES)
    with job_logging(snakemake.log[0]):
        grid, dataset = load_dataset(snakemake.input.meta)
        batch = snakemake.wildcards.batch
        tiles = [TileIndex.parse(t) for t in snakemake.params.tiles]
        mem_mb = granted_mem_mb(snakemake)
        # Before the limit: numba's compiler cannot run under it (engines.kernels.warm_up). A small
        # batch does without the compiled kernels (chunks.KERNELS_MIN_WORK).
        compiled = prepare_kernels(dataset, mem_mb, grid, batch_work(dataset, grid, tiles))
        restart_after_compiling(f"batch {batch} of dataset '{dataset.name}'")
        with status_store(snakemake) as store:
            reporter = BatchReporter(store, dataset.name, batch, dataset.settings.engine, mem_mb)
            hooks = reporter.hooks
            # The Zarr store (output.formats): each tile made goes into its chunk at once. From the
            # config, not a parameter: choosing formats must not rerun every batch.
            chunks = None
            if zarr_chosen(snakemake):
                # A sharded array (a dataset of many tiles): the batch is one shard, written as one file.
                store, folder = zarr_store_path(), snakemake.params.tile_dir
                chunks = (ShardWriter(store, grid, dataset, folder, batch) if dataset.shard
                          else ChunkWriter(store, grid, dataset, folder))
                hooks = dataclasses.replace(hooks, made=chunks.write, wants_pixels=True)
            complete = False
            try:
                with job_memory_limit(snakemake, f"batch {batch} of dataset '{dataset.name}'"), \
                        reporter.heartbeat(database_url(snakemake), DEFAULT_SPOOL_DIR,
                                           float(snakemake.config["database"]["heartbeat_seconds"])):
                    result = run_batch(
                        dataset, grid, batch, tiles, snakemake.params.tile_dir, mem_mb=mem_mb,
                        threads=snakemake.threads, compress=snakemake.params.compress,
                        stall_timeout=snakemake.config["stall_timeout"], stop=STOP_STARTING, hooks=hooks,
                        compiled=compiled,
                    )
                    if chunks and result.kept:
                        chunks.fill_missing(result.kept)
                    complete = not result.failed and not result.left
            finally:
                if chunks:
                    chunks.close(complete)
        log.info("batch %s of %s: %d made, %d kept, %d failed, %d not started", batch, dataset.name,
                 len(result.made), len(result.kept), len(result.failed), len(result.left))
        if result.failed:
            first, error = next(iter(result.failed.items()))
            raise BatchError(
                f"batch {batch} of dataset '{dataset.name}': {len(result.failed)} of {len(tiles)} tile(s) failed "
                f"({', '.join(t.id for t in sorted(result.failed))}); the other tiles are kept. First error, tile "
                f"{first}: {error}")
        if result.left:
            log.warning("batch %s of %s %s: %d tile(s) left for the next run", batch, dataset.name,
                        PAUSED_MARK, len(result.left))
            raise SystemExit(PAUSED_EXIT_CODE)
        write_json_atomic(snakemake.output[0], manifest(dataset, grid, batch, tiles, result))


def run_mosaic_job(snakemake) -> None:
    with job_logging(snakemake.log[0]):
        grid, dataset = load_dataset(snakemake.input.meta)
        paths, stats = manifest_tiles(list(snakemake.input.batches), snakemake.params.tile_dir,
                                      dataset.settings.dst_nodata)
        with job_memory_limit(snakemake, f"mosaic of dataset '{dataset.name}'"):
            write_mosaic(
                dataset.name, dataset.settings, grid, paths, snakemake.output.mosaic,
                mem_mb=granted_mem_mb(snakemake), threads=snakemake.threads,
                compress=snakemake.params.compress, cog=snakemake.params.cog, level=snakemake.params.level,
                band_names=dataset.band_names,
            )
        record_statistics(snakemake, grid, dataset, stats)


def run_statistics_job(snakemake) -> None:
    """Without mosaics (output.formats: [zarr]): a dataset's statistics alone, from its batches'
    manifests, which carry its tiles' (no pixel is read), and its mosaic as a VRT over the tiles."""
    with job_logging(snakemake.log[0]):
        grid, dataset = load_dataset(snakemake.input.meta)
        paths, stats = manifest_tiles(list(snakemake.input.batches), snakemake.params.tile_dir,
                                      dataset.settings.dst_nodata)
        record_statistics(snakemake, grid, dataset, stats)
        write_virtual_mosaic(dataset.name, dataset.settings, grid, paths, snakemake.output.vrt, dataset.band_names)


def record_statistics(snakemake, grid: TargetGrid, dataset, stats) -> None:
    figures = mosaic_statistics(stats, grid, dataset)
    log.info("%s: %d of %d pixels valid, min %s, max %s, mean %s, std %s", dataset.name,
             figures["valid_pixels"], figures["total_pixels"], figures["min"], figures["max"],
             figures["mean"], figures["std"])
    write_json_atomic(snakemake.output.statistics, figures)
    with status_store(snakemake) as store:
        store.record(DatasetStatistics(dataset=dataset.name, run_id=os.environ.get(RUN_ID_ENV) or None,
                                       **{k: figures[k] for k in ("total_pixels", "valid_pixels", "min",
                                                                  "max", "mean", "std", "histogram")}))


def run_stack_job(snakemake) -> None:
    """The GeoTIFF stack, from every dataset's tiles (their batches' manifests list them)."""
    with job_logging(snakemake.log[0]):
        grid = TargetGrid.from_dict(snakemake.params.grid)
        # Each dataset's manifests are those of the run's in its folder (domain.manifest_dir).
        by_folder: dict[str, list[str]] = {}
        for path in snakemake.input.batches:
            by_folder.setdefault(os.path.normpath(os.path.dirname(path)), []).append(path)
        layers = []
        for record in snakemake.input.records:
            _, dataset = load_dataset(record)
            manifests = by_folder.get(os.path.normpath(manifest_dir(dataset.name)), [])
            paths, _ = manifest_tiles(manifests, tile_dir(dataset.name), dataset.settings.dst_nodata)
            layers.append(StackLayer(dataset.name, dataset.settings, tuple(paths), dataset.band_names))
        with job_memory_limit(snakemake, "stack"):
            write_stack(
                layers, grid, snakemake.output[0],
                mem_mb=granted_mem_mb(snakemake), threads=snakemake.threads,
                compress=snakemake.params.compress, cog=snakemake.params.cog, level=snakemake.params.level,
            )


def run_zarr_store_job(snakemake) -> None:
    with job_logging(snakemake.log[0]):
        grid = TargetGrid.from_dict(snakemake.params.grid)
        removed = finish_store(snakemake.params.store, grid, list(snakemake.params.names))
        for name in removed:
            log.info("zarr store: %s is no longer a dataset of this run, removed", name)
        log.info("zarr store %s: %d array(s), metadata consolidated", snakemake.params.store,
                 len(snakemake.params.names))


def run_table_part_job(snakemake) -> None:
    """One area's rows of the per-cell table, from the tiles its datasets' batches made (their
    manifests list them)."""
    from workflow_lib.mosaics.table import write_table_part  # pyarrow: only the table's jobs need it

    with job_logging(snakemake.log[0]):
        loaded = [load_dataset(path) for path in snakemake.input.records]
        grid, datasets = loaded[0][0], [d for _, d in loaded]
        area = Area.parse(snakemake.wildcards.area)
        tiles: dict[str, list[TileIndex]] = {}
        for path in snakemake.input.batches:
            with open(path) as f:
                made = json.load(f)
            tiles.setdefault(made["dataset"], []).extend(TileIndex.parse(t) for t in made["tiles"])
        with job_memory_limit(snakemake, f"table area {area.id}"):
            rows = write_table_part(snakemake.output[0], grid, area, datasets,
                                    {d.name: tile_dir(d.name) for d in datasets}, tiles)
        log.info("table area %s: %d row(s) from %s", area.id, rows,
                 ", ".join(f"{len([t for t in found if area.holds(t)])} tile(s) of {name}"
                           for name, found in tiles.items()) or "no tile")


def run_table_job(snakemake) -> None:
    from workflow_lib.mosaics.table import finish_table

    with job_logging(snakemake.log[0]):
        loaded = [load_dataset(path) for path in snakemake.input.records]
        folder = os.path.dirname(snakemake.output[0])
        for path in finish_table(folder, loaded[0][0], [d for _, d in loaded], list(snakemake.params.areas)):
            log.info("table: %s is no area of this run (or a killed writer's), removed", path)
        log.info("table %s: %d file(s), schema written", folder, len(snakemake.params.areas))


def run_figures_job(snakemake) -> None:
    """The report's pages of the run, once every batch is done: the map of tiles, the per-tile
    figures (both from the status database) and the config. Beside the mosaics and the store, not
    after them: they need the tiles only."""
    # matplotlib and pandas (views.report): only the report's jobs need them.
    from workflow_lib.views.report import tile_frame, write_config_page, write_job_figures, write_tile_map

    out = snakemake.output
    with job_logging(snakemake.log[0]):
        with status_store(snakemake, read_only=True) as store:
            try:
                frame = tile_frame(store)
            except store.backend.unreachable as exc:
                # No status database (a run without the status logger): the figures say so, the run goes on.
                log.warning("status database %s cannot be read (%s): the tile figures are empty",
                            redact(store.url), exc)
                frame = tile_frame(None)
        frame = frame[frame["dataset"].isin(list(snakemake.params.datasets))]
        write_tile_map(frame, out.tile_map)
        write_job_figures(frame, out.figures)
        write_config_page(snakemake.config, out.config)
        log.info("report: the tile map and figures of %d tile(s), the config page", len(frame))


def run_summary_job(snakemake) -> None:
    """The run's summary, once every product is there: each dataset's quicklook, the statistics
    page, then the STAC catalog (which hashes the quicklooks too). One process for all: each of
    these costs less than a Python process's start."""
    # matplotlib (views.report) and pystac (mosaics.stac): only the report's jobs need them.
    from workflow_lib.mosaics.stac import write_catalog
    from workflow_lib.views.report import write_quicklook, write_statistics_page

    out = snakemake.output
    with job_logging(snakemake.log[0]):
        for source, statistics, path in zip(snakemake.params.sources, snakemake.input.statistics, out.quicklooks):
            write_quicklook(source, statistics, path)
        write_statistics_page(list(snakemake.input.statistics), out.statistics)
        log.info("report: %d quicklook(s) and the statistics page", len(out.quicklooks))
        loaded = [load_dataset(path) for path in snakemake.input.records]
        path = write_catalog(RESULTS_DIR, loaded[0][0], [d for _, d in loaded],
                             tuple(OutputFormat(f) for f in snakemake.params.formats), snakemake.config,
                             snakemake.params.workflow_dir)
        log.info("STAC catalog: %s, %d item(s)", path, len(loaded))
