"""One area's rows of the per-cell table (rule table_part)."""

from workflow_lib.jobs import run_table_part_job
from workflow_lib.runtime import exit_job_process

run_table_part_job(snakemake)  # noqa: F821 (injected by Snakemake)
exit_job_process()  # its outputs are closed: skip the interpreter's teardown
