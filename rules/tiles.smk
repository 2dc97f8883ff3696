rule resample_tile:
    input:
        source=dataset_path,
        meta="results/datasets/{dataset}.json",
    output:
        "results/tiles/{dataset}/{tile}.tif",
    log:
        "logs/resample_tile/{dataset}/{tile}.log",
    benchmark:
        "benchmarks/resample_tile/{dataset}/{tile}.tsv"
    params:
        compress=OUTPUT["compress"],
        engine=tile_engine,
    message:
        "resample {output} with the {params.engine} engine"
    priority: dataset_priority
    threads: 1
    resources:
        mem_mb=tile_mem_mb,
    conda:
        "../envs/workflow.yaml"
    script:
        "../scripts/resample_tile.py"
