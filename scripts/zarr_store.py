"""Finish the Zarr store once every batch is done: consolidated metadata (rule zarr_store)."""

from workflow_lib.jobs import run_zarr_store_job

run_zarr_store_job(snakemake)  # noqa: F821 (injected by Snakemake)
