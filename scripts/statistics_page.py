"""The statistics page of the report (rule statistics_page)."""

from workflow_lib.jobs import run_statistics_page_job

run_statistics_page_job(snakemake)  # noqa: F821 (injected by Snakemake)
