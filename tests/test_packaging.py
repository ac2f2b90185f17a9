"""Installing diffprune adds one import name, `diffprune`: the baselines/ and analysis/ folders
at the top of the repository become diffprune.baselines and diffprune.analysis, in a wheel and
in a source checkout alike (PyPI has unrelated packages named `baselines` and `analysis`)."""
from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from diffprune.registry import METHODS

REPO = Path(__file__).resolve().parents[1]
# What a wheel is built from: pyproject names these (and the README as its long description).
SOURCES = ("pyproject.toml", "README.md", "diffprune", "baselines", "analysis", "workflow/schemas")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel of this checkout, built from a copy so that no build/ or egg-info lands in it."""
    pytest.importorskip("setuptools")
    source = tmp_path_factory.mktemp("source")
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(REPO / name, source / name)
    out = tmp_path_factory.mktemp("wheel")
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                            "--wheel-dir", str(out), str(source)], capture_output=True, text=True)
    assert build.returncode == 0, build.stderr[-3000:]
    (built,) = out.glob("diffprune-*.whl")
    return built


@pytest.mark.slow
def test_the_wheel_has_one_top_level_name_and_every_registered_method(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {name.split("/")[0] for name in names}
    assert {name for name in top_level if not name.endswith(".dist-info")} == {"diffprune"}
    for target in METHODS.values():
        module = target.partition(":")[0]
        assert module.startswith("diffprune."), target
        assert module.replace(".", "/") + ".py" in names, f"{module} is not in the wheel"
    assert "diffprune/analysis/__main__.py" in names  # `python -m diffprune.analysis`
    assert "diffprune/tasks/glue.py" in names
    assert "diffprune/workflow_schemas/config.schema.yaml" in names  # load_config validates against it


@pytest.mark.slow
def test_an_installed_wheel_imports_its_own_copies(wheel, tmp_path):
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(site),
                    str(wheel)], check=True, capture_output=True, text=True)
    # A config loads (validated against the schema the wheel carries) and a method resolves.
    probe = ("import sys; sys.path.insert(0, sys.argv[1]); import diffprune.baselines, diffprune.analysis; "
             "from diffprune import config_schema, settings; from diffprune.registry import method_class; "
             "settings.load_config(sys.argv[2]); method_class('bitfit'); "
             "print(diffprune.baselines.__file__); print(diffprune.analysis.__file__); print(config_schema.SCHEMA_PATH)")
    # Run outside the checkout, so that nothing but the installed copy can answer.
    result = subprocess.run([sys.executable, "-c", probe, str(site), str(REPO / "config" / "config.yaml")],
                            cwd=tmp_path, check=True, capture_output=True, text=True)
    package = site / "diffprune"
    assert result.stdout.split() == [str(package / "baselines" / "__init__.py"), str(package / "analysis" / "__init__.py"),
                                     str(package / "workflow_schemas" / "config.schema.yaml")]


def test_a_source_checkout_finds_the_folders_beside_the_package():
    # -S: no site-packages, so no editable install's own mapping can answer for the finder.
    probe = "import diffprune.baselines; print(diffprune.baselines.__file__)"
    result = subprocess.run([sys.executable, "-S", "-c", probe], cwd=REPO, check=True, capture_output=True,
                            text=True)
    assert Path(result.stdout.strip()) == REPO / "baselines" / "__init__.py"


def test_the_finder_answers_only_for_the_two_folders():
    import diffprune

    finder = diffprune._CheckoutFolderFinder()
    assert finder.find_spec("diffprune.baselines").origin == str(REPO / "baselines" / "__init__.py")
    assert finder.find_spec("diffprune.analysis").origin == str(REPO / "analysis" / "__init__.py")
    for name in ("diffprune.tests", "diffprune.workflow", "baselines", "analysis", "diffprune.baselines.bitfit"):
        assert finder.find_spec(name) is None, name
