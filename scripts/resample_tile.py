"""Resample one tile of one dataset onto the target grid (rule resample_tile)."""

from workflow_lib.jobs import run_tile_job

run_tile_job(snakemake)  # noqa: F821 (injected by Snakemake)
