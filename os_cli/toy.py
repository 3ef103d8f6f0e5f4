"""Tiny models built from scratch, offline: the test suite's fixtures and the demo pair's starting point.

A byte-level BPE tokenizer (what Qwen2 uses, so it survives `AutoTokenizer`'s swap to
`Qwen2Tokenizer`) trained on a corpus the caller supplies, and small Qwen2 configs sized to it.
Everything goes through `save_pretrained`, so loading exercises the real `from_pretrained` path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")

# Qwen-style chat template: system turn optional, generation prompt opens the assistant turn.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def build_tokenizer(corpus: Iterable[str], vocab_size: int = 400, chat_template: str = CHAT_TEMPLATE):
    """Train a byte-level BPE on `corpus` and wrap it as a `Qwen2Tokenizer` (eos = <|im_end|>)."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import Qwen2Tokenizer

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        list(corpus), vocab_size=vocab_size, min_frequency=2, special_tokens=list(SPECIAL_TOKENS), show_progress=False
    )
    merges = [tuple(m.split(" ")) for m in _merges_of(bpe)]
    tokenizer = Qwen2Tokenizer(
        vocab=bpe.get_vocab(),
        # transformers annotates `merges` as list[str], but forwards it to tokenizers' BPE, which takes (a, b) pairs
        merges=merges,  # type: ignore[arg-type]
        unk_token="<|endoftext|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>"],
    )
    tokenizer.chat_template = chat_template
    tokenizer.padding_side = "left"
    return tokenizer


def _merges_of(bpe) -> list[str]:
    import json

    model = json.loads(bpe._tokenizer.to_str())["model"]
    return [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]


def tiny_qwen2_config(
    tokenizer,
    hidden_size: int = 32,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 64,
    vocab_pad_to: int = 1,
    max_position_embeddings: int = 1024,
):
    """A small Qwen2 config whose embedding has `len(tokenizer)` rows rounded up to `vocab_pad_to`."""
    from transformers import Qwen2Config

    vocab = len(tokenizer)
    vocab = -(-vocab // vocab_pad_to) * vocab_pad_to
    return Qwen2Config(
        vocab_size=vocab,
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        intermediate_size=intermediate_size,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        pad_token_id=tokenizer.pad_token_id,
    )


def save_tiny_model(path: str | Path, tokenizer, config, seed: int = 0, init_std: float | None = None) -> Path:
    """Initialise a Qwen2ForCausalLM from `config` with `seed` and save it with the tokenizer."""
    import torch
    from transformers import GenerationConfig, Qwen2ForCausalLM

    path = Path(path)
    torch.manual_seed(seed)
    if init_std is not None:
        config.initializer_range = init_std
    model = Qwen2ForCausalLM(config)
    model.generation_config = GenerationConfig(eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
