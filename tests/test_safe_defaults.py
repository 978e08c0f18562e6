"""Safe defaults: YAML is read safely, model-repo code runs only when the recipe says `trust_remote_code: true` (and
the asset metadata then says so), weights are written and read as safetensors only, custom code (reward functions,
templates) comes only from what the recipe names, and templates render in Jinja's sandbox.

That no pickle weights end up in a store after a whole run is asserted on the whole-graph run of test_secrets.py.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import dagster as dg
import pytest
import yaml

from newt.config import Recipe, RecipeError, parse_recipe

ROOT = Path(__file__).resolve().parents[1]
CODE = [*sorted((ROOT / "newt").rglob("*.py")), *sorted((ROOT / "assets").rglob("*.py")),
        *sorted((ROOT / "resources").rglob("*.py")), *sorted((ROOT / "jobs").rglob("*.py")), ROOT / "definitions.py"]
UNSAFE = {
    r"\byaml\.(load|unsafe_load|full_load|load_all)\(": "yaml.safe_load only",
    r"Loader\s*=": "yaml.safe_load only",
    r"\bpickle\.loads?\(|\bdill\.": "no pickle",
    r"\btorch\.load\(": "safetensors only",
    r"safe_serialization\s*=\s*False|use_safetensors\s*=\s*False": "safetensors only",
    r"(?<![\w.])(eval|exec)\(": "no eval/exec of strings",
    r"trust_remote_code\s*=\s*True": "trust_remote_code only from the recipe",
}


def test_the_recipe_loader_is_pyyaml_safe_loader() -> None:
    import newt.config

    assert issubclass(newt.config.UniqueKeyLoader, yaml.SafeLoader)


def test_yaml_tags_that_would_run_code_are_refused(tmp_path: Path) -> None:
    sentinel = tmp_path / "ran"
    for text in (f'!!python/object/apply:os.system ["touch {sentinel}"]\n',
                 f'base_model: !!python/object/apply:os.system ["touch {sentinel}"]\ndatasets: [{{path: p}}]\n',
                 "base_model: !!python/name:os.system\ndatasets: [{path: p}]\n"):  # fmt: skip
        with pytest.raises(RecipeError, match="could not determine a constructor"):
            parse_recipe(text)
    assert not sentinel.exists()


@pytest.mark.parametrize("path", CODE, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_unsafe_loading_in_newt_code(path: Path) -> None:
    text = "\n".join(line for line in path.read_text().splitlines() if not line.lstrip().startswith("#"))
    found = [f"{pattern!r} ({why})" for pattern, why in UNSAFE.items() if re.search(pattern, text)]
    assert not found, f"{path.relative_to(ROOT)}: {found}"


def remote_code_model(tmp_path: Path) -> tuple[Path, Path]:
    """The built-in model with an `auto_map` pointing at repo code that leaves a file behind when imported."""
    from newt.tiny import ensure_builtin

    folder, sentinel = tmp_path / "remote-code-model", tmp_path / "remote-code-ran"
    shutil.copytree(ensure_builtin("tiny-llama"), folder)
    (folder / "modeling_evil.py").write_text(
        f"import pathlib\npathlib.Path({str(sentinel)!r}).write_text('ran')\n"
        "from transformers import LlamaConfig, LlamaForCausalLM\n"
        "class EvilConfig(LlamaConfig):\n    model_type = 'llama'\n"
        "class EvilModel(LlamaForCausalLM):\n    config_class = EvilConfig\n"
    )
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "modeling_evil.EvilConfig", "AutoModelForCausalLM": "modeling_evil.EvilModel"}
    (folder / "config.json").write_text(json.dumps(config))
    return folder, sentinel


def test_model_repo_code_runs_only_with_trust_remote_code(tmp_path: Path) -> None:
    from newt.models import load_model

    assert Recipe.model_fields["trust_remote_code"].default is False
    folder, sentinel = remote_code_model(tmp_path)
    recipe = parse_recipe(f"base_model: {folder}\ndatasets: [{{path: data.jsonl}}]\n")
    try:
        load_model(recipe.base_model, trust_remote_code=recipe.trust_remote_code)
    except (ValueError, OSError):
        pass  # refusing is as good as ignoring the repo code
    assert not sentinel.exists(), "the model repo's code ran although the recipe did not trust it"
    # The control: with the recipe's consent the same folder does run its code, so the check above can fail.
    trusting = parse_recipe(f"base_model: {folder}\ntrust_remote_code: true\ndatasets: [{{path: data.jsonl}}]\n")
    load_model(trusting.base_model, trust_remote_code=trusting.trust_remote_code)
    assert sentinel.read_text() == "ran"


def test_trust_remote_code_is_shown_in_asset_metadata(tiny_recipe_file, tmp_path: Path) -> None:
    from definitions import build_definitions
    from resources import NewtStore

    def prepared_metadata(extra: str) -> dict:
        recipes = tiny_recipe_file(extra=extra).parent
        defs = build_definitions(recipes, NewtStore(root=str(tmp_path / "store")))
        keys = [k for a in defs.assets if isinstance(a, dg.AssetsDefinition) for k in a.keys
                if k.path[-1] in ("dataset", "prepared")]  # fmt: skip
        result = dg.materialize(list(defs.assets), selection=keys, resources=defs.resources,
                                instance=dg.DagsterInstance.ephemeral())  # fmt: skip
        [event] = [e for e in result.get_asset_materialization_events()
                   if e.materialization.asset_key.path[-1] == "prepared"]  # fmt: skip
        return event.materialization.metadata

    assert "trust_remote_code" not in prepared_metadata("")
    shown = prepared_metadata("trust_remote_code: true\n")
    assert shown["trust_remote_code"].value is True


def test_pickle_weights_are_not_loaded(tmp_path: Path) -> None:
    import torch

    from newt.models import load_model
    from newt.tiny import ensure_builtin

    folder = tmp_path / "pickled"
    shutil.copytree(ensure_builtin("tiny-llama"), folder)
    weights = load_model(str(folder)).state_dict()
    (folder / "model.safetensors").unlink()
    torch.save(weights, folder / "pytorch_model.bin")  # what an old checkpoint (or an attacker) ships
    with pytest.raises(OSError, match="safetensors|model.safetensors"):
        load_model(str(folder))


def test_reward_code_comes_only_from_the_named_file_or_module(tmp_path: Path, monkeypatch) -> None:
    from newt import rewards

    (tmp_path / "my_rewards.py").write_text("def score(completions, **kw):\n    return [1.0 for _ in completions]\n")
    func = rewards.resolve(f"{tmp_path / 'my_rewards.py'}:score")
    assert func(["a", "b"]) == [1.0, 1.0]
    monkeypatch.chdir(tmp_path)  # a bare name is a built-in or an error, never a file found beside the data
    with pytest.raises(rewards.RewardError, match="unknown reward 'my_rewards'"):
        rewards.resolve("my_rewards")


def test_templates_render_in_the_jinja_sandbox() -> None:
    from jinja2.exceptions import SecurityError

    from newt.models import load_tokenizer

    tokenizer = load_tokenizer("builtin:tiny-llama")
    escape = "{{ ''.__class__.__mro__[1].__subclasses__() }}{% for m in messages %}{{ m['content'] }}{% endfor %}"
    with pytest.raises(SecurityError):
        tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], chat_template=escape, tokenize=False)


def test_recipe_yaml_round_trips_through_safe_dump() -> None:
    # The child reads the resolved recipe back with yaml.safe_load / json: nothing in it needs an unsafe tag.
    recipe = parse_recipe("base_model: builtin:tiny-llama\ndatasets: [{path: data.jsonl}]\n")
    data = recipe.model_dump(mode="json")
    assert Recipe.model_validate(yaml.safe_load(yaml.safe_dump(data))).model_dump(mode="json") == data
