"""Bad inputs, one table: each row feeds newt one mistake through the entry point a user would hit (loading the
recipe file, or materializing stages with `run_stage`) and asserts the error names *where* (file, row or key) and
says *what to do*.

A row is `Case(id, make, error, where, fix)`: `make(env)` runs the bad input and must raise `error`; `where` and
`fix` are regexes that must both be found in the message. Rows whose right answer is recovery rather than an error
(a corrupted manifest, a folder without its marker) are at the end of the file.
"""

from __future__ import annotations

import json
import re
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from newt import STAGES
from newt.cache import CacheError, Store
from newt.config import RecipeError, load_recipe
from newt.pipeline import plan, run_stage
from newt.synthetic import write_reversal_jsonl


@dataclass
class Env:
    """What a row needs: a scratch folder, the tiny dataset, a shared store and fixtures on demand."""

    tmp: Path
    data: Path
    store: Store
    request: pytest.FixtureRequest
    monkeypatch: pytest.MonkeyPatch

    def fixture(self, name: str) -> Any:
        return self.request.getfixturevalue(name)

    def write(self, name: str, text: str) -> Path:
        path = self.tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return path

    def jsonl(self, name: str, rows: list[Any]) -> Path:
        return self.write(name, "".join(json.dumps(r) + "\n" for r in rows))

    def recipe(self, text: str | None = None, **overrides: Any) -> Path:
        """A recipe file: `text` as is, or the tiny recipe with top-level `overrides` (`dataset` merges into
        datasets[0])."""
        if text is None:
            data = {
                "base_model": "builtin:tiny-llama", "datasets": [{"path": str(self.data)}], "sequence_len": 64,
                "val_set_size": 8, "micro_batch_size": 8, "max_steps": 2, "eval": {"max_samples": 8},
            }  # fmt: skip
            data["datasets"][0].update(overrides.pop("dataset", {}))
            data.update(overrides)
            text = yaml.safe_dump(data, sort_keys=False)
        return self.write(f"recipes/bad_{uuid.uuid4().hex[:8]}.yaml", text)

    def materialize(self, recipe_file: Path, upto: str = "prepared", store: Store | None = None) -> None:
        recipe = load_recipe(recipe_file)
        keys = plan(recipe, (upto,))
        for stage in STAGES[: STAGES.index(upto) + 1]:
            run_stage(recipe, stage, store or self.store, keys=keys, log=lambda _: None)


@dataclass
class Case:
    id: str
    make: Callable[[Env], Any]
    error: type[BaseException] | tuple[type[BaseException], ...]
    where: str  # regex: the file, row or key the message must name
    fix: str  # regex: what the message tells the user to do


def chat(*turns: tuple[str, str]) -> dict:
    return {"messages": [{"role": r, "content": c} for r, c in turns]}


def no_template_model(env: Env) -> Path:
    from newt.tiny import ensure_builtin

    folder = env.tmp / "no-template-model"
    shutil.copytree(ensure_builtin("tiny-llama"), folder)
    (folder / "chat_template.jinja").unlink()
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder


ALTERNATING = (
    "{% for m in messages %}{% if loop.index0 > 0 and m['role'] == messages[loop.index0 - 1]['role'] %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def s3_object(env: Env, server: str, rows: list[dict] | None = None) -> tuple[Any, str]:
    store = env.fixture(server)
    url = store.unique_prefix() + "/data.jsonl"
    store.put(url, "".join(json.dumps(r) + "\n" for r in rows or [chat(("user", "a"), ("assistant", "b"))]))
    return store, url


def bad_credentials(env: Env) -> None:
    store, url = s3_object(env, "s3_iam_server")
    env.monkeypatch.setenv("NEWT_BAD_SECRET", "wrong-secret-" + uuid.uuid4().hex)
    options = {**store.storage_options, "secret": "${env:NEWT_BAD_SECRET}"}
    env.materialize(env.recipe(dataset={"path": url, "storage_options": options}), "dataset")


def missing_object(env: Env) -> None:
    store = env.fixture("s3_server")
    url = store.unique_prefix() + "/nothing-here.jsonl"
    env.materialize(env.recipe(dataset={"path": url, "storage_options": store.storage_options}), "dataset")


def missing_bucket(env: Env) -> None:
    store = env.fixture("s3_server")
    url = f"s3://no-such-bucket-{uuid.uuid4().hex[:8]}/data.jsonl"
    env.materialize(env.recipe(dataset={"path": url, "storage_options": store.storage_options}), "dataset")


def unset_env_secret(env: Env) -> None:
    store = env.fixture("s3_server")
    env.monkeypatch.delenv("NEWT_NEVER_SET", raising=False)
    options = {**store.storage_options, "secret": "${env:NEWT_NEVER_SET}"}
    env.materialize(env.recipe(dataset={"path": store.url_prefix + "/x.jsonl", "storage_options": options}),
                    "dataset")  # fmt: skip


def hub_model_offline(env: Env) -> None:
    import huggingface_hub.constants

    env.monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    env.materialize(env.recipe(base_model="newt-test-org/no-such-model"), "prepared")


def store_root_is_a_file(env: Env) -> None:
    blocker = env.write("not-a-folder", "x")
    env.materialize(env.recipe(), "dataset", store=Store(str(blocker / "store")))


def store_root_unwritable(env: Env) -> None:
    # /proc refuses new folders even to root (a chmod 0500 folder does not stop root, who runs CI here).
    env.materialize(env.recipe(), "dataset", store=Store("/proc/newt-store-test"))


def quantize_unsupported_architecture(env: Env) -> None:
    from transformers import BertConfig, BertModel

    from newt.quantize import quantize

    folder = env.tmp / "bert"
    BertModel(BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32)).save_pretrained(folder)  # fmt: skip
    quantize(folder, env.tmp / "bert-q", "int8_weight_only")


def upstream_missing(env: Env) -> None:
    fresh = write_reversal_jsonl(env.tmp / "fresh.jsonl", n=5)  # new bytes: a dataset key nothing has built
    recipe = load_recipe(env.recipe(dataset={"path": str(fresh)}))
    run_stage(recipe, "prepared", env.store, log=lambda _: None)


FILE = r"bad_[0-9a-f]{8}\.yaml"
ROW = "datasets\\[0\\] \\(.*\\) row \\d+"

CASES = [
    # --- the recipe file ----------------------------------------------------------------------------------------
    Case("yaml-syntax", lambda e: load_recipe(e.recipe("base_model: x\ndatasets: [{path: a\n")), RecipeError,
         FILE + r".*line \d+, column \d+", "fix the YAML"),
    Case("yaml-unsafe-tag", lambda e: load_recipe(e.recipe("base_model: !!python/object/apply:os.getcwd []\n")),
         RecipeError, FILE + r".*line 1", "fix the YAML"),
    Case("duplicate-key", lambda e: load_recipe(e.recipe("base_model: x\ndatasets: [{path: p}]\nlearning_rate: 1\n"
                                                         "learning_rate: 2\n")),
         RecipeError, FILE + r".*line 4, column 1: key 'learning_rate' is given twice \(first on line 3\)", "keep one"),
    Case("unknown-key-suggestion", lambda e: load_recipe(e.recipe(learning_rat=0.1)), RecipeError,
         FILE + r".*learning_rat: unknown key", "did you mean 'learning_rate'"),
    Case("unknown-nested-key", lambda e: load_recipe(e.recipe(dataset={"feild_messages": "m"})), RecipeError,
         r"datasets\[0\]\.feild_messages: unknown key", "did you mean 'field_messages'"),
    Case("wrong-type", lambda e: load_recipe(e.recipe(micro_batch_size="many")), RecipeError,
         FILE + r".*micro_batch_size: got 'many'", "valid integer"),
    Case("out-of-range", lambda e: load_recipe(e.recipe(lora_dropout=2)), RecipeError,
         r"lora_dropout: got 2", "less than or equal to 1"),
    Case("missing-required-key", lambda e: load_recipe(e.recipe(f"datasets: [{{path: {e.data}}}]\n")),
         RecipeError, FILE + r".*base_model: required key is missing", "add it"),
    Case("missing-nested-key", lambda e: load_recipe(e.recipe("base_model: x\ndatasets: [{split: train}]\n")),
         RecipeError, r"datasets\[0\]\.path: required key is missing", "add it"),
    Case("bad-train-on-eos", lambda e: load_recipe(e.recipe(train_on_eos="turns")), RecipeError,
         r"train_on_eos: got 'turns'", "did you mean 'turn'"),
    Case("bad-train-on-eos-per-dataset", lambda e: load_recipe(e.recipe(dataset={"train_on_eos": "al"})),
         RecipeError, r"datasets\[0\]\.train_on_eos: got 'al'", "did you mean 'all'"),
    Case("bad-role-boundaries-entry",
         lambda e: load_recipe(e.recipe(role_boundaries=[{"role": "assistant", "strat": "<|im_start|>"}])),
         RecipeError, r"role_boundaries\[0\]\.strat: unknown key", "did you mean 'start'"),
    Case("eval-threshold-unknown-metric",
         lambda e: load_recipe(e.recipe(eval={"thresholds": {"exact_mach": 0.5}})), RecipeError,
         r"eval\.thresholds: unknown metric 'exact_mach'", "did you mean 'exact_match'"),
    Case("jinja-without-text", lambda e: load_recipe(e.recipe(chat_template="jinja")), RecipeError,
         r"chat_template", "set chat_template_jinja"),
    Case("recipe-file-missing", lambda e: load_recipe(e.tmp / "recipes" / "nope.yaml"), RecipeError,
         r"nope\.yaml", "expected a YAML recipe at"),
    Case("recipe-not-a-mapping", lambda e: load_recipe(e.recipe("- base_model: x\n")), RecipeError,
         FILE, "expected a mapping of recipe keys"),
    Case("recipe-bad-date-scalar", lambda e: load_recipe(e.recipe("base_model: x\ndatasets: [{path: p}]\n"
                                                                 "seed: 2001-02-30\n")),
         RecipeError, FILE, "quote the value"),
    # --- the data -----------------------------------------------------------------------------------------------
    Case("dataset-path-missing",
         lambda e: e.materialize(e.recipe(dataset={"path": str(e.tmp / "no" / "data.jsonl")}), "dataset"),
         ValueError, r"datasets\[0\]\.path: no file or folder at .*no/data\.jsonl", r"fix: check datasets\[0\]"),
    Case("bucket-missing", missing_bucket, ValueError, r"datasets\[0\]\.path: bucket or container 'no-such-bucket",
         "create it, or fix the bucket name"),
    Case("object-missing", missing_object, ValueError,
         r"datasets\[0\]\.path: no object or folder at s3://.*nothing-here\.jsonl", "check the key after the bucket"),
    Case("bad-credentials", bad_credentials, ValueError, r"datasets\[0\]\.path: access to s3://.* was refused",
         r"check the credentials in datasets\[0\]\.storage_options"),
    Case("unset-secret-variable", unset_env_secret, ValueError,
         r"datasets\[0\]\.storage_options\.secret: environment variable NEWT_NEVER_SET is not set",
         "export NEWT_NEVER_SET="),
    Case("empty-dataset", lambda e: e.materialize(e.recipe(dataset={"path": str(e.write("empty.jsonl", ""))}),
                                                  "dataset"),
         ValueError, r"datasets\[0\]\.path: the dataset is empty: .*empty\.jsonl", "at least one row"),
    Case("row-not-json",
         lambda e: e.materialize(e.recipe(dataset={"path": str(e.write(
             "broken.jsonl", json.dumps(chat(("user", "a"), ("assistant", "b"))) + "\n{\"messages\": [\n"))}),
             "dataset"),
         ValueError, r"broken\.jsonl line 2 is not valid JSON", "fix or delete that line"),
    Case("unknown-file-format",
         lambda e: e.materialize(e.recipe(dataset={"path": str(e.write("rows.txt", "{}\n"))}), "dataset"),
         ValueError, r"datasets\[0\]\.ds_type: cannot tell the format of rows\.txt", r"set datasets\[0\]\.ds_type"),
    Case("data-files-match-nothing",
         lambda e: e.materialize(e.recipe(dataset={"path": str(e.data.parent), "data_files": "*.parquet"}),
                                 "dataset"),
         ValueError, r"datasets\[0\]\.data_files: '\*\.parquet' matches no file", "check the pattern"),
    # --- preparing: conversations, templates, masks -------------------------------------------------------------
    Case("no-trainable-turn",
         lambda e: e.materialize(e.recipe(dataset={"path": str(e.jsonl("user-only.jsonl",
                                                                         [chat(("user", "hi"))] * 4))})),
         ValueError, r"datasets\[0\] row 0", "Fix the rows"),
    Case("consecutive-same-role-turns",
         lambda e: e.materialize(e.recipe(chat_template="jinja", chat_template_jinja=ALTERNATING, dataset={
             "path": str(e.jsonl("twice.jsonl", [chat(("user", "a"), ("assistant", "b"))] * 3
                                 + [chat(("user", "a"), ("user", "b"), ("assistant", "c"))]))})),
         ValueError, r"datasets\[0\] \(.*twice\.jsonl\) row 3: .*roles must alternate", "merge consecutive turns"),
    Case("unknown-role-to-train", lambda e: e.materialize(e.recipe(roles_to_train=["asistant"])), ValueError,
         r"roles_to_train names 'asistant'", "did you mean 'assistant'"),
    Case("marker-encodes-to-nothing",
         lambda e: e.materialize(e.recipe(role_boundaries=[{"role": "assistant", "start": "", "end": None}])),
         ValueError, r"role_boundaries\[0\]\.start", "non-empty marker text"),
    Case("end-marker-empty",
         lambda e: e.materialize(e.recipe(role_boundaries=[{"role": "assistant", "start": "<|im_start|>assistant",
                                                            "end": ""}])),
         ValueError, r"role_boundaries\[0\]\.end", "non-empty marker text"),
    Case("all-rows-too-long-with-drop",
         lambda e: e.materialize(e.recipe(sequence_len=8, excess_length_strategy="drop")), ValueError,
         r"sequence_len|too_long", "check sequence_len, excess_length_strategy"),
    Case("messages-column-missing",
         lambda e: e.materialize(e.recipe(dataset={"path": str(e.jsonl("conv.jsonl", [
             {"conversations": [{"role": "user", "content": "a"}]}] * 3))})),
         ValueError, r"datasets\[0\] \(.*conv\.jsonl\).*columns \['conversations'\]",
         r"point datasets\[0\]\.field_messages at the column"),
    Case("sharegpt-keys-without-mapping",
         lambda e: e.materialize(e.recipe(dataset={"path": str(e.jsonl("sharegpt.jsonl", [
             {"messages": [{"from": "human", "value": "a"}, {"from": "gpt", "value": "b"}]}] * 3))})),
         ValueError, ROW + ", message 0", r"set datasets\[0\]\.message_property_mappings"),
    Case("held-out-swallows-everything", lambda e: e.materialize(e.recipe(val_set_size=1000)), ValueError,
         r"val_set_size", "lower it"),
    Case("tokenizer-without-chat-template",
         lambda e: e.materialize(e.recipe(base_model=str(no_template_model(e)))), ValueError,
         r"no-template-model.* has no chat template", "set chat_template"),
    Case("unknown-named-template", lambda e: e.materialize(e.recipe(chat_template="qwen2_6")), ValueError,
         r"chat_template: unknown template 'qwen2_6'", "did you mean"),
    Case("template-file-missing",
         lambda e: e.materialize(e.recipe(chat_template="jinja", chat_template_jinja=str(e.tmp / "t.jinja"))),
         ValueError, r"chat_template_jinja: file '.*t\.jinja' not found", "give the template text"),
    # --- preference and RL methods -------------------------------------------------------------------------------
    Case("dpo-with-sft-rows", lambda e: e.materialize(e.recipe(rl="dpo")), ValueError,
         r"datasets\[0\] \(.*reversal\.jsonl\) row 0: rl: dpo needs columns prompt, chosen, rejected",
         "remove `rl` to fine-tune on them, or point datasets at preference data"),
    Case("grpo-reward-not-importable",
         lambda e: e.materialize(e.recipe(rl="grpo", trl={"reward_funcs": ["no_such_pkg.rewards.score"]}),
                                 "trained"),
         ValueError, r"trl\.reward_funcs: cannot import 'no_such_pkg\.rewards'", "make it importable"),
    Case("grpo-reward-file-missing",
         lambda e: e.materialize(e.recipe(rl="grpo", trl={"reward_funcs": [str(e.tmp / "rewards.py") + ":score"]}),
                                 "trained"),
         ValueError, r"trl\.reward_funcs: file '.*rewards\.py' not found", "give an existing .py file"),
    # --- models, quantization, the store ------------------------------------------------------------------------
    Case("base-model-path-missing",
         lambda e: e.materialize(e.recipe(base_model=str(e.tmp / "models" / "nope"))), FileNotFoundError,
         r"base_model '.*models/nope'", "Fix the name|point base_model"),
    Case("base-model-folder-not-a-model",
         lambda e: e.materialize(e.recipe(base_model=str(e.write("empty-model/README.md", "").parent))),
         FileNotFoundError, r"base_model '.*empty-model'", "config.json"),
    Case("base-model-hub-name-offline", hub_model_offline, FileNotFoundError,
         r"base_model 'newt-test-org/no-such-model'", "download the model and point base_model at its folder"),
    Case("quantize-unsupported-architecture", quantize_unsupported_architecture, ValueError,
         r"'int8_weight_only' does not support architecture 'BertModel'", "ForCausalLM"),
    Case("store-root-is-a-file", store_root_is_a_file, CacheError, r"not-a-folder/store",
         "writable folder"),
    Case("store-root-unwritable", store_root_unwritable, CacheError, r"/proc/newt-store-test", "writable folder"),
    Case("upstream-not-materialized", upstream_missing, CacheError, r"no committed dataset artifact with key",
         "materialize the dataset stage first"),
]


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Store]:
    root = tmp_path_factory.mktemp("bad-inputs")
    return write_reversal_jsonl(root / "data" / "reversal.jsonl", n=24), Store(str(root / "store"))


@pytest.fixture
def env(shared, tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Env:
    data, store = shared
    return Env(tmp_path, data, store, request, monkeypatch)


def test_there_are_at_least_30_bad_inputs() -> None:
    assert len(CASES) >= 30 and len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_error_names_where_and_what_to_do(case: Case, env: Env) -> None:
    with pytest.raises(case.error) as caught:
        case.make(env)
    message = str(caught.value)
    assert re.search(case.where, message, re.DOTALL), f"the error does not say where ({case.where!r}):\n{message}"
    assert re.search(case.fix, message, re.DOTALL), f"the error does not say what to do ({case.fix!r}):\n{message}"
    assert "Traceback" not in message


# --- inputs the store recovers from: it says so, rebuilds, and never serves the damaged folder -----------------


def _committed_dataset(env: Env) -> tuple[Any, str, Path]:
    env.store = Store(str(env.tmp / "own-store"))
    recipe = load_recipe(env.recipe())
    outcome = run_stage(recipe, "dataset", env.store, log=lambda _: None)
    return recipe, outcome.key, Path(outcome.uri)


def test_corrupted_manifest_is_reported_and_rebuilt(env: Env) -> None:
    recipe, key, folder = _committed_dataset(env)
    (folder / "manifest.json").write_text('{"stage": "dataset", "files": [')
    assert env.store.lookup("dataset", key).status == "corrupt"
    with pytest.raises(CacheError, match=r"no committed dataset artifact .*\(manifest\.json does not match"
                                         r".*materialize the dataset stage first"):
        env.store.local_path("dataset", key)
    logs: list[str] = []
    outcome = run_stage(recipe, "dataset", env.store, log=logs.append)
    assert outcome.cache == "miss"
    assert any(re.search(rf"dataset: artifact .*{key} is corrupt \(manifest\.json .*\); rebuilding it", m)
               for m in logs), logs  # fmt: skip
    assert env.store.lookup("dataset", key, verify_hashes=True).hit


def test_folder_without_marker_does_not_exist_and_is_rebuilt(env: Env) -> None:
    recipe, key, folder = _committed_dataset(env)
    (folder / "_COMMITTED").unlink()
    (folder / "stale-file-from-a-crash").write_text("x")
    assert env.store.lookup("dataset", key).status == "miss"
    with pytest.raises(CacheError, match="no commit marker"):
        env.store.local_path("dataset", key)
    outcome = run_stage(recipe, "dataset", env.store, log=lambda _: None)
    assert outcome.cache == "miss"
    assert env.store.lookup("dataset", key, verify_hashes=True).hit
    assert not (folder / "stale-file-from-a-crash").exists(), "the uncommitted leftover was replaced, not merged"


# --- the same mistakes through the command line: every verb shows newt's message, never a traceback -----------
#
# A row is `Verb(id, argv, where)`: `argv(env)` writes the bad input and returns the command line after `newt`;
# the verb must exit non-zero, print an `error:` (or `✗ <stage> failed:`) line matching `where` (the file, row
# or key) and no traceback; `--debug` then shows the traceback (checked once, at the end).


@dataclass
class Verb:
    id: str
    argv: Callable[[Env], list[str]]
    where: str


MALFORMED = "".join(json.dumps(chat(("user", "a"), ("assistant", "b"))) + "\n" for _ in range(20)) + "{oops\n"


def malformed(env: Env) -> str:
    """A JSONL file whose line 21 is broken: newt says `line 21` (pyarrow alone says `row 20`, no file)."""
    return str(env.write("malformed.jsonl", MALFORMED))


def data_recipe(env: Env, rows: list[Any], **overrides: Any) -> str:
    return str(env.recipe(dataset={"path": str(env.jsonl(f"d_{uuid.uuid4().hex[:6]}.jsonl", rows))}, **overrides))


def s3_refused(env: Env) -> str:
    store, url = s3_object(env, "s3_iam_server")
    env.monkeypatch.setenv("NEWT_BAD_SECRET", "wrong-secret-" + uuid.uuid4().hex)
    return str(env.recipe(dataset={"path": url, "storage_options": {**store.storage_options,
                                                                     "secret": "${env:NEWT_BAD_SECRET}"}}))


def offline_hub_model(env: Env) -> str:
    import huggingface_hub.constants

    env.monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    return str(env.recipe(base_model="newt-test-org/no-such-model"))


def ui_folder_with_bad_recipe(env: Env) -> list[str]:
    folder = env.tmp / "ui-recipes"
    folder.mkdir()
    (folder / "good.yaml").write_text(env.recipe().read_text())
    (folder / "typo.yaml").write_text(env.recipe(learning_rat=0.1).read_text())
    return ["ui", "--recipes", str(folder), "--port", "0"]


VERBS = [
    # validate: the schema, then everything short of training (newt/validate.py)
    Verb("validate-yaml-syntax", lambda e: ["validate", str(e.recipe("base_model: x\ndatasets: [{path: a\n"))],
         FILE + r".*line \d+, column \d+"),
    Verb("validate-unknown-key", lambda e: ["validate", str(e.recipe(learning_rat=0.1))],
         FILE + r".*learning_rat: unknown key.*did you mean 'learning_rate'"),
    Verb("validate-recipe-missing", lambda e: ["validate", str(e.tmp / "nope.yaml")], r"nope\.yaml"),
    Verb("validate-data-file-missing",
         lambda e: ["validate", str(e.recipe(dataset={"path": str(e.tmp / "no" / "data.jsonl")}))],
         r"datasets\[0\]\.path: no file or folder at .*no/data\.jsonl"),
    Verb("validate-row-not-json", lambda e: ["validate", str(e.recipe(dataset={"path": str(e.write(
        "first-bad.jsonl", "{\"messages\": [\n"))}))], r"datasets\[0\]\.path: .*first-bad\.jsonl line 1 is not valid JSON"),
    Verb("validate-roles-to-train-typo", lambda e: ["validate", str(e.recipe(roles_to_train=["asistant"]))],
         r"roles_to_train names 'asistant' \(did you mean 'assistant'\?\)"),
    Verb("validate-template-name", lambda e: ["validate", str(e.recipe(chat_template="chatml_v9"))],
         r"chat_template: unknown template 'chatml_v9'"),
    Verb("validate-template-file-missing",
         lambda e: ["validate", str(e.recipe(chat_template="jinja", chat_template_jinja=str(e.tmp / "t.jinja")))],
         r"chat_template_jinja: file '.*t\.jinja' not found"),
    Verb("validate-unmapped-role", lambda e: ["validate", data_recipe(e, [chat(("customer", "a"), ("agent", "b"))])],
         r"datasets\[0\] \(.*\) row 0, message 0: role 'customer' .* e\.g\. \{user: \[customer\]\}"),
    Verb("validate-messages-column-missing",
         lambda e: ["validate", data_recipe(e, [{"conversations": [{"role": "user", "content": "a"}]}])],
         r"datasets\[0\] \(.*\): type 'chat_template' reads column\(s\) \['messages'\]"),
    # plan: keys need content versions and model files
    Verb("plan-data-file-missing",
         lambda e: ["plan", str(e.recipe(dataset={"path": str(e.tmp / "gone.jsonl")}))],
         r"datasets\[0\]\.path: no file or folder at .*gone\.jsonl"),
    Verb("plan-base-model-folder-missing", lambda e: ["plan", str(e.recipe(base_model=str(e.tmp / "models/x")))],
         r"base_model '.*models/x'"),
    Verb("plan-hub-model-offline", lambda e: ["plan", offline_hub_model(e)], r"base_model 'newt-test-org/no-such-model'"),
    Verb("plan-template-name", lambda e: ["plan", str(e.recipe(chat_template="qwen2_6"))],
         r"chat_template: unknown template 'qwen2_6'"),
    # preview: builds dataset and prepared
    Verb("preview-malformed-line-21", lambda e: ["preview", str(e.recipe(dataset={"path": malformed(e)}))],
         r"malformed\.jsonl line 21 is not valid JSON"),
    Verb("preview-no-trainable-turn",
         lambda e: ["preview", data_recipe(e, [chat(("user", "hi"))] * 4)], r"first datasets\[0\] row 0"),
    Verb("preview-held-out-too-big", lambda e: ["preview", str(e.recipe(val_set_size=1000))], r"val_set_size"),
    # run: the asset's failure, as newt's outermost message (not pyarrow's or botocore's)
    Verb("run-malformed-line-21", lambda e: ["run", str(e.recipe(dataset={"path": malformed(e)})),
                                             "--stages", "dataset"],
         r"✗ dataset failed: datasets\[0\]\.path: .*malformed\.jsonl line 21 is not valid JSON.*fix:"),
    Verb("run-s3-refused", lambda e: ["run", s3_refused(e), "--stages", "dataset"],
         r"✗ dataset failed: datasets\[0\]\.path: access to s3://.* was refused"),
    Verb("run-unknown-template", lambda e: ["run", str(e.recipe(chat_template="qwen2_6")), "--stages",
                                            "dataset,prepared"], r"chat_template: unknown template 'qwen2_6'"),
    Verb("run-unknown-stage", lambda e: ["run", str(e.recipe()), "--stages", "dataset,trainde"],
         r"unknown stage\(s\) trainde"),
    Verb("run-recipe-typo", lambda e: ["run", str(e.recipe(micro_batch_size="many"))],
         FILE + r".*micro_batch_size: got 'many'"),
    # ui: the recipes folder is loaded before the UI starts
    Verb("ui-bad-recipe-in-folder", ui_folder_with_bad_recipe, r"typo\.yaml.*learning_rat: unknown key"),
    Verb("gc-no-recipes", lambda e: ["gc", str(e.tmp / "empty-folder")], r"empty-folder"),
]


def test_there_are_at_least_20_bad_inputs_through_the_verbs() -> None:
    assert len(VERBS) >= 20 and len({v.id for v in VERBS}) == len(VERBS)
    assert {v.id.split("-")[0] for v in VERBS} >= {"validate", "plan", "preview", "run", "ui"}


def _cli(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str]:
    from newt.cli import main

    rc = main(argv)
    out = capsys.readouterr()
    return rc, out.out + out.err


@pytest.mark.parametrize("verb", VERBS, ids=[v.id for v in VERBS])
def test_each_verb_shows_newts_message_and_no_traceback(verb: Verb, env: Env, capsys, monkeypatch) -> None:
    monkeypatch.setenv("NEWT_STORE", str(env.tmp / "cli-store"))
    monkeypatch.delenv("DAGSTER_HOME", raising=False)  # an ephemeral instance for `newt run`
    (env.tmp / "empty-folder").mkdir(exist_ok=True)
    rc, text = _cli(verb.argv(env), capsys)
    assert rc != 0, text
    assert re.search(verb.where, text, re.DOTALL), f"the message does not say where ({verb.where!r}):\n{text}"
    assert "Traceback" not in text, text


def test_debug_shows_the_traceback(env: Env, capsys) -> None:
    recipe = str(env.recipe(dataset={"path": str(env.tmp / "gone.jsonl")}))
    rc, text = _cli(["plan", recipe, "--debug"], capsys)
    assert rc == 1 and "Traceback (most recent call last)" in text and "SourceError" in text
