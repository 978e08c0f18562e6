"""Preference and RL training: DPO, KTO and GRPO rows from `newt/preference.py`, their children, the rewards."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_train import materialize_trained

from newt.cache import Store
from newt.config import load_recipe
from newt.pipeline import plan, run_stage
from newt.synthetic import reversal_rows


def write_pairs(path: Path, n: int = 24, conversational: bool = True) -> Path:
    """Reversal pairs: chosen reverses the word, rejected repeats it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for row in reversal_rows(n, seed=1):
            word = row["messages"][0]["content"]
            prompt = [{"role": "user", "content": word}] if conversational else f"reverse {word}:"
            f.write(json.dumps({"prompt": prompt, "chosen": word[::-1], "rejected": word}) + "\n")
    return path


def recipe_with(tiny_recipe_file, tmp_path: Path, extra: str, data: Path | None = None):
    path = tiny_recipe_file(extra=extra)
    if data is not None:
        text = path.read_text().replace(str(tmp_path / "data" / "reversal.jsonl"), str(data))
        path.write_text(text)
    return load_recipe(path)


def prepared_rows(recipe, root: Path) -> tuple[dict, list[dict]]:
    import datasets

    store = Store(str(root))
    keys = plan(recipe)
    run_stage(recipe, "dataset", store, keys=keys, log=lambda m: None)
    meta = run_stage(recipe, "prepared", store, keys=keys, log=lambda m: None).metadata
    data = datasets.load_from_disk(str(store.local_path("prepared", keys["prepared"].key) / "data"))
    return meta, [r for split in data.values() for r in split]


def test_dpo_rows_are_chat_templated_prompt_chosen_rejected(tiny_recipe_file, tmp_path: Path) -> None:
    recipe = recipe_with(tiny_recipe_file, tmp_path, "rl: dpo\n", write_pairs(tmp_path / "pairs.jsonl"))
    meta, rows = prepared_rows(recipe, tmp_path / "store")
    assert meta["rows_train"] + meta["rows_validation"] == 24 and meta["columns"] == ["prompt", "chosen", "rejected"]
    row = next(r for r in rows if r["prompt"] == "<|im_start|>user\nabcd<|im_end|>\n<|im_start|>assistant\n") \
        if any("abcd" in r["prompt"] for r in rows) else rows[0]
    word = row["prompt"].split("\n")[1].split("<|im_end|>")[0]
    assert row["prompt"] == f"<|im_start|>user\n{word}<|im_end|>\n<|im_start|>assistant\n"
    assert row["chosen"] == f"{word[::-1]}<|im_end|>\n" and row["rejected"] == f"{word}<|im_end|>\n"


def test_plain_text_pairs_stay_text(tiny_recipe_file, tmp_path: Path) -> None:
    recipe = recipe_with(tiny_recipe_file, tmp_path, "rl: dpo\n",
                         write_pairs(tmp_path / "pairs.jsonl", conversational=False))
    _, rows = prepared_rows(recipe, tmp_path / "store")
    assert all(r["prompt"].startswith("reverse ") and r["chosen"] == r["prompt"][8:-1][::-1] for r in rows)


def test_dpo_on_sft_rows_fails_at_prepare_with_a_clear_error(tiny_recipe_file, tmp_path: Path) -> None:
    from newt.preference import PreferenceError

    recipe = load_recipe(tiny_recipe_file(extra="rl: dpo\n"))  # the fixture's data is SFT `messages`
    with pytest.raises(PreferenceError, match=r"datasets\[0\].*row 0: rl: dpo needs columns prompt, chosen, "
                                              r"rejected, found messages\. These are SFT conversations"):
        prepared_rows(recipe, tmp_path / "store")


def test_a_method_given_another_methods_prepared_rows_fails_before_launch(tiny_recipe_file, tmp_path: Path) -> None:
    from newt.train import TrainError, check_prepared

    sft = load_recipe(tiny_recipe_file())
    store = Store(str(tmp_path / "store"))
    keys = plan(sft)
    run_stage(sft, "dataset", store, keys=keys, log=lambda m: None)
    run_stage(sft, "prepared", store, keys=keys, log=lambda m: None)
    with pytest.raises(TrainError, match="dpo needs prepared rows with columns prompt, chosen, rejected.*sft rows"):
        check_prepared(sft.model_copy(update={"rl": "dpo"}), store.local_path("prepared", keys["prepared"].key))


@pytest.mark.slow
def test_dpo_trains_and_reports_its_loss_type(tiny_recipe_file, tmp_path: Path) -> None:
    data = write_pairs(tmp_path / "pairs.jsonl")
    sigmoid = materialize_trained(recipe_with(tiny_recipe_file, tmp_path, "rl: dpo\nmax_steps: 2\n", data),
                                  tmp_path / "a")
    assert sigmoid["method"] == "dpo" and sigmoid["global_step"] == 2 and sigmoid["dpo_loss_type"] == ["sigmoid"]
    # at step 1 policy == reference, so the sigmoid loss is exactly -log σ(0) = ln 2 (TRL DPO docs)
    assert sigmoid["loss_history"][0]["loss"] == pytest.approx(0.693147, abs=1e-4)
    ipo = materialize_trained(recipe_with(tiny_recipe_file, tmp_path, "rl: dpo\nmax_steps: 2\ndpo_loss_type: [ipo]\n"
                                          "rl_beta: 0.5\n", data), tmp_path / "b")
    # IPO's loss at equal policy/reference is (0 - 1/(2β))² = 1 for β = 0.5
    assert ipo["loss_history"][0]["loss"] == pytest.approx(1.0, abs=1e-4) and ipo["rl_beta"] == 0.5


@pytest.mark.slow
def test_kto_trains_on_unpaired_rows_made_from_pairs(tiny_recipe_file, tmp_path: Path) -> None:
    recipe = recipe_with(tiny_recipe_file, tmp_path, "rl: kto\nmax_steps: 2\n", write_pairs(tmp_path / "p.jsonl"))
    _, rows = prepared_rows(recipe, tmp_path / "store")
    assert len(rows) == 48 and sum(r["label"] for r in rows) == 24
    meta = materialize_trained(recipe, tmp_path / "store")
    assert meta["method"] == "kto" and meta["global_step"] == 2


def test_kto_pairs_are_held_out_whole(tiny_recipe_file, tmp_path: Path) -> None:
    import datasets

    # 3 rows asked for, pairs make 2 rows each: two whole pairs (4 rows) are held out, none split across sides
    recipe = recipe_with(tiny_recipe_file, tmp_path, "rl: kto\nval_set_size: 3\n", write_pairs(tmp_path / "p.jsonl"))
    meta, _ = prepared_rows(recipe, tmp_path / "store")
    assert (meta["rows_train"], meta["rows_validation"]) == (44, 4)
    store = Store(str(tmp_path / "store"))
    data = datasets.load_from_disk(str(store.local_path("prepared", plan(recipe)["prepared"].key) / "data"))
    held = {(r["prompt"], r["label"]) for r in data["validation"]}
    assert {p for p, _ in held} & {r["prompt"] for r in data["train"]} == set()  # no held-out prompt trained on
    assert held == {(p, label) for p, _ in held for label in (True, False)}  # each with both of its completions


@pytest.mark.slow
def test_grpo_samples_groups_and_scores_them_with_the_named_rewards(tiny_recipe_file, tmp_path: Path) -> None:
    calls = tmp_path / "calls.jsonl"
    (tmp_path / "recorder.py").write_text(
        "import json\n"
        "def record(prompts, completions, completion_ids, answer, **kw):\n"
        f"    with open({str(calls)!r}, 'a') as f:\n"
        "        f.write(json.dumps({'prompts': prompts, 'lengths': [len(c) for c in completion_ids],\n"
        "                            'answers': answer}) + '\\n')\n"
        "    return [1.0] * len(completions)\n")
    recipe = load_recipe(tiny_recipe_file(extra=f"rl: grpo\nmax_steps: 2\nrl_beta: 0.0\n"
                                                f"trl: {{num_generations: 4, max_completion_length: 5, "
                                                f"reward_funcs: ['{tmp_path}/recorder.py:record', exact_match], "
                                                f"reward_weights: [0.5, 1.0]}}\n"))
    _, rows = prepared_rows(recipe, tmp_path / "store")
    assert set(rows[0]) == {"prompt", "answer"} and rows[0]["prompt"].endswith("<|im_start|>assistant\n")
    meta = materialize_trained(recipe, tmp_path / "store")
    assert meta["method"] == "grpo" and meta["global_step"] == 2
    batches = [json.loads(line) for line in calls.read_text().splitlines()]
    assert len(batches) == 2  # one generation batch per step (micro_batch_size 8 = 2 prompts × 4 samples)
    for b in batches:
        assert len(b["prompts"]) == 8 and all(b["prompts"].count(p) == 4 for p in b["prompts"])  # groups of 4
        assert max(b["lengths"]) <= 5  # trl.max_completion_length
        assert all(a[::-1] in p for p, a in zip(b["prompts"], b["answers"]))  # answer = the reversed user word
    # the logged reward is the weighted sum: 0.5 × 1 from the recorder + 1 × exact_match (0 for an untrained model)
    assert all(r == pytest.approx(0.5) for r in meta["reward_history"])


def test_builtin_and_user_rewards(tmp_path: Path) -> None:
    from newt.rewards import RewardError, resolve

    assert resolve("exact_match")(["dcba ", "abcd"], answer=["dcba", "dcba"]) == [1.0, 0.0]
    fmt = resolve("format")
    assert fmt(["<think>hm</think> <answer>4</answer>", "4"]) == [1.0, 0.0]
    assert resolve("regex:\\d+")(["42", "x42"]) == [1.0, 0.0]
    assert resolve("length", max_completion_length=8)(["", ""], completion_ids=[[1, 2], [1] * 8]) == [0.75, 0.0]
    mine = tmp_path / "my_rewards.py"
    mine.write_text("def shout(completions, **kw):\n    return [float(c.isupper()) for c in completions]\n")
    assert resolve(f"{mine}:shout")(["HI", "hi"]) == [1.0, 0.0]
    assert resolve("newt.rewards.exact_match") is resolve("exact_match")
    with pytest.raises(RewardError, match="did you mean 'exact_match'"):
        resolve("exact_mach")
    with pytest.raises(RewardError, match="has no function 'nope'"):
        resolve("newt.rewards:nope")


@pytest.mark.parametrize("name", ["dpo", "kto", "grpo"])
def test_example_recipes_prepare(name: str, tmp_path: Path, monkeypatch) -> None:
    root = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(root)  # example paths are relative to the repository root
    recipe = load_recipe(root / "recipes" / "examples" / f"{name}.yaml")
    meta, rows = prepared_rows(recipe, tmp_path / "store")
    assert recipe.rl == name and meta["rows_train"] + meta["rows_validation"] == {"dpo": 5, "kto": 10, "grpo": 4}[name]
    if name == "kto":  # the held-out pair whole: evaluation ranks its two completions
        held = rows[meta["rows_train"]:]
        assert len(held) == 2 and held[0]["prompt"] == held[1]["prompt"] and {r["label"] for r in held} == {True, False}
    elif name == "dpo":
        assert all(r["prompt"].endswith("<|im_start|>assistant\n") and r["chosen"] != r["rejected"] for r in rows)
    else:
        assert recipe.trl.reward_weights == [1.0, 0.1] and all(r["answer"] for r in rows)


def test_implicit_prompt_pairs_are_split_at_the_last_turn(tiny_recipe_file, tmp_path: Path) -> None:
    path = tmp_path / "implicit.jsonl"
    with path.open("w") as f:
        for word in ("abc", "bcd", "cde", "def"):
            user = {"role": "user", "content": word}
            f.write(json.dumps({"chosen": [user, {"role": "assistant", "content": word[::-1]}],
                                "rejected": [user, {"role": "assistant", "content": word}]}) + "\n")
    recipe = recipe_with(tiny_recipe_file, tmp_path, "rl: dpo\nval_set_size: 0\n", path)
    _, rows = prepared_rows(recipe, tmp_path / "store")
    row = next(r for r in rows if "abc" in r["prompt"])
    assert row == {"prompt": "<|im_start|>user\nabc<|im_end|>\n<|im_start|>assistant\n",
                   "chosen": "cba<|im_end|>\n", "rejected": "abc<|im_end|>\n"}
