rule mosaic:
    input:
        meta="results/datasets/{dataset}.json",
        tiles=dataset_tiles,
    output:
        "results/mosaics/{dataset}.tif",
    log:
        "logs/mosaic/{dataset}.log",
    benchmark:
        "benchmarks/mosaic/{dataset}.tsv"
    params:
        compress=OUTPUT["compress"],
        cog=OUTPUT["cog"],
    priority: dataset_priority
    threads: 2
    resources:
        mem_mb=mosaic_mem_mb,
    conda:
        "../envs/workflow.yaml"
    script:
        "../scripts/mosaic.py"
