"""Building models from a recipe: the `OptimalSamplingModel` a resolved recipe describes.

Beside the API (the recipe package itself is data only and imports neither torch nor `api`):

- `build_model(recipe, **extra) -> OptimalSamplingModel`: checks placement and hub reachability, then
  loads the two models; load failures are `UserError`s (exit 1) naming the model.
- `model_kwargs(recipe) -> dict`: the constructor arguments the recipe sets (`models`, `alpha`,
  `constraints`, and the places `load_recipe` resolved).
- `check_placement(models)`, `check_models_reachable(models, places)`: the checks made before anything
  loads, on the `models` section (and `recipe.places`).
"""

from __future__ import annotations

import copy

from os_cli.errors import UserError
from os_cli.models.hub import recipe_load_kwargs
from os_cli.recipe import Models, Recipe, model_settings
from os_cli.recipe.places import Places, hub_offline


def model_kwargs(recipe: Recipe) -> dict:
    """The keyword arguments of `OptimalSamplingModel(...)` that the recipe sets."""
    m, a, c = recipe.models, recipe.alpha, recipe.constraints
    places = recipe.places
    kwargs: dict = dict(
        model_theta_path=places.theta,
        model_t_path=places.teacher,
        alpha_method=a.method,
        fixed_alpha=a.fixed,
        alpha_min=a.min,
        alpha_max=a.max,
        constraint_to_target=c.to_target,
        target_top_k=c.top_k,
        target_top_p=c.top_p,
        force_target_for_first_token=c.force_first_token,
        force_target_for_special_tokens=c.force_special_tokens,
    )
    per_role = {role: _load_kwargs(m, role) for role in ("theta", "teacher")}
    # What both models share stays a plain keyword argument (both); the rest goes to one model.
    shared = {k: v for k, v in per_role["theta"].items() if k in per_role["teacher"] and per_role["teacher"][k] == v}
    kwargs.update({k: v for k, v in shared.items() if k not in ("device", "dtype")})
    kwargs["device"], kwargs["dtype"] = per_role["theta"]["device"], per_role["theta"]["dtype"]
    if per_role["teacher"]["device"] != kwargs["device"]:
        kwargs["device_t"] = per_role["teacher"]["device"]
    if per_role["teacher"]["dtype"] != kwargs["dtype"]:
        kwargs["dtype_t"] = per_role["teacher"]["dtype"]
    for role, name in (("theta", "theta_kwargs"), ("teacher", "teacher_kwargs")):
        own = {k: v for k, v in per_role[role].items() if k not in shared and k not in ("device", "dtype")}
        if own:
            kwargs[name] = own
    if m.attn_implementation != "auto":
        kwargs["attn_implementation"] = m.attn_implementation
    if m.compile:
        kwargs["compile"] = m.compile
    kwargs.update(recipe_load_kwargs(m))  # revision, trust_remote_code: the tokenizer's rule too
    return kwargs


def _load_kwargs(models: Models, role: str) -> dict:
    """One model's device, dtype and placement / quantization arguments of `from_pretrained`."""
    settings = {key: value for key, (value, _) in model_settings(models, role).items()}
    out: dict = {"device": settings["device"], "dtype": settings["dtype"]}
    if settings["device_map"] is not None:
        out["device_map"] = copy.deepcopy(settings["device_map"])
        if settings["max_memory"] is not None:
            out["max_memory"] = copy.deepcopy(settings["max_memory"])
    if settings["quantization"] == "4bit":
        compute = settings["compute_dtype"] if settings["compute_dtype"] != "auto" else settings["dtype"]
        out["load_in_4bit"] = True
        out["bnb_4bit_quant_type"] = settings["quant_type"]
        out["bnb_4bit_compute_dtype"] = compute  # auto: the model dtype auto picks on CUDA
    elif settings["quantization"] == "8bit":
        out["load_in_8bit"] = True
    return out


def check_placement(models: Models) -> None:
    """Before any model loads: each model's devices, device_map, max_memory and quantization can run
    on this machine (CUDA present, device indices in range, bitsandbytes usable); else exit 2."""
    from os_cli.models.preflight import placement_problem

    found = placement_problem(models)
    if found:
        path, problem = found
        raise UserError(f"{path}: {problem}")


def check_models_reachable(models: Models, places: Places) -> None:
    """Fail fast, naming the model, when a hub model is not cached and the hub is off (HF_HUB_OFFLINE=1)."""
    if not hub_offline():
        return
    for key in ("theta", "teacher"):
        value = models.name(key)
        if not value or key not in places.hub:
            continue
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(value, "config.json", revision=models.revision)
        except Exception:  # noqa: BLE001 - an odd name is reported by from_pretrained itself
            continue
        if not isinstance(cached, str):
            raise UserError(
                f"models.{key}: {value!r} is not a local folder, not in the Hugging Face cache, and the hub is "
                f"unreachable (HF_HUB_OFFLINE=1); download it where the hub is reachable, or point models.{key} "
                f"at a local folder (--set models.{key}=PATH)",
                exit_code=1,
            )


def build_model(recipe: Recipe, **extra):
    """Load the recipe's models as an `OptimalSamplingModel`; `extra` overrides constructor arguments.

    Failures to load are `UserError`s (exit code 1) naming the model and whether the hub is unreachable.
    """
    from os_cli.api.model import OptimalSamplingModel

    check_placement(recipe.models)
    check_models_reachable(recipe.models, recipe.places)
    kwargs = model_kwargs(recipe)
    kwargs.update(extra)
    try:
        return OptimalSamplingModel(**kwargs)
    except UserError:
        raise
    except (OSError, ValueError, ImportError) as exc:
        raise UserError(_describe_load_failure(recipe, exc), exit_code=1) from exc


def _describe_load_failure(recipe: Recipe, exc: Exception) -> str:
    text = f"{type(exc).__name__}: {exc}"
    models, places = recipe.models, recipe.places
    which = []
    for key in ("teacher", "theta"):
        value = models.name(key)
        if value and (value in str(exc) or str(places.model(key)) in str(exc)):
            which.append(key)
    keys = which[:1] or ["theta", "teacher"]
    name = " or ".join(f"models.{k} ({models.name(k)!r})" for k in keys if models.name(k))
    hub_names = [k for k in keys if k in places.hub]
    offline = hub_offline()
    markers = ("offline", "connect", "resolve", "internet", "network", "couldn't", "could not find", "not found")
    hub = ""
    if hub_names and (offline or any(m in str(exc).lower() for m in markers)):
        hub = "; it is a hub name, and the hub may be unreachable from here: use a local folder instead"
    return f"could not load {name}: {text}{hub}"
