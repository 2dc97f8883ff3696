"""One area's rows of the per-cell table (rule table_part)."""

from workflow_lib.jobs import run_table_part_job

run_table_part_job(snakemake)  # noqa: F821 (injected by Snakemake)
