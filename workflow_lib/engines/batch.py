"""Make a batch of tiles in one job: the tiles still missing, several at once, each its own file.

A tile on disk is kept only if it was made with the dataset's current settings: every tile file
carries a digest of what shapes its pixels (the target grid, the warp settings, the input file's
identity) in a GeoTIFF tag, compared before the tile is skipped. A tile that fails is reported and
the others go on; a stop request (SIGTERM: pause, or a cluster's warning) lets the running tiles
finish and starts no new one. Killed outright, the job loses only its running tiles: finished ones
are renamed into place as each ends.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import rasterio

from workflow_lib.atomic import remove_stale_temporaries
from workflow_lib.domain import (RESULTS_DIR, Engine, OutputFormat, TileIndex, chunk_path, manifest_dir, tile_dir,
                                 tile_file_name, tiles_without_chunks, zarr_store_path)
from workflow_lib.engines.chunks import loads_numba, uses_kernels
from workflow_lib.engines.compose import make_tile
from workflow_lib.engines.resample import resample_tile
from workflow_lib.errors import InputRasterError, JobMemoryError, WorkflowLibError, out_of_memory
from workflow_lib.planning.batches import shard_index
from workflow_lib.planning.digest import DIGEST_TAG, tile_digest, tile_tags
from workflow_lib.planning.grid import TargetGrid
from workflow_lib.planning.plan import DatasetPlan, Plan
from workflow_lib.planning.settings import WarpSettings
from workflow_lib.runtime import BASELINE_MB, KERNELS_MB, MIN_TILE_SHARE_MB
from workflow_lib.sources.header import RasterHeader, changed_since_planning
from workflow_lib.sources.members import members_changed
from workflow_lib.statistics import STATS_TAG, PixelStats
from workflow_lib.watchdog import Watchdog

log = logging.getLogger(__name__)

def part_sources(dataset: DatasetPlan) -> list[tuple[RasterHeader, WarpSettings]]:
    """The rasters the dataset's tiles are made from, with their warp settings: its own, or each
    part's."""
    return [(p.header, p.settings) for p in dataset.parts] or [(dataset.header, dataset.settings)]


def inputs_unchanged(dataset: DatasetPlan) -> None:
    """Raise InputRasterError if a file the dataset reads is not the one the run planned with: its
    tiles would put the new pixels on the old header (another size, another place)."""
    for header, _ in part_sources(dataset):
        why = changed_since_planning(header) or members_changed(header.path)
        if why:
            raise InputRasterError(dataset.name, header.path, why)


def compiled_kernels(dataset: DatasetPlan, mem_mb: int, work: float | None = None) -> bool:
    """Whether this job, of ``work`` (its tiles' estimated work; None: unknown), reduces the
    dataset's blocks with the compiled kernels (chunks.uses_kernels)."""
    return uses_kernels(dataset.settings, mem_mb, work)


def batch_work(dataset: DatasetPlan, grid: TargetGrid, tiles: list[TileIndex]) -> float:
    """The estimated work of making ``tiles`` (DatasetPlan.tile_work_of), from the plan alone."""
    work = dataset.tile_work_of(grid)
    return sum(work(t) for t in tiles)


def prepare_kernels(dataset: DatasetPlan, mem_mb: int, grid: TargetGrid | None = None,
                    work: float | None = None) -> bool:
    """compiled_kernels(), with the kernels compiled or loaded now: call it before a memory limit
    is set (engines.kernels.warm_up says why). With ``grid``, the conservative engine's too."""
    if grid is not None:
        for header, settings in part_sources(dataset):
            if settings.engine is Engine.CONSERVATIVE:
                from workflow_lib.engines.conservative import warm_up as warm_up_conservative  # numba

                started = time.monotonic()
                warm_up_conservative(header, grid, settings)
                log.info("conservative kernels for %s %s ready in %.2f s", header.dtype, settings.method,
                         time.monotonic() - started)
                break
    if not compiled_kernels(dataset, mem_mb, work):
        return False
    from workflow_lib.engines.kernels import warm_up  # numba, only in the jobs that use it

    started = time.monotonic()
    warm_up(dataset.header.dtype, dataset.settings.method)
    log.info("compiled kernels for %s %s ready in %.2f s", dataset.header.dtype, dataset.settings.method,
             time.monotonic() - started)
    return True


def kept_tile_stats(path: str, tags: dict, nodata) -> PixelStats:
    """The statistics a kept tile carries; a tile from before they were recorded is read once."""
    if STATS_TAG in tags:
        with contextlib.suppress(ValueError, KeyError, TypeError):
            return PixelStats.from_json(tags[STATS_TAG])
    stats = PixelStats()
    with rasterio.open(path) as src:
        for _, window in src.block_windows(1):
            stats.add(src.read(1, window=window), nodata)
    return stats


@dataclass
class BatchResult:
    made: list[TileIndex] = field(default_factory=list)
    kept: list[TileIndex] = field(default_factory=list)
    failed: dict[TileIndex, str] = field(default_factory=dict)  # tile -> error
    left: list[TileIndex] = field(default_factory=list)  # not started: a stop was requested
    # Of the made and kept tiles together, merged in tile order once the batch ends: floating-point
    # sums depend on their order, and the order in which threads finish tiles is chance, so a
    # resumed batch's statistics are then the uninterrupted batch's, to the last bit.
    stats: PixelStats = field(default_factory=PixelStats)
    tile_stats: dict[TileIndex, PixelStats] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return not self.failed and not self.left


@dataclass
class TileHooks:
    """What the job is told as each tile starts and ends (the status database, heartbeats); called
    from the batch's worker threads. ``progress(tile, done, total, pixels_read)``: ``done`` of the
    tile's ``total`` chunks are written. ``made(tile, pixels)``: the tile's file is in place, for
    the job's other outputs of it (its Zarr chunk), with its pixels when the engine held them all at
    once (else None: read the file); if it raises, the tile fails."""

    started: Callable[[TileIndex], None] = lambda tile: None
    made: Callable[[TileIndex, np.ndarray | None], None] = lambda tile, pixels: None
    finished: Callable[[TileIndex, dict], None] = lambda tile, figures: None
    failed: Callable[[TileIndex, str], None] = lambda tile, error: None
    progress: Callable[[TileIndex, int, int, int], None] = lambda tile, done, total, pixels_read: None
    # Whether ``made`` uses the pixels: the engine then keeps a tile made in one chunk for it.
    wants_pixels: bool = False


def concurrency(threads: int, tiles: int, mem_mb: int, fixed_mb: int = BASELINE_MB) -> int:
    """Tiles made at once: one per thread, as many as there are, and as many as mem_mb can hold
    beyond what the job holds whatever it makes (``fixed_mb``)."""
    by_memory = max(1, (mem_mb - fixed_mb) // MIN_TILE_SHARE_MB)
    return max(1, min(threads, tiles, by_memory))


def run_batch(
    dataset: DatasetPlan,
    grid: TargetGrid,
    batch: str,
    tiles: list[TileIndex],
    folder: str,
    mem_mb: int,
    threads: int = 1,
    compress: str = "deflate",
    stall_timeout: float = 600.0,
    stop: threading.Event | None = None,
    hooks: TileHooks | None = None,
    max_chunk_bytes: int | None = None,
    compiled: bool | None = None,
) -> BatchResult:
    """Make the tiles of ``batch`` that are not on disk with the current digest, ``threads`` at a
    time within ``mem_mb`` in all, each written atomically into ``folder`` (the dataset's tile_dir).

    ``compiled``: whether blocks are reduced by the compiled kernels, prepared by the caller with
    prepare_kernels() (None: decided and prepared here)."""
    stop = stop or threading.Event()
    hooks = hooks or TileHooks()
    digest = tile_digest(grid, dataset)
    result = BatchResult()
    todo: queue.SimpleQueue[TileIndex] = queue.SimpleQueue()
    for index in tiles:
        path = index.path(folder)
        tags = tile_tags(path) or {}
        found = tags.get(DIGEST_TAG)
        if found == digest:
            result.kept.append(index)
            result.tile_stats[index] = kept_tile_stats(path, tags, dataset.settings.dst_nodata)
            continue
        if found is not None:
            log.info("tile %s of %s was made with other settings (digest %s, now %s): made again",
                     index, dataset.name, found, digest)
        todo.put(index)
    n_todo = len(tiles) - len(result.kept)
    if compiled is None:
        compiled = prepare_kernels(dataset, mem_mb, grid) if n_todo else False
    # numba and its code: the block engine's kernels, or the conservative engine's (any part's).
    numba_mb = KERNELS_MB if compiled or any(loads_numba(s, mem_mb) for _, s in part_sources(dataset)) else 0
    fixed_mb = BASELINE_MB + numba_mb
    running = concurrency(threads, n_todo, mem_mb, fixed_mb)
    # Each tile's budget: the interpreter's baseline (as MemoryBudget counts it) plus its part of
    # what the job has beyond its fixed memory.
    share_mb = BASELINE_MB + (mem_mb - fixed_mb) // running
    tile_threads = max(1, threads // running)
    log.info("batch %s of %s: %d tiles, %d on disk with the current settings, %d to make, %d at a time "
             "(%d MB and %d thread(s) each; digest %s)", batch, dataset.name, len(tiles), len(result.kept),
             n_todo, running, share_mb, tile_threads, digest)
    active: dict[TileIndex, None] = {}
    lock = threading.Lock()

    def make(index: TileIndex) -> None:
        tile = grid.tile(index)
        what = f"tile {index} of dataset '{dataset.name}' ({dataset.header.path})"
        hooks.started(index)
        started = time.monotonic()
        try:
            inputs_unchanged(dataset)
            with Watchdog(stall_timeout, what) as dog:
                options = dict(threads=tile_threads, compress=compress, max_chunk_bytes=max_chunk_bytes,
                               progress=dog.tick, tags={DIGEST_TAG: digest}, compiled=compiled,
                               on_chunk=lambda done, total, read: hooks.progress(index, done, total, read))
                if dataset.parts or dataset.settings.bands:  # pieces: parts in order, bands (engines.compose)
                    figures = make_tile(dataset, grid, tile, index.path(folder), share_mb, **options)
                else:
                    figures = resample_tile(dataset.name, dataset.header, dataset.settings, grid, tile,
                                            index.path(folder), mem_mb=share_mb, keep_pixels=hooks.wants_pixels,
                                            **options)
            try:
                inputs_unchanged(dataset)  # replaced while the tile read it: the tile may mix both
            except InputRasterError:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(index.path(folder))
                raise
            hooks.made(index, figures.pop("pixels", None))
        except Exception as exc:  # noqa: BLE001 - one tile's failure must not lose the others
            if out_of_memory(exc):
                exc = JobMemoryError(what, share_mb, exc)
            message = str(exc) if isinstance(exc, WorkflowLibError) else f"{what}: {type(exc).__name__}: {exc}"
            log.error("tile %s failed: %s", index, message, exc_info=not isinstance(exc, WorkflowLibError))
            with lock:
                result.failed[index] = message
            hooks.failed(index, message)
            return
        figures["seconds"] = time.monotonic() - started
        log.info("tile %s done in %.2f s (%d chunk(s), %d source pixels read)", index, figures["seconds"],
                 figures["chunks"], figures["pixels_read"])
        with lock:
            result.made.append(index)
            result.tile_stats[index] = figures["stats"]
        hooks.finished(index, figures)

    def worker() -> None:
        while not stop.is_set():
            try:
                index = todo.get_nowait()
            except queue.Empty:
                return
            with lock:
                active[index] = None
            try:
                make(index)
            finally:
                with lock:
                    active.pop(index, None)

    # Daemon threads: Ctrl-C (or the watchdog) ends the job at once instead of waiting for them.
    workers = [threading.Thread(target=worker, name=f"tile-{i}", daemon=True) for i in range(running)]
    for w in workers:
        w.start()
    try:
        for w in workers:
            while w.is_alive():
                w.join(timeout=0.5)  # in short waits, so that signals reach the main thread
    except BaseException:
        stop.set()
        with lock:
            interrupted = list(active)
        for index in interrupted:  # what the running tiles had written so far
            remove_stale_temporaries(index.path(folder))
        raise
    while True:
        try:
            result.left.append(todo.get_nowait())
        except queue.Empty:
            break
    for index in sorted(result.tile_stats):
        result.stats.merge(result.tile_stats[index])
    return result


def manifest(dataset: DatasetPlan, grid: TargetGrid, batch: str, tiles: list[TileIndex],
             result: BatchResult) -> dict:
    """What a complete batch's manifest (its job's output) records: the tiles, how they were made
    and the statistics of their pixels, which the mosaic gathers without reading a pixel."""
    return {"dataset": dataset.name, "batch": batch, "digest": tile_digest(grid, dataset),
            "tiles": [t.id for t in tiles], "made": [t.id for t in sorted(result.made)], "kept": len(result.kept),
            "stats": result.stats.to_json()}


def manifest_tiles(manifests: list[str], folder: str, nodata: float | None) -> tuple[list[str], PixelStats]:
    """The tile files of a dataset, and the statistics of their pixels, from its batches' manifests."""
    paths = []
    stats = PixelStats()
    for path in manifests:
        with open(path) as f:
            data = json.load(f)
        batch_paths = [os.path.join(folder, tile_file_name(t)) for t in data["tiles"]]
        paths.extend(batch_paths)
        if "stats" in data:
            stats.merge(PixelStats.from_json(data["stats"]))
            continue
        # A batch made before manifests carried statistics: from its tiles (their tags, or pixels).
        for tile in batch_paths:
            tags = tile_tags(tile)
            if tags is not None:
                stats.merge(kept_tile_stats(tile, tags, nodata))
    return paths, stats


def forget_incomplete_batches(plan: Plan, results_dir: str = RESULTS_DIR) -> list[str]:
    """Remove the manifest of every batch whose tiles are no longer all on disk (a tile deleted by
    hand, or found corrupt and removed by its mosaic), or, with the Zarr store among the formats,
    whose tiles' chunks (and their parts of the overview levels) are not all in it (the store removed),
    so that Snakemake runs that batch again.

    Tiles and chunks are not Snakemake outputs (it would delete them before rerunning a batch), so
    Snakemake cannot see a missing one; the Snakefile calls this at parse time. One directory listing
    per dataset, and one per row of tiles for the chunks: cheap for a million tiles.
    """
    removed = []
    store = zarr_store_path(results_dir) if OutputFormat.ZARR in plan.formats else None
    for name, d in plan.datasets.items():
        folder = manifest_dir(name, results_dir)
        if not os.path.isdir(folder):
            continue
        manifests = set(os.listdir(folder))
        tiles = tile_dir(name, results_dir)
        on_disk = set(os.listdir(tiles)) if os.path.isdir(tiles) else set()
        multiband = len(d.band_names) > 1
        if store and d.shard:
            # A sharded array: one file per batch, renamed into place once it holds all the batch's tiles.
            done = {b: () for b in d.batches if f"{b.id}.json" in manifests}
            arrays = (name, *d.level_arrays(plan.grid))  # and one per overview level made from the tiles
            without_shard = {b for b in done if not all(
                os.path.exists(chunk_path(store, a, shard_index(b.id, d.shard), multiband)) for a in arrays)}
        else:
            done = {b: b.tiles for b in d.batches if f"{b.id}.json" in manifests}  # each batch's tiles parsed once
            without_shard = set()
        # One listing per row of tiles for all the batches together (rows span batches).
        without_chunks = set(tiles_without_chunks(store, name, multiband, [t for tiles in done.values() for t in tiles],
                                                  d.level_arrays(plan.grid))) if store and not d.shard else set()
        for b, tiles in done.items():
            if (b in without_shard or any(tile_file_name(t) not in on_disk for t in b.tile_ids)
                    or any(t in without_chunks for t in tiles)):
                path = os.path.join(folder, f"{b.id}.json")
                os.unlink(path)
                removed.append(path)
                log.info("batch %s of %s: tiles or chunks missing on disk, it will run again", b.id, name)
    return removed
