"""Import only what a job needs: start-up seconds are paid by every job of a run set.

Whenever scikit-learn and scipy are installed (they are: the tests check this project's
metrics against them), ``transformers`` imports them while loading any model code: scikit-
learn (with scipy and pandas) for assisted generation's confidence threshold and its
legacy GLUE metric helpers, ``scipy.optimize`` for the object-detection losses (Hungarian
matching) that ``modeling_utils`` registers. That is about 3 s of CPU per job on a 2-core
machine, for code no job here runs: jobs train and evaluate classification, regression and
extractive-QA heads, and this project's metrics are NumPy (``diffprune.tasks.metrics``).
So a job process tells transformers, before it loads any model code, that the two are not
there. What that changes beyond the unused code above: FNet's optional TPU Fourier path
falls back to ``torch.fft`` (the same transform). Library users who import diffprune from
their own code are not affected: only the command-line entry point calls this.
"""
from __future__ import annotations

import sys

# transformers' module-level availability flags (read by its is_*_available functions)
HIDDEN_PACKAGES = {"scikit-learn": "_sklearn_available", "scipy": "_scipy_available"}


def hide_unused_packages_from_transformers() -> list[str]:
    """Hide scikit-learn and scipy from transformers in this process; returns the packages
    hidden (none once transformers' model code is imported, or where a flag was renamed:
    then start-up is just slower)."""
    if "transformers.modeling_utils" in sys.modules:
        return []
    from transformers.utils import import_utils

    hidden = []
    for package, flag in HIDDEN_PACKAGES.items():
        if hasattr(import_utils, flag):
            setattr(import_utils, flag, False)
            hidden.append(package)
    return hidden
