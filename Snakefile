# Resample large rasters onto one target grid, tile by tile, and merge the tiles into mosaics and
# one aligned stack. See README.md; the logic lives in workflow_lib/, tested without Snakemake.

configfile: "config/config.yaml"


include: "rules/common.smk"


wildcard_constraints:
    dataset="[A-Za-z0-9_-]+",
    tile=r"r\d+_c\d+",



include: "rules/register.smk"
include: "rules/tiles.smk"
include: "rules/mosaic.smk"
include: "rules/stack.smk"


rule all:
    default_target: True
    input:
        "results/stack.tif",
