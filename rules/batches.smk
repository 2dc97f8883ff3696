# One job per batch of tiles (a rectangle of the tile grid). Each tile is its own file under
# results/tiles/{dataset}/, written by the job but not declared: Snakemake removes a job's outputs
# before it runs it, and a rerun batch must keep the tiles it already made. The job's output is its
# manifest, written once every tile of the batch is on disk.
rule resample_batch:
    input:
        source=dataset_path,
        meta=dataset_record_path("{dataset}"),
    output:
        manifest_path("{dataset}", "{batch}"),
    log:
        "logs/resample_batch/{dataset}/{batch}.log",
    benchmark:
        "benchmarks/resample_batch/{dataset}/{batch}.tsv"
    params:
        tiles=batch_tiles,
        tile_dir=dataset_tile_dir,
        compress=OUTPUT["compress"],
        engine=tile_engine,
        todo=batch_todo,
    message:
        "resample batch {wildcards.batch} of {wildcards.dataset}: {params.todo} with the {params.engine} engine"
    priority: dataset_priority
    threads: BATCH_THREADS
    resources:
        mem_mb=tile_mem_mb,
    conda:
        "../envs/workflow.yaml"
    script:
        "../scripts/resample_batch.py"
