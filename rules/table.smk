# The per-cell table, results/table/ (output.table: parquet; workflow_lib.mosaics.table): one
# Parquet file per area of the grid, each written by its own job once the batches of every dataset
# under that area are done, then the table's schema by one small local job.
if OutputFormat.PARQUET in PLAN.formats:

    rule table_part:
        input:
            records=expand(dataset_record_path("{dataset}"), dataset=DATASETS),
            batches=area_batches,
        output:
            table_part_path("{area}"),
        log:
            "logs/table_part/{area}.log",
        benchmark:
            "benchmarks/table_part/{area}.tsv"
        resources:
            # One tile of each dataset and a strip of rows at a time: the mosaic's memory.
            mem_mb=mosaic_mem_mb,
        conda:
            "../envs/workflow.yaml"
        script:
            "../scripts/table_part.py"

    localrules:
        table,

    rule table:
        input:
            records=expand(dataset_record_path("{dataset}"), dataset=DATASETS),
            parts=[table_part_path(area) for area in TABLE_AREAS],
        output:
            table_metadata_path(),
        log:
            "logs/table/table.log",
        benchmark:
            "benchmarks/table/table.tsv"
        params:
            areas=list(TABLE_AREAS),
        conda:
            "../envs/workflow.yaml"
        script:
            "../scripts/table.py"
