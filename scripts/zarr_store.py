"""Finish the Zarr store once every batch is done: consolidated metadata (rule zarr_store)."""

from workflow_lib.jobs import run_zarr_store_job
from workflow_lib.runtime import exit_job_process

run_zarr_store_job(snakemake)  # noqa: F821 (injected by Snakemake)
exit_job_process()  # its outputs are closed: skip the interpreter's teardown
