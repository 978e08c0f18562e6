"""Keys of the quantize outputs and evaluation, and following manifests upstream (`newt.lineage.trace`)."""

from __future__ import annotations

from pathlib import Path

from newt.cache import Store, compute_key
from newt.config import load_recipe
from newt.lineage import format_trace, origins, trace
from newt.pipeline import nodes, plan


def keys(recipe_file: Path) -> dict[str, str]:
    return {n: k.key for n, k in plan(load_recipe(recipe_file)).items()}


def test_each_quantize_output_is_keyed_by_its_own_method(tiny_recipe_file) -> None:
    one = keys(tiny_recipe_file("a", "quantize: {outputs: [int8_weight_only]}\n"))
    two = keys(tiny_recipe_file("b", "quantize: {outputs: [int8_weight_only, bnb_4bit]}\n"))
    swapped = keys(tiny_recipe_file("c", "quantize: {outputs: [bnb_4bit, int8_weight_only]}\n"))
    assert nodes(load_recipe(tiny_recipe_file("b", "quantize: {outputs: [int8_weight_only, bnb_4bit]}\n"))) == (
        "dataset", "prepared", "trained", "merged", "quantized", "quantized_bnb_4bit", "evaluation")
    # adding or reordering outputs never rebuilds the others: a key depends on its method and the merged model
    assert one["quantized"] == two["quantized"] == swapped["quantized_int8_weight_only"]
    assert two["quantized_bnb_4bit"] == swapped["quantized"] != two["quantized"]
    assert {one[s] for s in ("merged", "trained")} == {two[s] for s in ("merged", "trained")}
    # evaluation is keyed by what it evaluates: default models = base, merged, quantized (the first output)
    assert one["evaluation"] == two["evaluation"] != swapped["evaluation"]


def test_gates_are_not_part_of_the_evaluation_key(tiny_recipe_file) -> None:
    plain = keys(tiny_recipe_file("a"))["evaluation"]
    # (the extra `eval:` replaces the tiny recipe's, so it repeats max_samples and max_new_tokens)
    gated = keys(tiny_recipe_file("b", "eval: {max_samples: 8, max_new_tokens: 8, thresholds: {exact_match: 0.9}, "
                                       "max_drop: {loss: 0.1}, "
                                       "baseline: base, min_retention: {exact_match: 0.9}}\n"))["evaluation"]
    scored = keys(tiny_recipe_file("c", "eval: {max_samples: 8, max_new_tokens: 8, answer_regex: '(\\\\w+)'}\n")
                  )["evaluation"]
    assert plain == gated != scored


def commit(store: Store, stage: str, inputs: dict, tmp: Path, key: str | None = None) -> str:
    key = key or compute_key(inputs)
    work = store.workdir(stage, key)
    (work / "file.txt").write_text(stage)
    store.commit(stage, key, work, inputs, {"recipe": "r"})
    return key


def test_trace_follows_manifests_and_flags_gaps(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "store"))

    def inputs(stage: str, upstream: dict, external: dict | None = None, fields: dict | None = None) -> dict:
        return {"stage": stage, "code_version": f"code-{stage}", "fields": fields or {}, "upstream": upstream,
                "external": external or {}}

    d = commit(store, "dataset", inputs("dataset", {}, {"sources": [{"kind": "sha256", "version": "ab" * 32}]}),
               tmp_path)
    p = commit(store, "prepared", inputs("prepared", {"dataset": d}, {"tokenizer_files": {"tokenizer.json": "t"},
                                                                       "chat_template_sha256": "c"},
                                         {"base_model": "builtin:tiny-llama"}), tmp_path)
    t = commit(store, "trained", inputs("trained", {"prepared": p}, {"base_model_files": {"model.safetensors": "w"}}),
               tmp_path)
    m = commit(store, "merged", inputs("merged", {"trained": t}), tmp_path)
    q = commit(store, "quantized", inputs("quantized", {"merged": m}, fields={"quantize": {"method": "gguf_q8_0"}}),
               tmp_path)

    tree = trace(store, "quantized_gguf_q8_0", q)
    assert [(x.node, x.key) for x in tree.walk()] == [
        ("quantized_gguf_q8_0", q), ("merged", m), ("trained", t), ("prepared", p), ("dataset", d)]
    assert all(x.key_verified for x in tree.walk())
    found = origins(tree)
    assert found["data"] == [{"kind": "sha256", "version": "ab" * 32}]
    assert found["tokenizer_files"] == {"tokenizer.json": "t"} and found["chat_template_sha256"] == "c"
    assert found["base_model_files"] == {"model.safetensors": "w"} and found["recipe"] == "r"
    assert found["code_versions"]["merged"] == "code-merged" and found["missing"] == []
    text = format_trace(tree)
    assert text.splitlines()[0].startswith(f"quantized_gguf_q8_0  quantized/{q}")
    assert "method: gguf_q8_0" in text and "└─ dataset" in text

    # a manifest whose inputs do not hash to its key, and an upstream artifact that is gone
    bad = commit(store, "merged", inputs("merged", {"trained": "0" * 32}), tmp_path, key="f" * 32)
    tree = trace(store, "merged", bad)
    assert not tree.key_verified and tree.upstream[0].status == "miss"
    assert origins(tree)["missing"] == [f"trained/{'0' * 32} (miss)"]
    assert "KEY MISMATCH" in format_trace(tree) and "NOT COMMITTED" in format_trace(tree)
