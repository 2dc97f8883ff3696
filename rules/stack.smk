rule stack:
    input:
        mosaics=expand("results/mosaics/{dataset}.tif", dataset=DATASETS),
    output:
        "results/stack.tif",
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
    threads: 2
    resources:
        mem_mb=mosaic_mem_mb,
    conda:
        "../envs/workflow.yaml"
    script:
        "../scripts/stack.py"
