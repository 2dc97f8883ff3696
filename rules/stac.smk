# The STAC catalog of the run, results/stac/ (workflow_lib.mosaics.stac): a collection, one item
# per dataset with its products as assets, their sizes and checksums, and where they came from.
# Made last, from the products' files (it hashes them: no pixel is decoded).
localrules:
    stac,


rule stac:
    input:
        records=expand(dataset_record_path("{dataset}"), dataset=DATASETS),
        statistics=expand(statistics_path("{dataset}"), dataset=DATASETS),
        quicklooks=expand(quicklook_path("{dataset}"), dataset=DATASETS),
        products=format_products(),
    output:
        stac_collection_path(),
    log:
        "logs/stac/stac.log",
    benchmark:
        "benchmarks/stac/stac.tsv"
    params:
        formats=[f.value for f in PLAN.formats],
        workflow_dir=workflow.basedir,
    conda:
        "../envs/workflow.yaml"
    script:
        "../scripts/stac.py"
