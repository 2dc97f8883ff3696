# The stack is read from the tiles, as the mosaics are: it runs beside them, not after them.
rule stack:
    input:
        records=expand(dataset_record_path("{dataset}"), dataset=DATASETS),
        batches=[batch_manifests(name) for name in DATASETS],
    output:
        stack_path(),
    log:
        "logs/stack/stack.log",
    benchmark:
        "benchmarks/stack/stack.tsv"
    params:
        grid=PLAN.grid.to_dict(),
        compress=OUTPUT["compress"],
        level=OUTPUT["compress_level"],
        cog=OUTPUT["cog"],
    threads: merge_threads(PLAN.grid.width * PLAN.grid.height * len(DATASETS))
    resources:
        mem_mb=mosaic_mem_mb,
    conda:
        "../envs/workflow.yaml"
    script:
        "../scripts/stack.py"
