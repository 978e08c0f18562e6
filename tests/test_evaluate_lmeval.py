"""lm-evaluation-harness tasks from local YAML files, offline, on a model folder (the merged model's shape)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from newt.config import parse_recipe

GEN_TASK = """\
task: reverse_gen
dataset_path: json
dataset_kwargs:
  data_files: {{test: {data}}}
test_split: test
output_type: generate_until
doc_to_text: "Reverse: {{{{letters}}}}\\nAnswer:"
doc_to_target: "{{{{answer}}}}"
generation_kwargs: {{until: ["\\n"], max_gen_toks: 8, do_sample: false}}
metric_list:
  - {{metric: exact_match, aggregation: mean, higher_is_better: true}}
"""
LL_TASK = """\
task: reverse_ppl
dataset_path: json
dataset_kwargs:
  data_files: {{test: {data}}}
test_split: test
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{{{letters}}}} {{{{answer}}}}"
metric_list:
  - {{metric: word_perplexity}}
  - {{metric: bits_per_byte}}
"""


def write_tasks(folder: Path) -> Path:
    rows = [{"letters": w, "answer": w[::-1]} for w in ("abc", "hello", "xyz", "newt")]
    data = folder / "reverse.jsonl"
    folder.mkdir(parents=True, exist_ok=True)
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "reverse_gen.yaml").write_text(GEN_TASK.format(data=data))
    (folder / "reverse_ppl.yaml").write_text(LL_TASK.format(data=data))
    return folder


@pytest.mark.slow
def test_local_yaml_tasks_run_offline_on_a_model_folder(tmp_path: Path, monkeypatch) -> None:
    from newt.evaluate import lm_eval_scores
    from newt.models import load_model, load_tokenizer, resolve

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")  # proves nothing reaches for the hub
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tasks = write_tasks(tmp_path / "tasks")
    recipe = parse_recipe(
        "base_model: builtin:tiny-llama\ndatasets: [{path: d.jsonl}]\n"
        f"eval: {{lm_eval_tasks: [reverse_gen, reverse_ppl], lm_eval_include_path: {tasks}, lm_eval_limit: 4, "
        "thresholds: {reverse_gen/exact_match: 0.5, reverse_ppl/word_perplexity: 1.0e+30}}\n")
    folder = resolve("builtin:tiny-llama")
    metrics = lm_eval_scores(load_model(folder, dtype="float32"), load_tokenizer(folder), recipe)
    assert set(metrics) >= {"reverse_gen/exact_match", "reverse_ppl/word_perplexity", "reverse_ppl/bits_per_byte"}
    assert metrics["reverse_gen/exact_match"] == 0.0  # a random model reverses nothing
    assert metrics["reverse_ppl/word_perplexity"] > 1.0

    from newt.evaluate import threshold_verdicts

    verdicts = threshold_verdicts({"merged": metrics}, recipe.eval.thresholds)
    assert {(v["metric"], v["passed"]) for v in verdicts} == {
        ("reverse_gen/exact_match", False), ("reverse_ppl/word_perplexity", True)}  # perplexity is a maximum
