"""The STAC catalog of the run's products (rule stac)."""

from workflow_lib.jobs import run_stac_job

run_stac_job(snakemake)  # noqa: F821 (injected by Snakemake)
