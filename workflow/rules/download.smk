# Downloads for the datasets with a public URL (DTD tarball, PlantDoc repository archive), with a
# checksum check. A dataset gets this rule when its config has a `download:` block; the others
# (DermNet on Kaggle, CrisisMMD on CrisisNLP) need a login, and prepare_dataset then stops with a
# message saying exactly where to put the files.


for _name, _root in download_targets().items():

    rule:
        name:
            f"download_{_name}"
        output:
            directory(_root),
        log:
            log_path("download", _name),
        # Compute nodes often have no internet: downloads run on the submitting node.
        localrule: True
        conda:
            CONDA_ENV
        params:
            dataset=config["datasets"][_name]["source"]["kind"],
            url=shlex.quote(config_value(f"datasets.{_name}.download.url") or ""),
            sha256=shlex.quote(config_value(f"datasets.{_name}.download.sha256") or ""),
        shell:
            "projection-probe download-dataset --dataset {params.dataset} --url {params.url}"
            " --sha256 {params.sha256} --out-dir {output} > {log} 2>&1"
