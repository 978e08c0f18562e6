"""newt as a Dagster component in another project: a temp project's `defs/` folder holds two `defs.yaml` files
(one naming a recipe file, one inline), Dagster's component loader builds them, and one recipe materializes."""

from __future__ import annotations

import sys
from pathlib import Path

import dagster as dg
import pytest
import yaml

from conftest import TINY_RECIPE


def write_project(root: Path, data: Path) -> Path:
    """dg.toml + src/otherproj/defs/{sft_file,dpo_inline}/defs.yaml, as `dg scaffold project` lays them out."""
    root.mkdir(parents=True)
    (root / "dg.toml").write_text('directory_type = "project"\n\n[project]\nroot_module = "otherproj"\n')
    defs = root / "src" / "otherproj" / "defs"
    for folder in ("sft_file", "dpo_inline"):
        (defs / folder).mkdir(parents=True)
    (root / "src" / "otherproj" / "__init__.py").write_text("")
    (defs / "__init__.py").write_text("")
    recipe = yaml.safe_load(TINY_RECIPE.format(data=data)) | {"max_steps": 1, "eval": {"models": ["merged"],
                                                                                          "max_samples": 4}}
    (defs / "sft_file" / "tiny_sft.yaml").write_text(yaml.safe_dump(recipe))
    (defs / "sft_file" / "defs.yaml").write_text(yaml.safe_dump(
        {"type": "assets.component.NewtRecipe", "attributes": {"recipe": "tiny_sft.yaml", "store": str(root / "st")}}))
    inline = {"base_model": "builtin:tiny-llama", "datasets": [{"path": str(data)}], "rl": "dpo",
              "schedule": "0 3 * * *"}
    (defs / "dpo_inline" / "defs.yaml").write_text(yaml.safe_dump(
        {"type": "assets.component.NewtRecipe",
         "attributes": {"name": "dpo_demo", "recipe": inline, "store": str(root / "st")}}))
    return root


@pytest.fixture
def project(tmp_path: Path, monkeypatch):
    from newt.synthetic import write_reversal_jsonl

    root = write_project(tmp_path / "otherproj", write_reversal_jsonl(tmp_path / "data" / "reversal.jsonl", n=24))
    monkeypatch.syspath_prepend(str(root / "src"))
    yield root
    for name in [m for m in sys.modules if m == "otherproj" or m.startswith("otherproj.")]:
        del sys.modules[name]


@pytest.mark.slow
def test_two_defs_yaml_files_build_two_recipes_and_one_materializes(project: Path) -> None:
    defs = dg.load_from_defs_folder(path_within_project=project)
    keys = {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}
    stages = ("source_0", "dataset", "prepared", "trained", "merged", "quantized", "evaluation")
    assert keys == {f"{group}/{s}" for group in ("tiny_sft", "dpo_demo") for s in stages}
    assert {j.name for j in defs.jobs} >= {"tiny_sft_job", "dpo_demo_job"}
    assert [s.name for s in defs.schedules] == ["dpo_demo_retrain_schedule"]
    assert {s.name for s in defs.sensors} == {"tiny_sft_source_0_sensor", "dpo_demo_source_0_sensor"}
    # the inline recipe links its defs.yaml; the file recipe its own file
    dpo = defs.resolve_asset_graph().get(dg.AssetKey(["dpo_demo", "trained"]))
    assert (project / "src/otherproj/defs/dpo_inline/defs.yaml").as_uri() in dpo.description

    job = defs.resolve_job_def("tiny_sft_job")
    with dg.instance_for_test() as instance:
        result = job.execute_in_process(instance=instance, raise_on_error=False)
        assert result.success
        built = {e.materialization.asset_key.path[-1] for e in result.get_asset_materialization_events()}
        assert built == {"dataset", "prepared", "trained", "merged", "quantized", "evaluation"}
        assert instance.get_run_by_id(result.run_id).tags["newt/recipe"] == "tiny_sft"
    assert any((project / "st" / "evaluation").iterdir())  # the component's own store
