# Downloads for the datasets with a public URL (DTD tarball, PlantDoc repository archive), with a
# checksum check. A dataset gets this rule when its config has a `download:` block; the others
# (DermNet on Kaggle, CrisisMMD on CrisisNLP) need a login, and prepare_dataset then stops with a
# message saying exactly where to put the files.


def downloaded_root(wildcards):
    """The dataset's source root when the workflow downloads it, so prepare_dataset waits for it."""
    dataset = config["datasets"][wildcards.dataset]
    if "download" in dataset and "root" in dataset.get("source", {}):
        return dataset["source"]["root"]
    return []


def download_targets():
    return {name: d["source"]["root"] for name, d in config["datasets"].items()
            if "download" in d and "root" in d.get("source", {})}


for _name, _root in download_targets().items():

    rule:
        name:
            f"download_{_name}"
        # Compute nodes often have no internet: downloads run on the submitting node.
        localrule: True
        output:
            directory(_root),
        params:
            dataset=config["datasets"][_name]["source"]["kind"],
            url=shlex.quote(config["datasets"][_name]["download"].get("url") or ""),
            sha256=shlex.quote(config["datasets"][_name]["download"].get("sha256") or ""),
        conda:
            CONDA_ENV
        log:
            log_path("download", _name),
        shell:
            "projection-probe download-dataset --dataset {params.dataset} --url {params.url}"
            " --sha256 {params.sha256} --out-dir {output} > {log} 2>&1"
