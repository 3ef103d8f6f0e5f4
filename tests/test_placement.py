"""Per-model placement and quantization: recipe keys, API arguments, checks before loading, and the
engine moving the teacher's logits (not its cache) to theta's device.

Only CPU runs here; the GPU path (theta on cuda:0, teacher spread by device_map auto) is
scripts/gpu_check_devices.sh.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from os_cli.models import loading as models

from os_cli.models import preflight
from os_cli.recipe import machine_checks
from os_cli.api.model import OptimalSamplingModel
from os_cli.errors import UserError
from os_cli.api.build import model_kwargs
from os_cli.recipe import load_recipe, model_settings, recipe_diff, recipe_hash

PROMPTS = ["What is 2 plus 3?", "The quick brown fox"]
PROMPTS_T = ["What is 2 plus 3? Hint: 5", "The quick brown"]


def sample(model: OptimalSamplingModel):
    return model.generate(PROMPTS, prompts_t=PROMPTS_T, max_new_tokens=8, seed=11, return_logits=True)


def assert_same_output(a, b):
    assert torch.equal(a.generated_ids, b.generated_ids)
    assert a.finish_reasons == b.finish_reasons
    for side in ("theta", "t", "q"):
        assert torch.equal(a.logprobs[side].nan_to_num(), b.logprobs[side].nan_to_num())
    assert torch.equal(a.alpha_values.nan_to_num(), b.alpha_values.nan_to_num())


@pytest.fixture(scope="module")
def default_output(tiny_models):
    return sample(OptimalSamplingModel(tiny_models["theta"], tiny_models["teacher"]))


# ------------------------------------------------------------------------------------------ API


@pytest.mark.parametrize("kwargs", [
    dict(device="cpu", device_t="cpu"),
    dict(device="cpu", teacher_kwargs={"device_map": {"": "cpu"}}),
    dict(teacher_kwargs={"device_map": "auto", "max_memory": {"cpu": "2GiB"}}),
    dict(device_map={"": "cpu"}),  # a shared device_map places both models
], ids=["both-cpu", "teacher-map-dict", "teacher-map-auto", "shared-map"])
def test_explicit_placement_gives_the_default_run(tiny_models, default_output, kwargs):
    model = OptimalSamplingModel(tiny_models["theta"], tiny_models["teacher"], **kwargs)
    assert model.device == torch.device("cpu") and model.device_t == torch.device("cpu")
    assert_same_output(sample(model), default_output)


def test_api_does_not_rewrite_the_callers_max_memory(tiny_models):
    max_memory = {"cpu": "2GiB"}
    OptimalSamplingModel(tiny_models["theta"], tiny_models["teacher"],
                         teacher_kwargs={"device_map": "auto", "max_memory": max_memory})
    assert max_memory == {"cpu": "2GiB"}


def test_same_path_loaded_differently_is_two_models(tiny_models):
    """One checkpoint as theta in float32 and as teacher in float64: two loads, and both dtypes hold."""
    model = OptimalSamplingModel(tiny_models["theta"], None, dtype_t=torch.float64)
    assert not model.same_model and model.model_t is not model.model_theta
    assert next(model.model_t.parameters()).dtype == torch.float64
    assert next(model.model_theta.parameters()).dtype == torch.float32
    out = model.generate(PROMPTS, max_new_tokens=4, seed=1)
    # Same weights, so both distributions agree up to float32 rounding: q* is theta's distribution.
    assert torch.allclose(out.logprobs["theta"].nan_to_num(), out.logprobs["t"].nan_to_num(), atol=1e-4)


@pytest.mark.parametrize("kwargs, expect", [
    (dict(device_t="gpu1"), "teacher: device 'gpu1' is not a valid device"),
    (dict(device_t="cuda:0"), "teacher: device 'cuda:0' asks for CUDA, but torch sees no CUDA device"),
    (dict(teacher_kwargs={"device_map": "everywhere"}), "teacher: device_map must be one of auto, balanced"),
    (dict(teacher_kwargs={"device_map": {"": "disk"}}), "teacher: device_map['']: a device_map device must be"),
    (dict(teacher_kwargs={"max_memory": {"cpu": "1GiB"}}), "teacher: max_memory needs a device_map"),
    (dict(theta_kwargs={"device_map": "auto", "max_memory": {"cpu": "lots"}}), "theta: max_memory['cpu'] must be"),
    (dict(teacher_kwargs={"load_in_4bit": True}), "teacher: 4-bit loading (bitsandbytes) cannot run here"),
    (dict(theta_kwargs=["device_map"]), "theta_kwargs must be a dict"),
])
def test_api_placement_errors_come_before_any_load(tiny_models, monkeypatch, kwargs, expect):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    loads = []
    for cls in (AutoModelForCausalLM, AutoTokenizer):  # spies that still call the real loader
        real = cls.from_pretrained
        monkeypatch.setattr(cls, "from_pretrained", lambda *a, _real=real, **k: loads.append(a) or _real(*a, **k))
    with pytest.raises(ValueError) as info:
        OptimalSamplingModel(tiny_models["theta"], tiny_models["teacher"], **kwargs)
    assert expect in str(info.value)
    assert loads == [], "a model or tokenizer was loaded before the placement error"


def test_cuda_index_beyond_the_device_count_is_named(monkeypatch):
    monkeypatch.setattr(machine_checks, "_cuda_count", lambda: 2)
    assert machine_checks.device_problem("cuda:1") is None
    assert "asks for CUDA device 2, but torch sees 2 (cuda:0..cuda:1)" in machine_checks.device_problem("cuda:2")
    assert "device_map['model.layers.1']: device 3 asks for CUDA device 3" in machine_checks.device_map_problem(
        {"model.embed_tokens": 0, "model.layers.1": 3})
    assert "max_memory[5]" in machine_checks.max_memory_problem({0: "10GiB", 5: "10GiB"})


# ------------------------------------------------------------------------------------------ engine


def test_teacher_logits_come_back_on_the_output_device_and_the_cache_stays(tiny_models):
    """`meta` stands in for theta's other device: logits [B, V] move there, the KV cache does not."""
    from os_cli.engine import streams as engine

    model = OptimalSamplingModel(tiny_models["theta"], tiny_models["teacher"], device="cpu")
    ids, mask = model.encode(PROMPTS_T, teacher=True)
    stream = engine.ModelStream(model.model_t, model.vocab_size, output_device="meta")
    logits = stream.prefill(ids, mask)
    assert logits.device.type == "meta" and tuple(logits.shape) == (2, model.vocab_size)
    assert all(layer.keys.device.type == "cpu" for layer in stream.cache.layers)
    reference = engine.ModelStream(model.model_t, model.vocab_size)
    expected = reference.prefill(ids, mask)
    assert expected.device.type == "cpu" and expected.shape == logits.shape
    stream.keep_rows(torch.tensor([1]))
    assert stream.step(torch.tensor([5])).device.type == "meta"


# ------------------------------------------------------------------------------------------ recipes

ROWS = [{"qid": f"q{i}", "question": f"What is {i} plus 3?", "hint": f"{i}+3={i + 3}"} for i in range(4)]


@pytest.fixture
def recipe_file(tmp_path, tiny_models):
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    recipe = {
        "description": "placement test",
        "models": {"theta": tiny_models["theta"], "teacher": tiny_models["teacher"]},
        "sampling": {"max_new_tokens": 5, "batch_size": 3, "seed": 4},
        "dataset": {"source": str(data), "id_field": "qid"},
        "prompts": {"theta": {"template": "{question}"}, "teacher": {"template": "{question} Hint: {hint}"}},
        "output": {"per_token": True},
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def cli(cli_app, *args):
    return CliRunner().invoke(cli_app, [str(a) for a in args])


def shard_lines(out: Path) -> list[str]:
    return [line for s in sorted(out.glob("shard-*.jsonl")) for line in s.read_text().splitlines()]


def test_cli_records_identical_with_per_model_placement(recipe_file, tmp_path, cli_app):
    base = cli(cli_app, "generate", "--config", recipe_file, "--output", tmp_path / "a")
    assert base.exit_code == 0, base.output
    placed = cli(cli_app, "generate", "--config", recipe_file, "--output", tmp_path / "b",
                 "--set", "models.per_model.theta.device=cpu",
                 "--set", 'models.per_model.teacher.device_map={"": cpu}')
    assert placed.exit_code == 0, placed.output
    lines = shard_lines(tmp_path / "a")
    assert len(lines) == len(ROWS) and lines == shard_lines(tmp_path / "b")
    # Placement is not part of what is sampled: the second folder resumes under the first recipe.
    again = cli(cli_app, "generate", "--config", recipe_file, "--output", tmp_path / "b")
    assert again.exit_code == 0, again.output
    assert shard_lines(tmp_path / "b") == lines


@pytest.mark.parametrize("sets, expect", [
    (["models.per_model.teacher.device=gpu1"], "models.per_model.teacher.device: must be auto, cpu, cuda or cuda:N"),
    (["models.device=cuda:x"], "models.device: must be auto, cpu, cuda or cuda:N"),
    (["models.per_model.teacher.device_map=everywhere"], "models.per_model.teacher.device_map: device_map must be one of"),
    (['models.per_model.teacher.device_map={"": 1.5}'], "models.per_model.teacher.device_map: device_map['']"),
    (["models.per_model.teacher.max_memory={cpu: 1GiB}"], "models.per_model.teacher.max_memory: max_memory needs a device_map"),
    (["models.per_model.theta.device=cpu", "models.per_model.theta.device_map=auto"],
     "models.per_model.theta.device_map: give either models.per_model.theta.device (cpu) or"),
    (["models.per_model.teacher.device=cpu", "models.per_model.teacher.quantization=4bit"],
     "models.per_model.teacher.quantization: 4bit/8bit (bitsandbytes) needs a CUDA device, but "
     "models.per_model.teacher.device is cpu"),
    (["models.per_model.teacher.quant_type=int3"], "models.per_model.teacher.quant_type: must be one of nf4, fp4"),
    # Hardware checks: before any model loads, with the key that asked.
    (["models.per_model.teacher.device=cuda:1"], "models.per_model.teacher.device: device 'cuda:1' asks for CUDA"),
    (["models.per_model.theta.device_map={model.embed_tokens: 0}"],
     "models.per_model.theta.device_map: device_map['model.embed_tokens']: device 0 asks for CUDA"),
    (["models.per_model.teacher.quantization=4bit"],
     "models.per_model.teacher.quantization: 4bit loading of the teacher model"),
])
def test_bad_placement_exits_2_with_the_key_before_models_load(recipe_file, tmp_path, cli_app, sets, expect):
    args = ["generate", "--config", recipe_file, "--output", tmp_path / "out"]
    for item in sets:
        args += ["--set", item]
    result = cli(cli_app, *args)
    assert result.exit_code == 2, result.output
    assert expect in " ".join(result.output.split()), result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "out").exists(), "the output folder was made before the placement check"


def test_quantization_error_names_the_missing_package_or_the_missing_gpu(recipe_file, monkeypatch):
    recipe = load_recipe(recipe_file, ["models.per_model.teacher.quantization=4bit"])
    found = preflight.placement_problem(recipe.models)
    assert found[0] == "models.per_model.teacher.quantization"
    assert "bitsandbytes package is not installed" in found[1] and recipe.models.teacher in found[1]
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "bitsandbytes" else real(name, *a))
    found = preflight.placement_problem(recipe.models)
    assert found[0] == "models.per_model.teacher.quantization" and "needs a CUDA device" in found[1]
    # theta alone is quantized: the key path says so
    recipe = load_recipe(recipe_file, ["models.per_model.theta.quantization=8bit"])
    assert preflight.placement_problem(recipe.models)[0] == "models.per_model.theta.quantization"


# ------------------------------------------------------------------------------------------ keys -> arguments


def test_per_model_keys_become_constructor_arguments(recipe_file):
    recipe = load_recipe(recipe_file, [
        "models.device=cpu", "models.dtype=bfloat16",
        "models.per_model.teacher.device_map=auto", "models.per_model.teacher.max_memory={0: 20GiB, cpu: 64GiB}",
        "models.per_model.teacher.quantization=4bit", "models.per_model.teacher.quant_type=fp4",
        "models.per_model.teacher.compute_dtype=float16",
    ])
    kwargs = model_kwargs(recipe)
    assert kwargs["device"] == "cpu" and kwargs["dtype"] == "bfloat16"
    assert "device_t" not in kwargs and "theta_kwargs" not in kwargs and "load_in_4bit" not in kwargs
    assert kwargs["teacher_kwargs"] == {
        "device_map": "auto", "max_memory": {0: "20GiB", "cpu": "64GiB"}, "load_in_4bit": True,
        "bnb_4bit_quant_type": "fp4", "bnb_4bit_compute_dtype": "float16",
    }
    settings = model_settings(recipe.models, "teacher")
    assert settings["device_map"] == ("auto", "models.per_model.teacher.device_map")
    assert settings["device"] == ("cpu", "models.device")
    # The BitsAndBytesConfig those arguments build (without bitsandbytes: check=False).
    config = models.pop_quantization_config(dict(kwargs["teacher_kwargs"]), "teacher", check=False)
    assert config.load_in_4bit and not config.load_in_8bit
    assert config.bnb_4bit_quant_type == "fp4" and config.bnb_4bit_compute_dtype == torch.float16


def test_shared_quantization_and_compute_dtype_default_to_the_model_dtype(recipe_file):
    recipe = load_recipe(recipe_file, ["models.dtype=bfloat16", "models.quantization=4bit",
                                       "models.per_model.theta.quantization=none", "models.per_model.teacher.device=cuda:1"])
    kwargs = model_kwargs(recipe)
    assert kwargs["device"] == "auto" and kwargs["device_t"] == "cuda:1"
    assert "theta_kwargs" not in kwargs
    assert kwargs["teacher_kwargs"] == {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4",
                                        "bnb_4bit_compute_dtype": "bfloat16"}
    config = models.pop_quantization_config(dict(kwargs["teacher_kwargs"]), "teacher", check=False)
    assert config.bnb_4bit_quant_type == "nf4" and config.bnb_4bit_compute_dtype == torch.bfloat16
    with pytest.raises(UserError, match="teacher: bnb_4bit_quant_type must be one of nf4, fp4"):
        models.pop_quantization_config({"load_in_4bit": True, "bnb_4bit_quant_type": "int2"}, "teacher", check=False)


def test_hash_ignores_placement_but_not_quantization(recipe_file):
    base = load_recipe(recipe_file)
    placed = load_recipe(recipe_file, ["models.per_model.theta.device=cpu", "models.per_model.teacher.device_map=auto",
                                       "models.per_model.teacher.max_memory={cpu: 1GiB}"])
    assert recipe_hash(placed) == recipe_hash(base)
    quantized = load_recipe(recipe_file, ["models.per_model.teacher.quantization=4bit"])
    assert recipe_hash(quantized) != recipe_hash(base)
    assert [k for k, _, _ in recipe_diff(base, quantized)] == ["models.per_model.teacher.quantization"]
    # A folder written before these keys existed (its recipe has none of them) still resumes.
    old = base.to_dict()
    old["models"] = {k: v for k, v in old["models"].items() if k not in ("per_model", "quant_type", "compute_dtype")}
    assert recipe_hash(old) == recipe_hash(base) and recipe_diff(old, base) == []


def test_bundled_4bit_teacher_fragment(tmp_path, recipe_file):
    recipe = yaml.safe_load(recipe_file.read_text())
    recipe["defaults"] = ["models/qwen2.5-7b-32b-4bit-teacher"]
    del recipe["models"]
    path = tmp_path / "big.yaml"
    path.write_text(yaml.safe_dump(recipe))
    kwargs = model_kwargs(load_recipe(path))
    assert kwargs["device"] == "cuda:0" and kwargs["dtype"] == "bfloat16" and "theta_kwargs" not in kwargs
    assert kwargs["teacher_kwargs"] == {"device_map": "auto", "max_memory": {0: "4GiB", 1: "70GiB"}, "load_in_4bit": True,
                                        "bnb_4bit_quant_type": "nf4", "bnb_4bit_compute_dtype": "bfloat16"}


@pytest.mark.parametrize("size, ok", [("20GiB", True), ("1.5 GiB", True), ("300MB", True), (2**30, True),
                                      ("20gb", False), ("2TiB", False), ("10B", False), (0, False), (True, False)])
def test_max_memory_sizes_are_the_ones_accelerate_reads_as_bytes(size, ok):
    from accelerate.utils import convert_file_size_to_int

    problem = machine_checks.max_memory_problem({"cpu": size}, hardware=False)
    assert (problem is None) == ok, problem
    if ok:
        assert convert_file_size_to_int(size) >= 2**20  # and accelerate agrees they are bytes
