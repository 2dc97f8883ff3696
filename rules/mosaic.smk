if OutputFormat.COG in PLAN.formats:

    rule mosaic:
        input:
            meta=dataset_record_path("{dataset}"),
            batches=dataset_batches,
        output:
            mosaic=mosaic_path("{dataset}"),
            # Gathered from the tiles' own figures, without a second pass over the pixels.
            statistics=statistics_path("{dataset}"),
        log:
            "logs/mosaic/{dataset}.log",
        benchmark:
            "benchmarks/mosaic/{dataset}.tsv"
        params:
            tile_dir=dataset_tile_dir,
            compress=OUTPUT["compress"],
            level=OUTPUT["compress_level"],
            cog=OUTPUT["cog"],
        priority: dataset_priority
        threads: merge_threads(PLAN.grid.width * PLAN.grid.height)
        resources:
            mem_mb=mosaic_mem_mb,
        conda:
            "../envs/workflow.yaml"
        script:
            "../scripts/mosaic.py"

else:

    # Without mosaics (output.formats: [zarr]): each dataset's statistics alone, from its batches'
    # manifests, which carry those of its tiles (no pixel is read), and a VRT over its tiles for
    # GIS software.
    localrules:
        statistics,

    rule statistics:
        input:
            meta=dataset_record_path("{dataset}"),
            batches=dataset_batches,
        output:
            statistics=statistics_path("{dataset}"),
            vrt=virtual_mosaic_path("{dataset}"),
        log:
            "logs/statistics/{dataset}.log",
        benchmark:
            "benchmarks/statistics/{dataset}.tsv"
        params:
            tile_dir=dataset_tile_dir,
        priority: dataset_priority
        conda:
            "../envs/workflow.yaml"
        script:
            "../scripts/statistics.py"
