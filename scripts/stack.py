"""Stack every dataset, one band per dataset band, from the tiles (rule stack)."""

from workflow_lib.jobs import run_stack_job
from workflow_lib.runtime import exit_job_process

run_stack_job(snakemake)  # noqa: F821 (injected by Snakemake)
exit_job_process()  # its outputs are closed: skip the interpreter's teardown
