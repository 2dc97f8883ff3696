"""Stack all mosaics, one band per dataset (rule stack)."""

from workflow_lib.jobs import run_stack_job

run_stack_job(snakemake)  # noqa: F821 (injected by Snakemake)
