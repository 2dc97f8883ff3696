# Shared set-up: validate the config, make the plan (from headers only, cached) and the helpers
# that rules use. Everything here runs at parse time, again in every cluster job: keep it cheap.
import os
import sys

from workflow_lib.atomic import check_writable
from workflow_lib.config import validate_config
from workflow_lib.domain import (RESULTS_DIR, OutputFormat, dataset_record_path, manifest_path, mosaic_path,
                                 products, quicklook_path, report_page, stac_collection_path, stack_path,
                                 statistics_path, table_metadata_path, table_part_path, tile_dir,
                                 virtual_mosaic_path, zarr_root_path, zarr_store_path)
from workflow_lib.engines.batch import forget_incomplete_batches
from workflow_lib.errors import WorkflowLibError
from workflow_lib.planning.digest import TilesToMake, tile_digest
from workflow_lib.planning.plan import load_plan, plan_cache_path
from workflow_lib.planning.table import AREA_ID_PATTERN, table_areas
from workflow_lib.snakemake_fixes import (exit_without_waiting_for_the_rate_timer, graceful_sigterm_without_deadlock,
                                          no_pandas_import_for_params, slurm_cancelled_by_user_is_cancelled,
                                          status_snapshot_on_sigusr1)
from workflow_lib.sources.paths import local_file
from workflow_lib.status import DEFAULT_SPOOL_DIR, resolve_url
from workflow_lib.status.store import check_url as check_database_url
from workflow_lib.status.run import write_run_context

try:
    validate_config(config)
    check_database_url(resolve_url(config["database"]["url"]))
    PLAN_PATH = plan_cache_path(config)
    PLAN = load_plan(config, path=PLAN_PATH)
except WorkflowLibError as exc:
    # A bad config stops the run before any job, with the key and the problem, not a traceback.
    print(f"Error: {exc}", file=sys.stderr)
    sys.exit(1)

if workflow.is_main_process:
    # A read-only or full output folder is said once, here, rather than by every job (a dry run
    # too: at parse time Snakemake does not say yet whether it is one, and the run would fail).
    try:
        check_writable(RESULTS_DIR)
    except OSError as exc:
        print(f"Error: {RESULTS_DIR}/ cannot be written ({exc.strerror or exc}): the run writes its tiles, "
              "mosaics and status there", file=sys.stderr)
        sys.exit(1)

# In every Snakemake process, a cluster job's too: a run (or a cluster job) ends when its last job
# does, not up to a second later, and starts its first job without importing pandas first (0.5 s);
# see the functions.
exit_without_waiting_for_the_rate_timer()
no_pandas_import_for_params()

if workflow.is_main_process:
    # For the status logger plugin (profiles/default): which plan, which database.
    write_run_context(PLAN_PATH, resolve_url(config["database"]["url"]), DEFAULT_SPOOL_DIR)
    # SIGTERM must pause the run, never hang it (see the function).
    graceful_sigterm_without_deadlock()
    # SIGUSR1: the status report into the console (onegrid logs).
    status_snapshot_on_sigusr1(resolve_url(config["database"]["url"]))
    # A SLURM job cancelled by pause (or by hand) must end as failed, not run forever.
    slurm_cancelled_by_user_is_cancelled()
    # A tile deleted (or removed as corrupt) since its batch ran: that batch runs again.
    for manifest in forget_incomplete_batches(PLAN):
        print(f"{manifest}: some of its tiles (or their Zarr chunks) are missing, the batch will run again",
              file=sys.stderr)
    # What planning decided for the user (an extent clipped to the CRS's area of use): said on
    # every run and dry run, and in the register job's log.
    for name, planned in PLAN.datasets.items():
        if planned.note:
            print(f"note: dataset {name}: {planned.note}", file=sys.stderr)
    for note in PLAN.notes:
        print(f"note: {note}", file=sys.stderr)

DATASETS = list(PLAN.datasets)
# Smallest datasets first (config "order"), through job priorities.
PRIORITIES = PLAN.priorities(config["order"])
OUTPUT = config["output"]

# Memory, in MB, declared by each kind of job on its first attempt (config "memory"); retries ask
# for more (--retries N). --set-resources resample_batch:mem_mb=2000 overrides it for every attempt.
TILE_MEM_MB = config["memory"]["tile_mb"]
BATCH_THREADS = config["threads_per_job"]
MOSAIC_MEM_MB = config["memory"]["mosaic_mb"]
MERGE_MAX_THREADS = 8
PIXELS_PER_MERGE_THREAD = 4_000_000


def dataset_priority(wildcards):
    return PRIORITIES[wildcards.dataset]


def dataset_path(wildcards):
    # The file GDAL reads: the input itself, the file inside a connection string (a NetCDF
    # subdataset), or, for a dataset of many files, the VRT of them that the plan wrote (its name
    # changes when a member does; thousands of inputs per job would slow Snakemake down).
    # A remote input is none: its identity (size, ETag) keys the plan instead (docs/configuration.md, "Inputs").
    planned = PLAN.datasets[wildcards.dataset]
    paths = [p.header.path for p in planned.parts] or [planned.header.path]
    return [local for local in map(local_file, paths) if local]


def dataset_plan(wildcards):
    # Without its tile list: parameters are pickled into every job and kept in Snakemake's metadata.
    return PLAN.datasets[wildcards.dataset].to_dict(with_batches=False)


def batch_manifests(name):
    return [manifest_path(name, b.id) for b in PLAN.datasets[name].batches]


def dataset_batches(wildcards):
    return batch_manifests(wildcards.dataset)


def format_products():
    """The big products of the chosen formats: the mosaics and GeoTIFF stack, the Zarr store, the table."""
    cog = [mosaic_path(n) for n in DATASETS] + [stack_path()] if OutputFormat.COG in PLAN.formats else []
    table = [table_metadata_path()] if OutputFormat.PARQUET in PLAN.formats else []
    return cog + ([zarr_root_path()] if OutputFormat.ZARR in PLAN.formats else []) + table


def quicklook_source(name):
    # A quicklook reads the dataset's mosaic (its overviews), or its array in the Zarr store when no
    # mosaic is made.
    return mosaic_path(name) if OutputFormat.COG in PLAN.formats else os.path.join(zarr_store_path(), name)


# The per-cell table's areas (output.table: parquet), each a job of rules/table.smk.
TABLE_AREAS = {area.id: area for area in table_areas(PLAN)} if OutputFormat.PARQUET in PLAN.formats else {}


def area_batches(wildcards):
    # The batches of every dataset under the area: its job runs once they are all done.
    return [manifest_path(name, batch) for name, batch in TABLE_AREAS[wildcards.area].batches]


def batch_tiles(wildcards):
    # Ids (plain strings): parameters are rerun triggers, kept in Snakemake's metadata.
    return list(PLAN.datasets[wildcards.dataset].batch_by_id[wildcards.batch].tile_ids)


def dataset_tile_dir(wildcards):
    return tile_dir(wildcards.dataset)


def batch_todo(wildcards):
    # Counted only when the message is shown (a dry run, a job's start), and no rerun trigger (not a plain
    # value): the tiles missing or made with other settings.
    dataset = PLAN.datasets[wildcards.dataset]
    batch = dataset.batch_by_id[wildcards.batch]
    return TilesToMake(batch, tile_dir(wildcards.dataset), tile_digest(PLAN.grid, dataset))


def cluster_overhead_mb():
    # A cluster job also holds the Snakemake processes that run the rule inside it, and the cluster
    # counts them against the job's memory: ask for that on top of the job's own share (the job
    # subtracts it again when it sizes its windows, workflow_lib.jobs).
    on_cluster = workflow.non_local_exec or workflow.remote_exec
    return config["memory"]["cluster_overhead_mb"] if on_cluster else 0


def merge_threads(pixels):
    # The jobs after the batches (a mosaic, the stack) read, compress and make overview levels on
    # their threads: on a machine of many cores, up to 8 of them, so that no single-threaded tail
    # follows the batches (more than 8: their share that runs in parallel, about two thirds,
    # gains little more). On a cluster 2, what a node slot asks for. One per few million pixels
    # of output (about 0.3 s of one core's work each): a small mosaic holding every core would
    # keep the Zarr store and the run's figures waiting for nothing.
    if workflow.non_local_exec or workflow.remote_exec:
        cap = 2
    else:
        cores = workflow.global_resources["_cores"].value
        cap = max(2, min(int(cores), MERGE_MAX_THREADS)) if cores else 2
    return max(1, min(cap, -(-pixels // PIXELS_PER_MERGE_THREAD)))


def tile_mem_mb(wildcards, attempt):
    return TILE_MEM_MB * attempt + cluster_overhead_mb()


def mosaic_mem_mb(wildcards, attempt):
    return MOSAIC_MEM_MB * attempt + cluster_overhead_mb()


def tile_engine(wildcards):
    # Shown in each batch job's message, so that a dry run tells which engine each dataset gets.
    return PLAN.datasets[wildcards.dataset].settings.engine.label
