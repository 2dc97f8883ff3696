"""Finish the per-cell table once every area's file is written: its schema (rule table)."""

from workflow_lib.jobs import run_table_job
from workflow_lib.runtime import exit_job_process

run_table_job(snakemake)  # noqa: F821 (injected by Snakemake)
exit_job_process()  # its outputs are closed: skip the interpreter's teardown
