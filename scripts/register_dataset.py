"""Check an input and record its header and warp settings (rule register_dataset)."""

from workflow_lib.jobs import run_register_job
from workflow_lib.runtime import exit_job_process

run_register_job(snakemake)  # noqa: F821 (injected by Snakemake)
exit_job_process()  # its outputs are closed: skip the interpreter's teardown
