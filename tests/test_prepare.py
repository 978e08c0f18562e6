"""The `prepared` stage end to end on tiny data: standalone artifact, labels from the masking engine, merge/shuffle/
split/dedup, long rows, zero-supervision rows, the mask audit gate, and `dataset_num_proc` invariance."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest

from newt import prepare, prepare_rows, prepare_shards
from newt.cache import Store
from newt.config import parse_recipe
from newt.masking import render_and_mask
from newt.models import load_tokenizer
from newt.pipeline import plan, run_stage
from newt.synthetic import reversal_rows

IGNORE = -100


def write_rows(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def prepared(tmp_path: Path, sources: list[Path], extra: str = "", store: str = "store", specs: str = ""):
    entries = "".join(f"  - path: {p}\n{specs}" for p in sources)
    recipe = parse_recipe(f"base_model: builtin:tiny-llama\nsequence_len: 64\ndatasets:\n{entries}{extra}")
    st = Store(str(tmp_path / store))
    keys = plan(recipe, ("prepared",))
    run_stage(recipe, "dataset", st, keys=keys, log=lambda m: None)
    out = run_stage(recipe, "prepared", st, keys=keys, log=lambda m: None)
    return out, datasets.load_from_disk(str(Path(out.uri) / "data"))


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return write_rows(tmp_path / "d" / "rev.jsonl", reversal_rows(40))


def test_artifact_loads_standalone_and_labels_equal_the_masking_engine(tmp_path: Path, data: Path) -> None:
    out, dd = prepared(tmp_path, [data], "val_set_size: 4\n")
    assert set(dd) == {"train", "validation"} and (len(dd["train"]), len(dd["validation"])) == (36, 4)
    assert dd["train"].column_names == ["input_ids", "labels", "messages", "source"]
    tok = load_tokenizer("builtin:tiny-llama")
    for row in list(dd["train"]) + list(dd["validation"]):
        ref = render_and_mask(json.loads(row["messages"]), tok, chat_template=tok.chat_template)
        assert row["input_ids"] == ref["input_ids"] and row["labels"] == ref["labels"]
    report = json.loads((Path(out.uri) / "masking.json").read_text())
    assert report["counts"]["rows_in"] == 40 and report["audit"]["failure_rate"] == 0.0
    assert report["audit"]["sampled_rows"] == 40 and report["audit"]["rows_total"] == 40
    assert out.metadata["rows_in"] == 40 and "rows_rows_in" not in out.metadata
    assert report["supervised_tokens_per_role"]["assistant"] == report["supervised_tokens"] > 0
    assert report["supervised_tokens_per_role"]["user"] == 0
    assert "~~`" in out.metadata["mask_preview"] and out.metadata["audit"]["failure_rate"] == 0.0


def test_several_datasets_keep_their_own_masking_knobs(tmp_path: Path) -> None:
    a = write_rows(tmp_path / "d" / "a.jsonl", reversal_rows(6, seed=1))
    b = write_rows(tmp_path / "d" / "b.jsonl", reversal_rows(6, seed=2))
    recipe = (f"base_model: builtin:tiny-llama\nsequence_len: 64\nshuffle_merged_datasets: false\ndatasets:\n"
              f"  - path: {a}\n  - path: {b}\n    roles_to_train: [user]\n")
    st = Store(str(tmp_path / "store"))
    r = parse_recipe(recipe)
    keys = plan(r, ("prepared",))
    run_stage(r, "dataset", st, keys=keys, log=lambda m: None)
    dd = datasets.load_from_disk(str(Path(run_stage(r, "prepared", st, keys=keys, log=lambda m: None).uri) / "data"))
    tok = load_tokenizer("builtin:tiny-llama")
    rows = dd["train"]
    assert rows["source"] == [0] * 6 + [1] * 6  # no shuffle: the order of `datasets`
    for row in rows:
        conv = json.loads(row["messages"])
        trained = tok.decode([t for t, lab in zip(row["input_ids"], row["labels"]) if lab != IGNORE])
        want = conv[1]["content"] if row["source"] == 0 else conv[0]["content"]
        assert trained.startswith(want)


def test_shuffle_is_deterministic_by_seed(tmp_path: Path, data: Path) -> None:
    order = lambda dd: [json.loads(m)[0]["content"] for m in dd["train"]["messages"]]
    a = order(prepared(tmp_path, [data], "seed: 1\n", store="s1")[1])
    b = order(prepared(tmp_path, [data], "seed: 1\n", store="s2")[1])
    c = order(prepared(tmp_path, [data], "seed: 2\n", store="s3")[1])
    plain = order(prepared(tmp_path, [data], "shuffle_merged_datasets: false\n", store="s4")[1])
    assert a == b and a != c and sorted(a) == sorted(c)
    assert plain == [r["messages"][0]["content"] for r in reversal_rows(40)]


def test_val_set_size_share_and_count(tmp_path: Path, data: Path) -> None:
    _, dd = prepared(tmp_path, [data], "val_set_size: 0.25\n", store="a")
    assert (len(dd["train"]), len(dd["validation"])) == (30, 10)
    _, dd = prepared(tmp_path, [data], "val_set_size: 3\n", store="b")
    assert (len(dd["train"]), len(dd["validation"])) == (37, 3)


def test_exact_deduplication(tmp_path: Path) -> None:
    rows = reversal_rows(10)
    path = write_rows(tmp_path / "d" / "dup.jsonl", rows + rows[:4])
    out, dd = prepared(tmp_path, [path], store="a")
    assert len(dd["train"]) == 14 and out.metadata["rows_duplicates"] == 0
    out, dd = prepared(tmp_path, [path], "dataset_exact_deduplication: true\n", store="b")
    assert len(dd["train"]) == 10 and out.metadata["rows_duplicates"] == 4


def long_rows() -> list[dict]:
    short = reversal_rows(6)
    long_answer = {"messages": [{"role": "user", "content": "abc"}, {"role": "assistant", "content": "x" * 200}]}
    long_question = {"messages": [{"role": "user", "content": "y" * 200}, {"role": "assistant", "content": "ok"}]}
    return short + [long_answer, long_question]


def test_excess_length_truncate_and_drop_are_counted(tmp_path: Path) -> None:
    path = write_rows(tmp_path / "d" / "long.jsonl", long_rows())
    out, dd = prepared(tmp_path, [path], store="a")  # truncate (default)
    m = out.metadata
    assert (m["rows_truncated"], m["rows_too_long"], m["rows_zero_supervision_after_truncation"]) == (2, 0, 1)
    assert len(dd["train"]) == 7 and max(len(x) for x in dd["train"]["input_ids"]) == 64
    assert all(any(x != IGNORE for x in lab) for lab in dd["train"]["labels"])  # never a zero-supervision row
    out, dd = prepared(tmp_path, [path], "excess_length_strategy: drop\n", store="b")
    assert (out.metadata["rows_too_long"], out.metadata["rows_truncated"], len(dd["train"])) == (2, 0, 6)


def test_zero_supervision_as_written_fails_unless_allowed(tmp_path: Path) -> None:
    no_answer = {"messages": [{"role": "user", "content": "abc"}]}
    path = write_rows(tmp_path / "d" / "z.jsonl", reversal_rows(5) + [no_answer])
    with pytest.raises(prepare.PrepareError, match=r"1 rows have no supervised token as written.*datasets\[0\] row 5"
                                                   r".*allow_zero_supervision_rows"):
        prepared(tmp_path, [path], store="a")
    out, dd = prepared(tmp_path, [path], "allow_zero_supervision_rows: true\n", store="b")
    assert out.metadata["rows_zero_supervision_as_written"] == 1 and len(dd["train"]) == 5


UPPER = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\\n{{ m['content'] | upper }}<|im_end|>\\n"
         "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\\n{% endif %}")


def test_mask_audit_gate(tmp_path: Path, data: Path) -> None:
    # A template that rewrites the content: what is supervised is not the assistant's text.
    extra = f'chat_template: jinja\nchat_template_jinja: "{UPPER}"\n'
    with pytest.raises(prepare.PrepareError, match="mask audit: 40 of 40 sampled rows"):
        prepared(tmp_path, [data], extra, store="a")
    out, _ = prepared(tmp_path, [data], extra + "mask_audit_max_failure_rate: 1.0\n", store="b")
    assert out.metadata["audit"]["failure_rate"] == 1.0


def test_dataset_num_proc_does_not_change_the_output(tmp_path: Path, data: Path, monkeypatch) -> None:
    monkeypatch.setattr(prepare_rows, "BATCH", 8)  # 5 batches, so two processes really split the work
    one, _ = prepared(tmp_path, [data], "dataset_num_proc: 1\nval_set_size: 4\n", store="a")
    two, _ = prepared(tmp_path, [data], "dataset_num_proc: 2\nval_set_size: 4\n", store="b")
    assert one.key == two.key  # not in the key ...
    files = lambda o: {p.relative_to(o.uri).as_posix(): p.read_bytes()
                       for p in sorted(Path(o.uri).rglob("*")) if p.is_file() and p.name != "manifest.json"
                       and p.name != "_COMMITTED"}
    assert files(one) == files(two)  # ... because the bytes are the same


def test_sample_packing_packs_train_only(tmp_path: Path, data: Path) -> None:
    out, dd = prepared(tmp_path, [data], "sample_packing: true\nval_set_size: 4\n")
    train = dd["train"]
    assert train.column_names == ["input_ids", "labels", "seq_lengths"]
    assert sum(len(s) for s in train["seq_lengths"]) == 36 and len(train) < 36
    assert all(sum(s) == len(ids) <= 64 for s, ids in zip(train["seq_lengths"], train["input_ids"]))
    assert dd["validation"].column_names == ["input_ids", "labels", "messages", "source"]
    assert 0.5 < out.metadata["packing"]["fill"] <= 1.0


def test_windows_bound_each_map_and_shard_without_changing_the_rows(tmp_path: Path, data: Path, monkeypatch) -> None:
    # Each WINDOW of rows is mapped and written through a fresh memory map (the 2 GB scale run's memory bound).
    whole, dd_whole = prepared(tmp_path, [data], "val_set_size: 4\n", store="a")
    monkeypatch.setattr(prepare_rows, "WINDOW", 16)  # 40 rows: 3 map windows; 36 train rows: 3 shards
    monkeypatch.setattr(prepare_shards, "WINDOW", 16)
    windowed, dd = prepared(tmp_path, [data], "val_set_size: 4\n", store="b")
    assert whole.key == windowed.key
    for split in ("train", "validation"):
        assert dd[split].to_dict() == dd_whole[split].to_dict()
    shards = sorted(p.name for p in (Path(windowed.uri) / "data" / "train").glob("*.arrow"))
    assert shards == ["data-00000-of-00003.arrow", "data-00001-of-00003.arrow", "data-00002-of-00003.arrow"]


def test_an_error_in_a_later_window_names_its_source_row(tmp_path: Path, monkeypatch) -> None:
    rows = reversal_rows(40)
    rows[37]["messages"][1]["role"] = "narrator"  # in the third window of 16
    monkeypatch.setattr(prepare_rows, "WINDOW", 16)
    with pytest.raises(ValueError, match=r"datasets\[0\] \(.*rev\.jsonl\) row 37, message 1: role 'narrator'"):
        prepared(tmp_path, [write_rows(tmp_path / "d" / "rev.jsonl", rows)], "dataset_num_proc: 1\n")
