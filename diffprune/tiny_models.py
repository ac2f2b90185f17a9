"""The tiny random models of model sources ``tiny-random`` and ``tiny-random-llama``: for
tests and smoke runs, built in memory (no files, no downloads), identical on every call.

* ``tiny-random`` — a 2-layer BERT with random weights and a character-level WordPiece
  tokenizer;
* ``tiny-random-llama`` — the same for a 2-layer ``LlamaForSequenceClassification`` (RMSNorm,
  rotary positions, SwiGLU, no biases, no pooler, ``score`` head) whose character-level
  tokenizer has no pad token, as real decoder tokenizers usually do not.

The "pretrained" body depends only on the source's ``seed``, as a real checkpoint would be
the same for every task; the task head is drawn from torch's global RNG and declared the
model's head exactly as ``diffprune.models.load_checkpoint`` declares a checkpoint's missing
keys. ``diffprune.models.load_pretrained`` and ``model_skeleton`` dispatch here.
"""
from __future__ import annotations

import string

import torch
from torch import nn

from diffprune.models import mark_new_parameters, task_config_overrides, task_model_class

TINY_RANDOM_MODEL_ID = "tiny-random-bert"
TINY_RANDOM_LLAMA_MODEL_ID = "tiny-random-llama"

TINY_SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
TINY_CONFIG = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                   max_position_embeddings=512, type_vocab_size=2)
TINY_LLAMA_SPECIAL_TOKENS = ("<unk>", "<s>", "</s>")  # no pad token, like Llama's own tokenizer
TINY_LLAMA_CONFIG = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                         intermediate_size=64, max_position_embeddings=512, attention_bias=False,
                         mlp_bias=False, tie_word_embeddings=False)


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


def tiny_bert_config(task):
    from transformers import BertConfig

    config = BertConfig(vocab_size=len(tiny_vocab()), pad_token_id=0, **TINY_CONFIG, **task_config_overrides(task))
    config._name_or_path = TINY_RANDOM_MODEL_ID
    return config


def build_tiny_random_model(task, seed: int = 0) -> nn.Module:
    """The tiny BERT for ``task``. Its encoder ("pretrained" weights) depends only on
    ``seed`` — the same for every task and call, as a real checkpoint would be — while the
    head is initialised from the caller's global RNG."""
    from transformers import BertModel

    config = tiny_bert_config(task)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        encoder = BertModel(config, add_pooling_layer=True)
    model = task_model_class(task).from_config(config)
    return _load_tiny_body(model, encoder)


def _load_tiny_body(model: nn.Module, body: nn.Module) -> nn.Module:
    """Copy the "pretrained" ``body`` into ``model``; whatever it does not cover is the new
    head, recorded as a checkpoint load records its missing keys."""
    # QA models have no pooler; every encoder weight the model has must come from `body`.
    missing, _unused_pooler = model.base_model.load_state_dict(body.state_dict(), strict=False)
    if missing:
        raise RuntimeError(f"tiny random encoder does not cover {missing}")
    prefix = f"{model.base_model_prefix}."
    covered = {prefix + key for key in body.state_dict()}
    mark_new_parameters(model, [name for name, _ in model.named_parameters() if name not in covered])
    return model.eval()


def tiny_llama_config(task):
    from transformers import LlamaConfig

    vocab = tiny_llama_vocab()
    return LlamaConfig(vocab_size=len(vocab), bos_token_id=vocab.index("<s>"), eos_token_id=vocab.index("</s>"),
                       pad_token_id=None, **TINY_LLAMA_CONFIG, **task_config_overrides(task))


def tiny_llama_vocab() -> list[str]:
    """Special tokens, the word-boundary marker of SentencePiece vocabularies (Llama's), then
    single characters: every ASCII text splits into characters and word boundaries."""
    characters = string.ascii_letters + string.digits + string.punctuation
    return list(TINY_LLAMA_SPECIAL_TOKENS) + ["\u2581"] + list(characters)


def build_tiny_llama_tokenizer():
    """A fast Llama-style tokenizer: <s> prepended, no pad token, no files or downloads."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {token: index for index, token in enumerate(tiny_llama_vocab())}
    merges = []  # characters only: BPE without merges keeps every piece a single character
    backend = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", fuse_unk=True))
    backend.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")])
    backend.pre_tokenizer = pre_tokenizers.Split("\u2581", behavior="merged_with_next")
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B:1", special_tokens=[("<s>", vocab["<s>"])])
    backend.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   model_max_length=TINY_LLAMA_CONFIG["max_position_embeddings"])


def build_tiny_random_llama(task, seed: int = 0) -> nn.Module:
    """The tiny Llama for ``task``: body fixed by ``seed``, head from the caller's global RNG."""
    from transformers import LlamaModel

    config = tiny_llama_config(task)
    config._name_or_path = TINY_RANDOM_LLAMA_MODEL_ID
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        body = LlamaModel(config)
    model = task_model_class(task).from_config(config)
    return _load_tiny_body(model, body)


def build_tiny(source: str, task, seed: int = 0) -> tuple[nn.Module, object, str]:
    """(model with a fresh ``task`` head, tokenizer, model id) of a tiny source."""
    if source == "tiny-random":
        return build_tiny_random_model(task, seed), build_tiny_tokenizer(), TINY_RANDOM_MODEL_ID
    if source == "tiny-random-llama":
        return build_tiny_random_llama(task, seed), build_tiny_llama_tokenizer(), TINY_RANDOM_LLAMA_MODEL_ID
    raise ValueError(f"{source!r} is not a tiny random model source")


def tiny_config(source: str, task) -> tuple[object, str]:
    """(model config, model id) of a tiny source: what planning builds its weightless skeleton from."""
    if source == "tiny-random":
        return tiny_bert_config(task), TINY_RANDOM_MODEL_ID
    if source == "tiny-random-llama":
        return tiny_llama_config(task), TINY_RANDOM_LLAMA_MODEL_ID
    raise ValueError(f"{source!r} is not a tiny random model source")
