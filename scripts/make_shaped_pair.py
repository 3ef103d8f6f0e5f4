"""Write a random-weight model pair shaped like published models, plus a bench recipe, offline.

    .venv/bin/python scripts/make_shaped_pair.py OUT_DIR [--shapes qwen2.5|tiny] [--device cuda] [--dtype bfloat16]

qwen2.5: theta shaped like Qwen2.5-1.5B, teacher like Qwen2.5-3B (config dimensions from their
published config.json files; random weights, nothing downloaded). tiny: two small models with the
same 151936-token vocabulary, to try the script on a CPU. Both share a synthetic byte-level BPE
tokenizer with exactly 151936 tokens (256 bytes, 2-byte pairs, then 3-byte tokens), so the sampler
works on Qwen2.5's vocabulary width. Writes OUT_DIR/{theta,teacher}, OUT_DIR/prompts.jsonl and
OUT_DIR/bench.yaml (a recipe for `os-sample bench`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

VOCAB = 151936
# From the published config.json of Qwen/Qwen2.5-1.5B and Qwen/Qwen2.5-3B.
SHAPES = {
    "qwen2.5": {
        "theta": dict(hidden_size=1536, num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
                      intermediate_size=8960, tie_word_embeddings=True),
        "teacher": dict(hidden_size=2048, num_hidden_layers=36, num_attention_heads=16, num_key_value_heads=2,
                        intermediate_size=11008, tie_word_embeddings=True),
    },
    "tiny": {
        "theta": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      intermediate_size=128, tie_word_embeddings=True),
        "teacher": dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                        intermediate_size=256, tie_word_embeddings=True),
    },
}


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table (what byte-level BPE vocabularies are written in)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def synthetic_tokenizer():
    """A Qwen2Tokenizer with exactly VOCAB tokens and consistent merges (no training corpus needed)."""
    from transformers import Qwen2Tokenizer

    from os_cli.toy import CHAT_TEMPLATE, SPECIAL_TOKENS

    chars = list(bytes_to_unicode().values())  # the 256 byte-level symbols
    vocab: dict[str, int] = {c: i for i, c in enumerate(chars)}
    merges: list[tuple[str, str]] = []
    room = VOCAB - len(SPECIAL_TOKENS)
    for a in chars:
        for b in chars:
            if len(vocab) < room:
                vocab[a + b] = len(vocab)
                merges.append((a, b))
    for ab in [t for t in vocab if len(t) == 2]:
        for c in chars:
            if len(vocab) < room:
                vocab[ab + c] = len(vocab)
                merges.append((ab, c))
    for token in SPECIAL_TOKENS:
        vocab[token] = len(vocab)
    assert len(vocab) == VOCAB
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=merges, unk_token="<|endoftext|>", eos_token="<|im_end|>",
                               pad_token="<|endoftext|>", additional_special_tokens=["<|im_start|>"])
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.padding_side = "left"
    return tokenizer


def save_model(path: Path, tokenizer, dims: dict, device: str, dtype: torch.dtype, seed: int) -> None:
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(vocab_size=VOCAB, max_position_embeddings=32768, rope_theta=1000000.0,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=None,
                         **dims)
    torch.manual_seed(seed)
    with torch.device(device):
        model = Qwen2ForCausalLM(config).to(dtype)
    model.generation_config = GenerationConfig(eos_token_id=tokenizer.eos_token_id,
                                               pad_token_id=tokenizer.pad_token_id)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    del model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--shapes", choices=sorted(SHAPES), default="qwen2.5")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    tokenizer = synthetic_tokenizer()
    for i, role in enumerate(("theta", "teacher")):
        save_model(args.out / role, tokenizer, SHAPES[args.shapes][role], args.device, getattr(torch, args.dtype), i)
    data = args.out / "prompts.jsonl"
    data.write_text("".join(json.dumps({"question": f"What is {i} plus {i + 3}? Explain step by step."}) + "\n"
                            for i in range(64)))
    recipe = {
        "description": f"random-weight {args.shapes} pair for bench (no download)",
        "models": {"theta": str(args.out / "theta"), "teacher": str(args.out / "teacher"),
                   "device": args.device, "dtype": args.dtype},
        "alpha": {"method": "kl_symmetry"},
        "sampling": {"max_new_tokens": args.max_new_tokens, "seed": 0},
        "dataset": {"source": str(data)},
        "prompts": {"theta": {"template": "Question: {question}", "chat_template": True}},
    }
    import yaml

    (args.out / "bench.yaml").write_text(yaml.safe_dump(recipe))
    print(args.out / "bench.yaml")


if __name__ == "__main__":
    main()
