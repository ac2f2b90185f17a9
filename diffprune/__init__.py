"""diffprune: diff pruning (Guo, Rush & Kim) and its baselines, as a library and a benchmark.

The core API lives in submodules, imported where needed so that ``import diffprune`` and
the workflow's planning (``diffprune.settings``) stay free of torch:

- ``diffprune.diff.DiffPrunedModel``: the L0 phase (gated diff on every pretrained tensor);
- ``diffprune.projection.project`` / ``FixedMaskModel``: exact-sparsity projection and
  fixed-mask finetuning;
- ``diffprune.storage``: sparse diff files (save, load, apply, revert);
- ``diffprune.registry.METHODS``: every method the runner and the workflow know;
- ``python -m diffprune`` (``diffprune.cli``): the runner; ``python -m diffprune.bench``.
"""
__version__ = "0.1.0"
