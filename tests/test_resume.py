"""Manual resume (`resume_from_checkpoint`): from a checkpoint folder of another run, local or through an fsspec URL;
`true`; and the clear errors for a folder that is not a checkpoint. The automatic resume after a crash is
tests/test_train.py::test_killed_run_resumes_from_its_checkpoint_and_matches_an_uninterrupted_run."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from test_train import killing_launcher, materialize_trained

from newt.cache import Store
from newt.config import load_recipe
from newt.pipeline import plan

STEPS = "max_steps: 8\nsave_steps: 2\n"


@pytest.fixture
def checkpoint(tiny_recipe_file, tmp_path: Path) -> Path:
    """checkpoint-2 of a run killed at step 3 (under accelerate), copied out of its store: another run's folder."""
    recipe = load_recipe(tiny_recipe_file(extra=STEPS))
    with pytest.raises(RuntimeError, match="killed"):
        materialize_trained(recipe, tmp_path / "crashed", killing_launcher)
    work = Store(str(tmp_path / "crashed")).workdir("trained", plan(recipe)["trained"].key)
    return Path(shutil.copytree(work / "checkpoints" / "checkpoint-2", tmp_path / "saved" / "checkpoint-2"))


def test_resume_from_another_runs_checkpoint_local_and_by_url(tiny_recipe_file, tmp_path: Path, checkpoint) -> None:
    import fsspec

    fresh = materialize_trained(load_recipe(tiny_recipe_file(extra=STEPS)), tmp_path / "fresh")
    assert fresh["resumed_from_step"] == 0

    local = load_recipe(tiny_recipe_file(extra=STEPS + f"resume_from_checkpoint: {checkpoint}\n"))
    assert plan(local)["trained"].key == plan(load_recipe(tiny_recipe_file(extra=STEPS)))["trained"].key  # no key
    resumed = materialize_trained(local, tmp_path / "store-local")
    assert resumed["resumed_from_step"] == 2 and resumed["global_step"] == 8
    assert resumed["loss_history"][0]["step"] == 3, "continued from the checkpoint, not restarted"
    # Same seed, same data order: the Trainer restored the RNG states and skipped the consumed batches (tolerance as
    # in test_train: thread-count differences in CPU reductions between the accelerate and in-process runs).
    assert resumed["final_loss"] == pytest.approx(fresh["final_loss"], abs=1e-3)

    fs = fsspec.filesystem("memory")  # a non-local fsspec file system: the checkpoint is copied in first
    fs.put(str(checkpoint), "/bucket/run/checkpoint-2", recursive=True)
    url = load_recipe(tiny_recipe_file(extra=STEPS + "resume_from_checkpoint: memory://bucket/run/checkpoint-2\n"))
    by_url = materialize_trained(url, tmp_path / "store-url")
    assert by_url["resumed_from_step"] == 2 and by_url["final_loss"] == pytest.approx(resumed["final_loss"], abs=1e-6)
    art = Store(str(tmp_path / "store-url")).local_path("trained", plan(url)["trained"].key)
    names = {p.name for p in art.iterdir()}
    assert {"adapter", "metrics.json"} <= names and not names & {"resume-from", "checkpoints"}, names


def test_resume_errors_name_the_folder_and_the_fix(tiny_recipe_file, tmp_path: Path) -> None:
    from newt.config import RecipeError, parse_recipe
    from newt.train.resume import ResumeError

    with pytest.raises(RecipeError, match=r"resume_from_checkpoint: got \[\]; expected a checkpoint folder \(a path "
                                          r"or fsspec URL\) or true"):
        parse_recipe("base_model: m\ndatasets: [{path: d.jsonl}]\nresume_from_checkpoint: []\n")

    missing = load_recipe(tiny_recipe_file(extra=f"resume_from_checkpoint: {tmp_path / 'nope'}\n"))
    with pytest.raises(ResumeError, match=r"resume_from_checkpoint: '.*nope' is not a folder; give a Trainer "
                                          r"checkpoint folder"):
        materialize_trained(missing, tmp_path / "s1")
    (tmp_path / "runs" / "checkpoint-4").mkdir(parents=True)
    parent = load_recipe(tiny_recipe_file(extra=f"resume_from_checkpoint: {tmp_path / 'runs'}\n"))
    with pytest.raises(ResumeError, match=r"has no trainer_state.json, so it is not a complete Trainer checkpoint"):
        materialize_trained(parent, tmp_path / "s2")
    nothing = load_recipe(tiny_recipe_file(extra="resume_from_checkpoint: true\n"))
    with pytest.raises(ResumeError, match=r"resume_from_checkpoint: true, but .*checkpoints holds no complete "
                                          r"checkpoint"):
        materialize_trained(nothing, tmp_path / "s3")
