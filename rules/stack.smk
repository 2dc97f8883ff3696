rule stack:
    input:
        mosaics=expand(mosaic_path("{dataset}"), dataset=DATASETS),
    output:
        stack_path(),
    log:
        "logs/stack/stack.log",
    benchmark:
        "benchmarks/stack/stack.tsv"
    params:
        names=DATASETS,
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
