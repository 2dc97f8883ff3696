"""Make the missing tiles of one batch of one dataset on the target grid (rule resample_batch)."""

import os

# Snakemake sets OPENBLAS_NUM_THREADS to the job's threads; numpy's OpenBLAS then maps a buffer and a
# stack per thread at import (40 MB of data memory for 2), counted against the job's own memory limit
# (memory.enforce). The job does no linear algebra: one BLAS thread is enough.
os.environ["OPENBLAS_NUM_THREADS"] = "1"

from workflow_lib.jobs import run_batch_job  # noqa: E402
from workflow_lib.runtime import exit_job_process  # noqa: E402

run_batch_job(snakemake)  # noqa: F821 (injected by Snakemake)
exit_job_process()  # its outputs are closed: skip the interpreter's teardown
