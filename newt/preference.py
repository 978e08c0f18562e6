"""The `prepared` stage for preference and RL methods (`rl: dpo | kto | grpo`): rows → chat-templated text.

Row formats (TRL's column names):

| method | input columns | prepared columns |
|---|---|---|
| dpo | `prompt`, `chosen`, `rejected`; or TRL's implicit prompt (`chosen`/`rejected` conversations that share all turns but the last) | `prompt`, `chosen`, `rejected` |
| kto | `prompt`, `completion`, `label` (bool), or paired `prompt`/`chosen`/`rejected` (each pair → two rows) | `prompt`, `completion`, `label` |
| grpo | `prompt` and any extra columns the reward functions read (e.g. `answer`), or SFT-style `messages` whose last assistant turn becomes `answer` | `prompt`, extras |

A `prompt` that is a string is plain text and stays as it is; a list of messages is conversational and is rendered
with the recipe's chat template (`newt.templates.template_for`), with the generation prompt appended. Completions
(`chosen`, `rejected`, `completion`) are strings, an assistant message or a list of messages; in a conversation they
become the text the template renders after the prompt. Templates that do not render the prompt as a prefix of the
whole conversation are rejected with the row named (they would train on a prompt the model never sees).

The artifact has the SFT layout: `data/` (DatasetDict train/validation, `load_from_disk`) and `preference.json`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from newt.config import Recipe
from newt.stage import StageRun

NEEDS = {"dpo": ("prompt", "chosen", "rejected"), "kto": ("prompt", "completion", "label"), "grpo": ("prompt",)}
# Methods trained on DPO's paired rows (TRL's experimental ORPO and CPO trainers; SimPO is a CPO loss).
ROWS_OF = {"orpo": "dpo", "cpo": "dpo", "simpo": "dpo"}
NEEDS["reward"] = NEEDS["dpo"]  # issue 18: a reward model learns from the same pairs (newt/train/reward.py)


class PreferenceError(ValueError):
    pass


class Renderer:
    """Chat-templates prompts and completions with the recipe's template (only when rows are conversational)."""

    def __init__(self, recipe: Recipe, tokenizer: Any):
        self.recipe = recipe
        self.tokenizer = tokenizer
        self._template: str | None = None

    @property
    def template(self) -> str:
        if self._template is None:
            from newt import templates

            self._template = templates.template_for(self.recipe, self.tokenizer)
        return self._template

    def _render(self, messages: list[dict], *, generation_prompt: bool) -> str:
        return self.tokenizer.apply_chat_template(messages, chat_template=self.template, tokenize=False,
                                                  add_generation_prompt=generation_prompt)

    def prompt(self, value: Any, where: str) -> str:
        if isinstance(value, str):
            return value
        return self._render(_messages(value, where, "prompt"), generation_prompt=True)

    def completion(self, prompt: Any, value: Any, where: str, column: str) -> str:
        if isinstance(prompt, str):
            if not isinstance(value, str):
                raise PreferenceError(f"{where}: `prompt` is plain text but `{column}` is {type(value).__name__}; "
                                      f"give both as text or both as messages")
            return value
        if isinstance(value, str):
            value = [{"role": "assistant", "content": value}]
        elif isinstance(value, dict):
            value = [value]
        head = self.prompt(prompt, where)
        full = self._render(_messages(prompt, where, "prompt") + _messages(value, where, column),
                            generation_prompt=False)
        if not full.startswith(head):
            raise PreferenceError(
                f"{where}: the chat template does not render the prompt as a prefix of prompt + {column}, so the "
                f"completion cannot be cut out; use a prefix-stable template (chat_template) or plain-text rows"
            )
        return full[len(head):]


def _messages(value: Any, where: str, column: str) -> list[dict]:
    if isinstance(value, list) and value and all(isinstance(m, dict) and "role" in m and "content" in m
                                                 for m in value):
        return [{"role": str(m["role"]), "content": m["content"]} for m in value]
    raise PreferenceError(f"{where}: `{column}` must be text or a non-empty list of {{role, content}} messages, "
                          f"got {json.dumps(value, default=str)[:80]}")


def rows_for(method: str, row: dict[str, Any], render: Renderer, where: str) -> list[dict[str, Any]]:
    """One input row → the prepared row(s) of `method`; a clear error when the row has the wrong shape."""
    if method == "grpo" and "prompt" not in row and isinstance(row.get("messages"), list):
        msgs = row["messages"]
        if msgs and isinstance(msgs[-1], dict) and msgs[-1].get("role") == "assistant":
            row = {**{k: v for k, v in row.items() if k != "messages"}, "prompt": msgs[:-1],
                   "answer": msgs[-1].get("content")}
    if "prompt" not in row and isinstance(row.get("chosen"), list) and isinstance(row.get("rejected"), list):
        # TRL's implicit-prompt format: chosen and rejected are whole conversations sharing every turn but the last
        chosen, rejected = row["chosen"], row["rejected"]
        if len(chosen) < 2 or chosen[:-1] != rejected[:-1]:
            raise PreferenceError(f"{where}: no `prompt` column, and chosen/rejected do not share their turns before "
                                  f"the last, so the prompt cannot be inferred; add a `prompt` column")
        row = {**row, "prompt": chosen[:-1], "chosen": chosen[-1:], "rejected": rejected[-1:]}
    if method == "kto" and "completion" not in row and {"chosen", "rejected"} <= set(row):
        return [*rows_for(method, {"prompt": row["prompt"], "completion": row["chosen"], "label": True}, render, where),
                *rows_for(method, {"prompt": row["prompt"], "completion": row["rejected"], "label": False}, render,
                          where)] if "prompt" in row else _missing(method, row, where)
    if any(c not in row for c in NEEDS[method]):
        return _missing(method, row, where)
    prompt = row["prompt"]
    if method in ("dpo", "reward"):
        return [{"prompt": render.prompt(prompt, where),
                 "chosen": render.completion(prompt, row["chosen"], where, "chosen"),
                 "rejected": render.completion(prompt, row["rejected"], where, "rejected")}]
    if method == "kto":
        return [{"prompt": render.prompt(prompt, where),
                 "completion": render.completion(prompt, row["completion"], where, "completion"),
                 "label": bool(row["label"])}]
    extras = {k: v for k, v in row.items() if k != "prompt" and isinstance(v, (str, int, float, bool))}
    return [{"prompt": render.prompt(prompt, where), **extras}]


def _missing(method: str, row: dict[str, Any], where: str) -> list:
    have = ", ".join(sorted(row))
    looks_sft = "messages" in row and method != "grpo"
    raise PreferenceError(
        f"{where}: rl: {method} needs columns {', '.join(NEEDS[method])}"
        + (" (or chosen/rejected pairs)" if method == "kto" else "")
        + (" (or `messages` ending in an assistant turn)" if method == "grpo" else "")
        + f", found {have}."
        + (" These are SFT conversations: remove `rl` to fine-tune on them, or point datasets at preference data."
           if looks_sft else " Rename the columns or point datasets at data of this format.")
    )


def build_preference(run: StageRun) -> dict[str, Any]:
    import datasets

    from newt import models
    from newt.data import source_dir
    from newt.prepare_shards import held_out_count

    recipe = run.recipe
    method = ROWS_OF.get(recipe.rl, recipe.rl)
    assert method in NEEDS, method
    tokenizer = models.load_tokenizer(recipe.tokenizer_config or recipe.base_model,
                                      trust_remote_code=recipe.trust_remote_code)
    from newt.tokens import apply_tokens  # issue 16: special_tokens / tokens / eot_tokens

    apply_tokens(recipe, tokenizer)
    render = Renderer(recipe, tokenizer)
    groups: list[list[dict[str, Any]]] = []  # the rows made from one source row (a KTO pair makes two)
    for i, spec in enumerate(recipe.datasets):
        raw = datasets.load_from_disk(str(source_dir(run.upstream["dataset"], i)))
        for n, row in enumerate(raw):
            groups.append(rows_for(method, row, render, f"datasets[{i}] ({spec.path}) row {n}"))
        run.log(f"prepared: datasets[{i}] → {sum(map(len, groups))} {method} rows so far")
    out = [r for group in groups for r in group]
    if not out:
        raise PreferenceError(f"prepared: the datasets hold no rows for rl: {method}")
    # Shuffle and split by source row, so that both rows of a KTO pair land on the same side: evaluation pairs
    # desirable with undesirable completions of a prompt (newt/eval/preference.py), and a held-out prompt must not
    # be trained on. With one row per source row this is the permutation `Dataset.shuffle(seed)` gives the rows.
    order = datasets.Dataset.from_dict({"g": list(range(len(groups)))}).shuffle(seed=recipe.seed)["g"]
    n_val = held_out_count(len(out), recipe.val_set_size)
    if n_val >= len(out):
        raise PreferenceError(f"val_set_size {recipe.val_set_size} leaves no training rows out of {len(out)}; "
                              f"lower it")
    shuffled = [r for g in order for r in groups[g]]
    if n_val:  # whole groups, at least n_val rows
        held = 0
        for g in order:
            held += len(groups[g])
            if held >= n_val:
                break
        if held >= len(out):
            raise PreferenceError(f"val_set_size {recipe.val_set_size}: the rows of one source row stay together, "
                                  f"so holding out {n_val} rows leaves no training rows out of {len(out)}; lower it")
        n_val = held
    columns = list(out[0])
    ds = datasets.Dataset.from_dict({c: [r.get(c) for r in shuffled] for c in columns})
    splits = datasets.DatasetDict({"train": ds.select(range(n_val, len(ds)))})
    if n_val:  # datasets 5.2 saves an empty split that load_from_disk cannot read back (IndexError): leave it out
        splits["validation"] = ds.select(range(n_val))
    splits.save_to_disk(str(Path(run.workdir) / "data"))
    report = {"rl": method, "columns": columns, "rows": len(ds), "preview": out[:3]}
    (Path(run.workdir) / "preference.json").write_text(json.dumps(report, indent=2, ensure_ascii=False))
    return {"rl": method, "rows_train": len(splits["train"]), "rows_validation": n_val,
            "columns": columns, "preference_preview_markdown": _preview(out[:2])}


def _preview(rows: list[dict[str, Any]]) -> str:
    lines = []
    for r in rows:
        for k, v in r.items():
            lines.append(f"**{k}**: `{str(v)[:200]!r}`")
        lines.append("")
    return "\n".join(lines)
