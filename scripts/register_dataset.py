"""Check an input and record its header and warp settings (rule register_dataset)."""

from workflow_lib.jobs import run_register_job

run_register_job(snakemake)  # noqa: F821 (injected by Snakemake)
