# projection-probe: "Mysterious Projections" (Verma et al. 2024) as a Snakemake workflow.
# Run the demo:   snakemake --profile profiles/local
# Run the paper:  snakemake --profile profiles/slurm --configfile config/paper.yaml
from snakemake.utils import min_version

min_version("9.0")

# The demo config is the default only: a --configfile replaces it rather than being merged into it,
# so that config/paper.yaml does not inherit the demo's datasets.
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/download.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/models.smk"
include: "workflow/rules/features.smk"
include: "workflow/rules/finetune.smk"
include: "workflow/rules/classify.smk"
include: "workflow/rules/probes.smk"
include: "workflow/rules/baselines.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/analysis.smk"


# The paper's outputs: Tables 1-3 and the figure.
STUDY_TARGETS = [
    *expand(f"{RESULTS}/tables/table{{n}}.{{ext}}", n=[1, 2, 3], ext=["csv", "md", "tex"]),
    f"{RESULTS}/figures/richness_vs_f1.png",
    f"{RESULTS}/figures/richness_vs_f1.pdf",
]


# Cheap rules (these two, data preparation, prompts, report, downloads) say `localrule: True`: they
# run where Snakemake runs (the login node on a cluster), never as cluster jobs.
rule all:
    input:
        STUDY_TARGETS,
        # Beyond the paper (docs/analysis.md): empty unless `analyses.enabled` is true.
        analysis_targets(),
    localrule: True


# The paper's outputs only (Tables 1-3 and the figure), without the optional analyses.
rule study:
    input:
        STUDY_TARGETS,
    localrule: True
