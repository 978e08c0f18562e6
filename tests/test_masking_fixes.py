"""Issue 15's masking fixes, each on a real tokenizer or the family's real template:

- `train_on_inputs: true` without role boundaries trains every non-pad, non-media token (the seed's fallback);
- GLM-4-style templates, whose assistant turn is closed by the next turn's opening marker that is a stop token:
  `train_on_eos` trains that token, and the last turn gets it appended;
- several end markers per boundary (Llama 3.1 `<|eom_id|>`);
- LLaVA-1.5's plain-text `USER:` / `ASSISTANT:` markers are built in;
- images referenced by path are part of the `prepared` key (replacing one in place is noticed).
"""

from __future__ import annotations

import json
from pathlib import Path

import masking_fixtures as F
import numpy as np
import pytest
from PIL import Image

from newt.masking import IGNORE_INDEX, Masker, boundaries_for, detect_family, render_and_mask

X = IGNORE_INDEX
CONV = [
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello there"},
    {"role": "user", "content": "Again"},
    {"role": "assistant", "content": "Sure thing"},
]


def runs(labels: list[int]) -> list[list[int]]:
    out, cur = [], []
    for t in labels:
        if t == X:
            out, cur = (out + [cur] if cur else out), []
        else:
            cur.append(t)
    return out + ([cur] if cur else [])


def test_train_on_inputs_without_boundaries_trains_everything_but_pad():
    # A template that writes the messages with no role markers at all (plain continued text): nothing to derive.
    tok = F.qwen25()
    plain = "{% for m in messages %}{{ m['content'] }}\n{% endfor %}"
    assert boundaries_for(tok, plain) == []
    out = Masker(tok, chat_template=plain, train_on_inputs=True)([CONV])
    (ids,), (labels,) = out["input_ids"], out["labels"]
    assert labels == ids and tok.pad_token_id not in ids
    padded = Masker(tok, chat_template=plain, train_on_inputs=True).label([ids + [tok.pad_token_id]])[0]
    assert padded == ids + [X]


# --- GLM-4 / GLM-4.5: the assistant turn is closed by the next <|user|>, one of the model's stop tokens ----------
GLM_TOKENS = ["[gMASK]", "<sop>", "<|system|>", "<|user|>", "<|assistant|>", "<|observation|>", "<think>", "</think>"]


@pytest.fixture(scope="module")
def glm(tmp_path_factory):
    """Faithful GLM-4.5 tokenizer (its special tokens on Qwen2.5's vocabulary) with TRL's glm4moe template (from
    zai-org/GLM-4.5), saved beside GLM's generation_config.json, whose eos_token_id lists <|endoftext|>, <|user|>
    and <|observation|> (zai-org/GLM-4.5 generation_config.json)."""
    from transformers import AutoTokenizer

    tok = F._qwen_with(GLM_TOKENS, F.trl_template("glm4moe"), eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    folder = tmp_path_factory.mktemp("glm")
    tok.save_pretrained(folder)
    stops = [tok.convert_tokens_to_ids(t) for t in ("<|endoftext|>", "<|user|>", "<|observation|>")]
    (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": stops}))
    return AutoTokenizer.from_pretrained(folder)


def test_glm_trains_the_next_user_marker_after_each_assistant_turn(glm):
    user = glm.convert_tokens_to_ids("<|user|>")
    # Trained from right after <|assistant|>: the template's empty think block is part of what the model generates
    # (its generation prompt is <|assistant|> alone), as in GLM's own fine-tuning.
    hello, sure = F.ids(glm, "\n<think></think>\nHello there"), F.ids(glm, "\n<think></think>\nSure thing")
    assert {b.end_is_stop for b in Masker(glm).boundaries if b.role == "assistant"} == {True}
    out = Masker(glm)([CONV])
    ids, labels = out["input_ids"][0], out["labels"][0]
    # The template renders nothing after the last answer: the stop token is appended, and trained like the others.
    assert ids[-1] == user and ids[-1 - len(sure):-1] == sure
    assert runs(labels) == [hello + [user], sure + [user]]
    assert glm.decode(ids[:3]) == "[gMASK]<sop><|user|>"
    assert runs(Masker(glm, train_on_eos="none")([CONV])["labels"][0]) == [hello, sure]
    assert runs(Masker(glm, train_on_eos="last")([CONV])["labels"][0]) == [hello, sure + [user]]
    assert runs(Masker(glm, train_on_eos="all")([CONV])["labels"][0]) == [hello + [user], sure + [user]]
    # user turns end where <|assistant|> starts: not a stop token, never trained
    assert runs(Masker(glm, roles_to_train=["user"])([CONV])["labels"][0]) == [F.ids(glm, "Hi"), F.ids(glm, "Again")]


def test_glm_audit_accepts_the_trained_stop_token(glm):
    from newt.masking import audit, audit_problems

    masker = Masker(glm)
    out = masker([CONV])
    report = audit([CONV], out["input_ids"], out["labels"], glm, masker)
    assert audit_problems(report) == []


# --- several end markers: Llama 3.1's <|eom_id|> ----------------------------------------------------------------
def test_llama31_assistant_turn_ends_at_eot_or_eom():
    tok = F.llama3("llama3_1")
    (assistant,) = [b for b in boundaries_for(tok) if b.role == "assistant" and b.start[-1] == 271]
    assert assistant.end == (128009,) and assistant.more_ends == ((128008,),)
    # A built-in tool call (builtin_tools set) ends its turn with <|eom_id|>; the tool's answer and the next
    # assistant turn follow.
    conv = [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"type": "function", "function": {"name": "brave_search", "arguments": {"query": "weather"}}}]},
        {"role": "ipython", "content": "sunny"},
        {"role": "assistant", "content": "Sunny."},
    ]
    ids = tok.apply_chat_template(conv, builtin_tools=["brave_search"], tokenize=True, date_string="26 Jul 2024")
    ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids)
    assert ids.count(128008) == 1
    labels = Masker(tok, template_kwargs={"builtin_tools": ["brave_search"]}).label([ids])[0]
    call = F.ids(tok, '<|python_tag|>brave_search.call(query="weather")')
    assert runs(labels) == [call + [128008], F.ids(tok, "Sunny.") + [128009]]


# --- LLaVA-1.5: plain-text USER: / ASSISTANT: markers ------------------------------------------------------------
# LLaVA-1.5's chat template as llava-hf/llava-1.5-7b-hf publishes it ("USER: <image>\n<prompt> ASSISTANT:", the
# model card's prompt format); the project carries no copy of the file, so it is written out here for the test.
LLAVA15 = (
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}{% endif %}"
    "{% if message['content'] is string %}{{ message['content'] + ' ' }}{% else %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] + ' ' }}"
    "{% endfor %}{% endif %}{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)


@pytest.mark.parametrize("tok", [F.qwen25, lambda: F.mistral("v1")], ids=["byte-level-bpe", "sentencepiece"])
def test_llava15_text_markers_are_built_in(tok):
    tok = tok()
    assert detect_family(tok, LLAVA15).name == "llava"
    out = render_and_mask(CONV, tok, chat_template=LLAVA15)
    trained = [tok.decode(r).strip() for r in runs(out["labels"])]
    assert trained == ["Hello there", "Sure thing"]
    users = [tok.decode(r).strip() for r in runs(render_and_mask(CONV, tok, chat_template=LLAVA15,
                                                                 roles_to_train=["user"])["labels"])]
    assert users == ["Hi", "Again"]


def test_llava15_markers_exact_ids_on_qwen_vocabulary():
    tok = F.qwen25()
    out = render_and_mask(CONV, tok, chat_template=LLAVA15)
    # The space after `ASSISTANT:` merges into the content (`ĠHello`, trained as content, like Qwen's `ĊĊ`); the
    # space before the next header merges into that header (`ĠUSER`), which closes the turn.
    assert tok.decode(out["input_ids"]) == "USER: Hi ASSISTANT: Hello there USER: Again ASSISTANT: Sure thing "
    assert runs(out["labels"]) == [F.ids(tok, " Hello there"), F.ids(tok, " Sure thing ")]


# --- image bytes in the prepared key -----------------------------------------------------------------------------
def test_replacing_an_image_in_place_changes_the_prepared_key(tmp_path: Path):
    from newt.config import parse_recipe
    from newt.pipeline import plan

    (tmp_path / "img").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(tmp_path / "img" / "a.png")
    rows = [{"messages": [{"role": "user", "content": [{"type": "image", "path": "img/a.png"},
                                                       {"type": "text", "text": "?"}]},
                          {"role": "assistant", "content": "black"}]}]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    recipe = parse_recipe(f"base_model: builtin:tiny-llava\nprocessor_type: AutoProcessor\n"
                          f"datasets:\n  - path: {tmp_path / 'd.jsonl'}\n")
    before = plan(recipe, ("prepared",))
    Image.fromarray(np.full((8, 8, 3), 255, dtype=np.uint8)).save(tmp_path / "img" / "a.png")
    after = plan(recipe, ("prepared",))
    assert before["dataset"].key == after["dataset"].key  # the jsonl did not change
    assert before["prepared"].key != after["prepared"].key
    assert plan(recipe, ("prepared",))["prepared"].key == after["prepared"].key
