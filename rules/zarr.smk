# The Zarr store, results/stack.zarr (output.formats: zarr; workflow_lib.mosaics.zarr_store). Each
# dataset's array is made by its register job, the batch jobs write its chunks (one per tile, and
# the tile's part of the finer overview levels) as they make the tiles, and once every batch is done
# this job makes the coarser overview levels from the finer ones and writes the consolidated
# metadata, without reading a full-resolution pixel.
localrules:
    zarr_store,


rule zarr_store:
    input:
        records=expand(dataset_record_path("{dataset}"), dataset=DATASETS),
        batches=[batch_manifests(name) for name in DATASETS],
    output:
        zarr_root_path(),
    log:
        "logs/zarr_store/zarr_store.log",
    benchmark:
        "benchmarks/zarr_store/zarr_store.tsv"
    params:
        store=lambda wildcards, output: os.path.dirname(output[0]),
        names=DATASETS,
        grid=PLAN.grid.to_dict(),
    conda:
        "../envs/workflow.yaml"
    script:
        "../scripts/zarr_store.py"
