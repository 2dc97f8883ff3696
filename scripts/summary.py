"""The run's summary: quicklooks, the report's pages and the STAC catalog (rule summary)."""

from workflow_lib.jobs import run_summary_job
from workflow_lib.runtime import exit_job_process

run_summary_job(snakemake)  # noqa: F821 (injected by Snakemake)
exit_job_process()  # its outputs are closed: skip the interpreter's teardown
