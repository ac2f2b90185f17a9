"""diffprune: diff pruning (Guo, Rush & Kim) and its baselines, as a library and a benchmark.

The core API lives in submodules, imported where needed so that ``import diffprune`` and
the workflow's planning (``diffprune.settings``) stay free of torch:

- ``diffprune.diff.DiffPrunedModel``: the L0 phase (gated diff on every pretrained tensor);
- ``diffprune.projection.project`` / ``FixedMaskModel``: exact-sparsity projection and
  fixed-mask finetuning;
- ``diffprune.storage``: sparse diff files (save, load, apply, revert);
- ``diffprune.registry.METHODS``: every method the runner and the workflow know;
- ``python -m diffprune`` (``diffprune.cli``): the runner; ``python -m diffprune.bench``.

The baselines and the analysis are ``diffprune.baselines`` / ``diffprune.analysis``: their
folders sit at the top of the repository (``baselines/``, ``analysis/``), and an installed
wheel places them inside ``diffprune`` (pyproject's ``package-dir``) so that installing this
project adds the one import name ``diffprune``, never a top-level ``baselines`` or
``analysis`` that would shadow the PyPI packages of those names. In a source checkout used
without installing (the working directory on ``sys.path``), the finder below maps the two
names onto the folders beside this package.
"""
import importlib.abc
import importlib.util
import sys
from pathlib import Path

__version__ = "0.1.0"

_CHECKOUT_ROOT = Path(__file__).resolve().parent.parent
# Sub-package name -> its folder at the top of the repository.
_TOP_LEVEL_FOLDERS = {f"{__name__}.{folder}": _CHECKOUT_ROOT / folder for folder in ("baselines", "analysis")}


class _CheckoutFolderFinder(importlib.abc.MetaPathFinder):
    """Finds ``diffprune.baselines`` / ``diffprune.analysis`` in a source checkout. Their
    submodules are then found the ordinary way, through the package's ``__path__``."""

    def find_spec(self, fullname, path=None, target=None):
        folder = _TOP_LEVEL_FOLDERS.get(fullname)
        if folder is None or not (folder / "__init__.py").is_file():
            return None
        return importlib.util.spec_from_file_location(
            fullname, folder / "__init__.py", submodule_search_locations=[str(folder)])


# Last on the meta path: an installed wheel's diffprune/baselines (or an editable install's
# own mapping) wins, and this finder only answers when nothing else does.
if not any(isinstance(finder, _CheckoutFolderFinder) for finder in sys.meta_path):
    sys.meta_path.append(_CheckoutFolderFinder())
