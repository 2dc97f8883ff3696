# Resample large rasters onto one target grid, tile by tile, and merge the tiles into mosaics and
# one aligned stack. See README.md and docs/; the logic lives in workflow_lib/, tested without Snakemake.

# The example's config, unless `--configfile` names yours: Snakemake would merge the two, and the
# example's datasets would be planned beside yours.
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


report: "report/workflow.rst"


# SIGTERM pauses a run: Snakemake starts no new job and waits for the running ones. Jobs run as
# `bash -c 'python script'`; when SIGTERM reaches the whole process group, the shell must not die
# under its job (the ignore is inherited until the job installs its own handler). Ctrl-C and
# SIGKILL still stop everything at once.
shell.prefix("trap '' TERM; set -euo pipefail; ")


include: "rules/common.smk"


wildcard_constraints:
    dataset="[A-Za-z0-9_-]+",
    batch=r"b\d+_\d+_\d+x\d+",
    area=AREA_ID_PATTERN,



include: "rules/register.smk"
include: "rules/batches.smk"
include: "rules/mosaic.smk"
include: "rules/stack.smk"
include: "rules/zarr.smk"
include: "rules/table.smk"
include: "rules/report.smk"


# Every product is named here, not only the last ones: Snakemake remakes a missing file only when a
# target needs it, and a deleted tile (its batch's manifest is removed at parse time, rules/common.smk),
# mosaic or statistics file would otherwise stay missing behind an up-to-date stack.
rule all:
    default_target: True
    input:
        [batch_manifests(name) for name in DATASETS],
        products(DATASETS, PLAN.formats),
