"""The run's summary: quicklooks, the report's pages and the STAC catalog (rule summary)."""

from workflow_lib.jobs import run_summary_job

run_summary_job(snakemake)  # noqa: F821 (injected by Snakemake)
