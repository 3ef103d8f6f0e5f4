"""Shared fixtures: tiny Qwen2 models with one byte-level BPE tokenizer, built offline once per session.

Models are saved with `save_pretrained` and loaded by the code under test through `from_pretrained`.
"""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Tiny models spend their time in op overhead: one thread is 10-25x faster than two on a shared
# 2-core machine. Subprocesses the tests start inherit this through OMP_NUM_THREADS.
torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")

CORPUS = [
    "What is 2 plus 3? The answer is 5. \\boxed{5}",
    "Explain quantum computing in one sentence.",
    "The quick brown fox jumps over the lazy dog.",
    "Question: What is the capital of France? Answer: Paris.",
    "Tom has 4 apples and buys 7 more. How many apples does Tom have? \\boxed{11}",
] * 8 + [f"Question {i}: {i} plus {i + 3} equals {2 * i + 3}." for i in range(120)]


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from os_cli.toy import build_tokenizer

    return build_tokenizer(CORPUS, vocab_size=360)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory, tiny_tokenizer):
    """Paths of three models sharing `tiny_tokenizer`.

    theta: small; teacher: wider and deeper, other seed; teacher_padded: embedding rows padded to a
    multiple of 64 (like Qwen2.5's 151936 vs 152064), so its logits are wider than the tokenizer.
    """
    from os_cli.toy import save_tiny_model, tiny_qwen2_config

    root = tmp_path_factory.mktemp("tiny_models")
    tok = tiny_tokenizer
    paths = {
        "theta": save_tiny_model(root / "theta", tok, tiny_qwen2_config(tok), seed=1, init_std=0.2),
        "teacher": save_tiny_model(
            root / "teacher", tok, tiny_qwen2_config(tok, hidden_size=48, num_layers=3, intermediate_size=96),
            seed=2, init_std=0.2,
        ),
        "teacher_padded": save_tiny_model(
            root / "teacher_padded", tok, tiny_qwen2_config(tok, vocab_pad_to=64), seed=3, init_std=0.2
        ),
    }
    return {k: str(v) for k, v in paths.items()}


@pytest.fixture(scope="session")
def cli_app():
    """The real `os-sample` Typer app with every command registered."""
    from os_cli.cli import _register, app

    _register()
    return app


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny matmuls on a shared machine: more threads only contend (10x slower under load). A module that
    times bench points asks for it with `pytestmark = pytest.mark.usefixtures("one_torch_thread")`."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
