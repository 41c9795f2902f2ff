"""The paths that README.md and docs/ name in backticks, checked against the repository and a finished
workflow run (tests/test_workflow_e2e.py, tests/test_analysis.py)."""
from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "src" / "projection_probe"
# A backticked token that starts with one of these is a path in the repository.
REPO_ENTRIES = ("src/", "tests/", "docs/", "config/", "workflow/", "profiles/", "benchmarks/", "scripts/",
                "resources/", "envs/", ".ci/", "Snakefile", "pyproject.toml")
# Outputs of the optional analyses: they exist after a run with `analyses.enabled`.
ANALYSIS_OUTPUTS = ("results/analysis/", "results/tables/analysis_", "results/figures/analysis_",
                    "results/benchmarks/analysis/")
# Paths that exist only while a job runs, or after it failed: named by the docs on purpose.
TRANSIENT = (".work/", ".tmp", ".bad_images.txt")


def expand_braces(token: str) -> list[str]:
    """`table{1,2,3}.{csv,md}` → the six names; `{dataset}` (no comma) and `<name>` become `*`."""
    token = re.sub(r"<[^<>]+>", "*", token)
    match = re.search(r"\{([^{}]*)\}", token)
    if not match:
        return [token]
    options = match.group(1).split(",") if "," in match.group(1) else ["*"]
    return [x for o in options for x in expand_braces(token[:match.start()] + o + token[match.end():])]


def missing_doc_paths(run: Path, analyses: bool) -> list[str]:
    """`doc: token` for each named path that matches nothing. With `analyses`, only the analyses'
    outputs are checked (against `run`); without, everything else."""
    missing = []
    for doc in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        for token in re.findall(r"`([^`\s]+)`", doc.read_text()):
            token = token.rstrip(".,:;)").split("::")[0]
            if any(t in token for t in TRANSIENT) or token.startswith(ANALYSIS_OUTPUTS) != analyses:
                continue
            if token.startswith(REPO_ENTRIES):
                root = REPO
            elif token.startswith("results/"):
                root = run
            elif token.endswith(".py") and (PACKAGE / token.split("/")[0]).is_dir():
                root = PACKAGE  # a module path relative to the package, e.g. `evaluate/parse.py`
            else:
                continue
            if not any(list(root.glob(p.rstrip("/"))) for p in expand_braces(token)):
                missing.append(f"{doc.relative_to(REPO)}: `{token}`")
    return missing
