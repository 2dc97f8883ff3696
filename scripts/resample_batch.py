"""Make the missing tiles of one batch of one dataset on the target grid (rule resample_batch)."""

from workflow_lib.jobs import run_batch_job

run_batch_job(snakemake)  # noqa: F821 (injected by Snakemake)
