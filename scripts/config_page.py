"""The run's config as a page of the report (rule config_page)."""

from workflow_lib.jobs import run_config_page_job

run_config_page_job(snakemake)  # noqa: F821 (injected by Snakemake)
