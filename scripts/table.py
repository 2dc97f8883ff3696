"""Finish the per-cell table once every area's file is written: its schema (rule table)."""

from workflow_lib.jobs import run_table_job

run_table_job(snakemake)  # noqa: F821 (injected by Snakemake)
