rule register_dataset:
    input:
        source=dataset_path,
    output:
        dataset_record_path("{dataset}"),
    log:
        "logs/register_dataset/{dataset}.log",
    benchmark:
        "benchmarks/register_dataset/{dataset}.tsv"
    params:
        dataset=dataset_plan,
        grid=PLAN.grid.to_dict(),
    priority: dataset_priority
    threads: 1
    resources:
        mem_mb=tile_mem_mb,
    conda:
        "../envs/workflow.yaml"
    script:
        "../scripts/register_dataset.py"
