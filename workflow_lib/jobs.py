"""Entry points of the workflow's jobs: each reads the ``snakemake`` object and calls the library.

Kept apart from the logic so that tests reach the logic without Snakemake.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import resource
import signal
import sys
import threading
import warnings
from collections.abc import Callable, Iterator

import numpy as np
import rasterio
import rasterio.shutil

from workflow_lib.atomic import write_json_atomic
from workflow_lib.engines.blocks import ENGINE_LABELS
from workflow_lib.errors import BatchError, InputRasterError, JobMemoryError, out_of_memory
from workflow_lib.planning.grid import TargetGrid
from workflow_lib.sources.header import read_header
from workflow_lib.mosaics.mosaic import write_mosaic, write_stack
from workflow_lib.mosaics.statistics import PixelStats
from workflow_lib.planning.plan import DatasetPlan
from workflow_lib.planning.settings import CATEGORICAL_METHODS
from workflow_lib.engines.batch import (TileHooks, kept_tile_stats, prepare_kernels, run_batch, tile_digest,
                                        tile_path, tile_tags)
from workflow_lib.status import DEFAULT_SPOOL_DIR, Event, StatusStore, TileBeat, redact, resolve_url
from workflow_lib.status.run import PAUSED_MARK, RUN_ID_ENV, dataset_payload

log = logging.getLogger("workflow_lib.jobs")


def peak_rss_mb() -> float:
    """This process's peak resident memory since it started its program, in MB.

    Not getrusage's ru_maxrss: Linux carries the parent's peak over a fork and exec into it, so a
    job started by a 200 MB Snakemake would report at least 200 MB. VmHWM belongs to the process's
    own address space.
    """
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # not Linux: the best there is


@contextlib.contextmanager
def job_logging(log_path: str | None) -> Iterator[None]:
    """Send the library's log to the job's log file (Snakemake shows it when the job fails; the
    console keeps to Snakemake's own progress); record any failure there before re-raising."""
    handler = logging.FileHandler(log_path, mode="w") if log_path else logging.StreamHandler(sys.stderr)
    handlers: list[logging.Handler] = [handler]
    logging.basicConfig(
        level=logging.INFO, handlers=handlers, force=True,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # SIGTERM (also sent to a whole process group, or by a cluster before its time limit) pauses
    # the run: Snakemake starts no new job, and this one finishes its output rather than lose it.
    # Ctrl-C (SIGINT) and SIGKILL still stop it at once.
    signal.signal(signal.SIGTERM, _finish_first)
    try:
        yield
    except Exception:
        log.exception("job failed")
        raise
    finally:
        log.info("peak RSS %.0f MB", peak_rss_mb())
        # The work is done; ignore SIGTERM while exiting. At shutdown CPython resets handlers it
        # installed to the default (die on SIGTERM), but leaves an ignored signal ignored.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)


# Set on SIGTERM: a batch job starts no new tile (engines.batch) and ends once its running ones are
# written, so that a pause waits for tiles, not for whole batches.
STOP_STARTING = threading.Event()


def _finish_first(signum, frame) -> None:
    STOP_STARTING.set()
    log.warning("SIGTERM received: finishing the running tiles, starting no new one (Ctrl-C or SIGKILL "
                "stop at once)")


def start_gdal_threads(threads: int) -> None:
    """Start GDAL's worker threads (its global pool, which decodes, compresses and warps) now,
    before the memory limit: a thread that cannot start under the limit leaves GDAL waiting for
    its work forever (seen: a read stuck in CPLJobQueue::WaitCompletion at 100 MB). Decoding a
    small tiled file with ``threads`` threads starts them; later reads and warps reuse them."""
    if threads < 2:
        return
    path = "/vsimem/workflow_lib_threads.tif"
    profile = {"driver": "GTiff", "width": 512, "height": 512, "count": 1, "dtype": "uint8", "tiled": True,
               "blockxsize": 256, "blockysize": 256, "compress": "deflate"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(np.zeros((1, 512, 512), np.uint8))
        with rasterio.Env(GDAL_NUM_THREADS=threads), rasterio.open(path) as src:
            src.read(1)
    rasterio.shutil.delete(path)


@contextlib.contextmanager
def memory_limit(snakemake, what: str) -> Iterator[None]:
    """Hold the job to the memory it was granted, when the config asks for it (memory.enforce).

    RLIMIT_DATA bounds the heap and private mappings, where the pixel buffers, GDAL's block cache and
    the interpreter live: a job that needs more than its mem_mb gets an out-of-memory error, which is
    reported as such (Snakemake's --retries then runs it again with more), instead of growing until
    the machine swaps or the kernel's OOM killer picks some other process.
    """
    mem_mb = _mem_mb(snakemake)
    if snakemake.config["memory"]["enforce"]:
        start_gdal_threads(snakemake.threads)
        _, hard = resource.getrlimit(resource.RLIMIT_DATA)
        limit = mem_mb * 2**20  # mem_mb is MiB to Snakemake's executors and to SLURM's --mem
        if hard != resource.RLIM_INFINITY:
            limit = min(limit, hard)
        resource.setrlimit(resource.RLIMIT_DATA, (limit, hard))
        log.info("memory limit: %d MB (mem_mb granted to this job)", mem_mb)
    try:
        yield
    except Exception as exc:
        if out_of_memory(exc):
            raise JobMemoryError(what, mem_mb, exc) from exc
        raise


def _mem_mb(snakemake) -> int:
    # Snakemake caps a job's declared mem_mb at the run's --resources limit: the value the job was
    # actually granted is in snakemake.resources, so the budget comes from there. Inside a SLURM
    # job, part of it is for the Snakemake processes running this job (config memory.
    # cluster_overhead_mb, which the rules added to what they asked for).
    granted = int(snakemake.resources.get("mem_mb", 1024))
    if os.environ.get("SLURM_JOB_ID"):
        granted = max(granted - int(snakemake.config["memory"]["cluster_overhead_mb"]), 64)
    return granted


def load_dataset(meta_path: str) -> tuple[TargetGrid, DatasetPlan]:
    with open(meta_path) as f:
        meta = json.load(f)
    return TargetGrid.from_dict(meta["grid"]), DatasetPlan.from_dict(meta["dataset"])


def register_dataset(name: str, dataset: dict, grid: dict, out_path: str) -> DatasetPlan:
    """Check that the input still is what the plan saw, and record its header and settings."""
    planned = DatasetPlan.from_dict(dataset)
    header = read_header(name, planned.header.path, planned.settings.band)
    if (header.size_bytes, header.mtime_ns) != (planned.header.size_bytes, planned.header.mtime_ns):
        raise InputRasterError(
            name, header.path, "the file changed after the workflow was planned; run snakemake again"
        )
    log.info(
        "dataset %s: %s, %dx%d px, %s, nodata %s, CRS %s, %d tiles, settings %s",
        name, header.path, header.width, header.height, header.dtype, header.nodata,
        header.crs.to_string(), planned.tile_count, planned.settings,
    )
    log.info("dataset %s: engine %s (%s)", name, ENGINE_LABELS[planned.settings.engine],
             planned.settings.engine_reason)
    if planned.settings.method == "sum" and not planned.settings.same_crs:
        log.warning(
            "dataset %s: sum across CRSs depends on how GDAL 3.10 chunks the warp (README, Accuracy); "
            "prefer summing in the input's CRS", name,
        )
    write_json_atomic(out_path, {"grid": grid, "dataset": planned.to_dict()})
    return planned


def status_store(snakemake) -> StatusStore:
    return StatusStore(resolve_url(snakemake.config["database"]["url"]), spool_dir=DEFAULT_SPOOL_DIR)


def rss_mb() -> float:
    """This process's resident memory now, in MB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


@contextlib.contextmanager
def heartbeat(snakemake, dataset: str, tiles: Callable[[], list]) -> Iterator[None]:
    """Say every few seconds that the tiles this job is making are alive, how far each is (a list
    of TileBeat) and the job's memory now, from a thread with its own connection."""
    stop = threading.Event()
    interval = float(snakemake.config["database"]["heartbeat_seconds"])

    def beat() -> None:
        store = status_store(snakemake)
        try:
            while not stop.wait(interval):
                store.heartbeat(dataset, tiles(), rss_mb=rss_mb())
        finally:
            store.close()

    thread = threading.Thread(target=beat, name="heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)


def run_register_job(snakemake) -> None:
    with job_logging(snakemake.log[0]):
        name = snakemake.wildcards.dataset
        planned = register_dataset(name, snakemake.params.dataset, snakemake.params.grid, snakemake.output[0])
        store = status_store(snakemake)
        store.record(Event("dataset", dataset=name, payload=dataset_payload(planned, "registered")))
        store.close()


# Exit status of a batch job that stopped early on SIGTERM: its tiles were not all made, and its
# log says "paused by SIGTERM" (the status logger then keeps the missing tiles pending, not failed).
PAUSED_EXIT_CODE = 75  # EX_TEMPFAIL: try again later


# Stack of the job's own threads (tile workers, watchdogs, heartbeat). Linux counts a thread's whole
# stack mapping against RLIMIT_DATA (memory.enforce) though little of it is ever touched, and
# the default is 8 MB: with 64-128 MB jobs, threads would use up the limit before any pixel does.
THREAD_STACK_BYTES = 4 * 2**20


def run_batch_job(snakemake) -> None:
    threading.stack_size(THREAD_STACK_BYTES)
    with job_logging(snakemake.log[0]):
        grid, dataset = load_dataset(snakemake.input.meta)
        batch = snakemake.wildcards.batch
        tiles = list(snakemake.params.tiles)
        store = status_store(snakemake)
        # Tiles being made and how far each is, for the heartbeat (worker threads change it).
        running: dict[str, TileBeat] = {}
        running_lock = threading.Lock()
        mem_mb = _mem_mb(snakemake)
        common = {"run_id": os.environ.get(RUN_ID_ENV) or None, "dataset": dataset.name}
        slurm_job = os.environ.get("SLURM_JOB_ID")

        def started(tile: str) -> None:
            with running_lock:
                running[tile] = TileBeat(tile, 0.0, 0)
            store.record(Event("tile_started", tile=tile, payload={"batch": batch, "external_job_id": slurm_job,
                                                                   "mem_mb": mem_mb}, **common))

        def progress(tile: str, done: int, total: int, pixels_read: int) -> None:
            with running_lock:
                if tile in running:
                    running[tile] = TileBeat(tile, done / max(total, 1), pixels_read)

        def finished(tile: str, figures: dict) -> None:
            log.info("tile %s done in %.2f s (%d chunk(s), %d source pixels read)", tile, figures["seconds"],
                     figures["chunks"], figures["pixels_read"])
            store.record(Event("tile_measured", tile=tile, payload={
                "seconds": figures["seconds"], "peak_rss_mb": peak_rss_mb(),
                "engine": ENGINE_LABELS[dataset.settings.engine], "pixels_written": figures["pixels_written"],
                "external_job_id": slurm_job, "batch": batch, "pixels_read": figures["pixels_read"]}, **common))
            store.record(Event("tile_finished", tile=tile, payload={"batch": batch}, **common))
            with running_lock:
                running.pop(tile, None)

        def failed(tile: str, error: str) -> None:
            store.record(Event("tile_failed", tile=tile, payload={"error": error, "batch": batch}, **common))
            with running_lock:
                running.pop(tile, None)

        def being_made() -> list[TileBeat]:
            with running_lock:
                return [running[t] for t in sorted(running)]
        # Before the limit: numba's compiler cannot run under it (engines.kernels.warm_up).
        compiled = prepare_kernels(dataset, mem_mb)
        with memory_limit(snakemake, f"batch {batch} of dataset '{dataset.name}'"), \
                heartbeat(snakemake, dataset.name, being_made):
            result = run_batch(
                dataset, grid, batch, tiles, snakemake.params.tile_dir, mem_mb=mem_mb, threads=snakemake.threads,
                compress=snakemake.params.compress, stall_timeout=snakemake.config["stall_timeout"],
                stop=STOP_STARTING, hooks=TileHooks(started, finished, failed, progress), compiled=compiled,
            )
        store.close()
        log.info("batch %s of %s: %d made, %d kept, %d failed, %d not started", batch, dataset.name,
                 len(result.made), len(result.kept), len(result.failed), len(result.left))
        if result.failed:
            first = next(iter(result.failed.items()))
            raise BatchError(
                f"batch {batch} of dataset '{dataset.name}': {len(result.failed)} of {len(tiles)} tile(s) failed "
                f"({', '.join(sorted(result.failed))}); the other tiles are kept. First error, tile {first[0]}: "
                f"{first[1]}")
        if result.left:
            log.warning("batch %s of %s %s: %d tile(s) left for the next run", batch, dataset.name,
                        PAUSED_MARK, len(result.left))
            raise SystemExit(PAUSED_EXIT_CODE)
        write_json_atomic(snakemake.output[0], {
            "dataset": dataset.name, "batch": batch, "digest": tile_digest(grid, dataset),
            "tiles": tiles, "made": sorted(result.made), "kept": len(result.kept),
            "stats": result.stats.to_json(),
        })


def batch_tiles(manifests: list[str], tile_dir: str, nodata: float | None) -> tuple[list[str], PixelStats]:
    """The tile files of a dataset, and the statistics of their pixels, from its batches' manifests."""
    paths = []
    stats = PixelStats()
    for manifest in manifests:
        with open(manifest) as f:
            data = json.load(f)
        batch_paths = [tile_path(tile_dir, t) for t in data["tiles"]]
        paths.extend(batch_paths)
        if "stats" in data:
            stats.merge(PixelStats.from_json(data["stats"]))
            continue
        # A batch made before manifests carried statistics: from its tiles (their tags, or pixels).
        for path in batch_paths:
            tags = tile_tags(path)
            if tags is not None:
                stats.merge(kept_tile_stats(path, tags, nodata))
    return paths, stats


def dataset_statistics(stats: PixelStats, grid: TargetGrid, dataset: DatasetPlan) -> dict:
    """The mosaic's statistics: its pixels are the tiles' pixels, and the grid's pixels that no
    tile covers are nodata."""
    summary = stats.summary(categorical=dataset.settings.method in CATEGORICAL_METHODS)
    # Over all its bands, for a dataset of several.
    summary["total_pixels"] = grid.width * grid.height * max(len(dataset.settings.bands), 1)
    summary["valid_share"] = summary["valid_pixels"] / summary["total_pixels"]
    return {"dataset": dataset.name, "method": dataset.settings.method, "dtype": dataset.settings.dst_dtype,
            **summary}


def run_mosaic_job(snakemake) -> None:
    with job_logging(snakemake.log[0]):
        grid, dataset = load_dataset(snakemake.input.meta)
        paths, stats = batch_tiles(list(snakemake.input.batches), snakemake.params.tile_dir,
                                   dataset.settings.dst_nodata)
        with memory_limit(snakemake, f"mosaic of dataset '{dataset.name}'"):
            write_mosaic(
                dataset.name, dataset.settings, grid, paths, snakemake.output.mosaic,
                mem_mb=_mem_mb(snakemake), threads=snakemake.threads,
                compress=snakemake.params.compress, cog=snakemake.params.cog, level=snakemake.params.level,
                band_names=dataset.band_names,
            )
        figures = dataset_statistics(stats, grid, dataset)
        log.info("mosaic of %s: %d of %d pixels valid, min %s, max %s, mean %s, std %s", dataset.name,
                 figures["valid_pixels"], figures["total_pixels"], figures["min"], figures["max"],
                 figures["mean"], figures["std"])
        write_json_atomic(snakemake.output.statistics, figures)
        store = status_store(snakemake)
        store.record(Event("dataset_statistics", dataset=dataset.name, payload=figures,
                           run_id=os.environ.get(RUN_ID_ENV) or None))
        store.close()


def run_stack_job(snakemake) -> None:
    with job_logging(snakemake.log[0]):
        grid = TargetGrid.from_dict(snakemake.params.grid)
        with memory_limit(snakemake, "stack"):
            write_stack(
                list(snakemake.params.names), list(snakemake.input.mosaics), grid, snakemake.output[0],
                mem_mb=_mem_mb(snakemake), threads=snakemake.threads,
                compress=snakemake.params.compress, cog=snakemake.params.cog, level=snakemake.params.level,
            )


def run_quicklook_job(snakemake) -> None:
    from workflow_lib.views.report import write_quicklook

    with job_logging(snakemake.log[0]):
        write_quicklook(snakemake.input.mosaic, snakemake.input.statistics, snakemake.output[0])


def run_statistics_page_job(snakemake) -> None:
    from workflow_lib.views.report import write_statistics_page

    with job_logging(snakemake.log[0]):
        write_statistics_page(list(snakemake.input.statistics), snakemake.output[0])


def run_tile_figures_job(snakemake) -> None:
    """The map of tiles and the per-tile figures, from the status database (read only)."""
    from workflow_lib.views.report import tile_frame, write_job_figures, write_tile_map

    with job_logging(snakemake.log[0]):
        url = resolve_url(snakemake.config["database"]["url"])
        store = StatusStore(url, read_only=True)
        try:
            frame = tile_frame(store)
        except store.backend.unreachable as exc:
            # No status database (a run without the status logger): the figures say so, the run goes on.
            log.warning("status database %s cannot be read (%s): the tile figures are empty", redact(url), exc)
            frame = tile_frame(None)
        finally:
            store.close()
        frame = frame[frame["dataset"].isin(list(snakemake.params.datasets))]
        write_tile_map(frame, snakemake.output.tile_map)
        write_job_figures(frame, snakemake.output.figures)


def run_config_page_job(snakemake) -> None:
    from workflow_lib.views.report import write_config_page

    with job_logging(snakemake.log[0]):
        write_config_page(snakemake.config, snakemake.output[0])
