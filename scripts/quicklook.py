"""A quicklook PNG of one mosaic (rule quicklook)."""

from workflow_lib.jobs import run_quicklook_job

run_quicklook_job(snakemake)  # noqa: F821 (injected by Snakemake)
