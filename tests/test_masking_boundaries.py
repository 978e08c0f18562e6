"""Recipe overrides (`role_boundaries`), their validation, and derived boundaries."""

from __future__ import annotations

import dataclasses

import logging

import masking_fixtures as F
import pytest
from test_masking_families import CONV, HELLO, IM_END, NO_SYSTEM, SURE, runs

from newt.masking import (
    IGNORE_INDEX,
    Masker,
    MaskingError,
    RoleBoundary,
    boundaries_for,
    render_and_mask,
    validate_role_boundaries,
)
from newt.masking.derive import derive_boundaries

# Zephyr's documented format (HuggingFaceH4/zephyr-7b-beta model card, MIT): no built-in entry.
ZEPHYR = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}{{ eos_token }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def test_override_replaces_builtins_wholesale():
    tok = F.qwen25()
    # Train only what follows "assistant\n" up to and including the EOS (<|im_end|> for Qwen2.5).
    spec = [{"role": "bot", "start": "<|im_start|>assistant\n", "end": "eos_token"}]
    m = Masker(tok, role_boundaries=spec, roles_to_train=["bot"])
    assert m.known_roles == ("bot",)
    assert runs(m([CONV])["labels"][0]) == [HELLO + [IM_END], SURE + [IM_END]]
    with pytest.raises(MaskingError, match="known roles: bot"):
        Masker(tok, role_boundaries=spec)  # "assistant" is no longer declared


def test_empty_override_keeps_builtins():
    tok = F.qwen25()
    assert boundaries_for(tok, overrides=[]) == boundaries_for(tok)
    assert boundaries_for(tok, overrides=None) == boundaries_for(tok)


def test_override_end_null_runs_to_end_of_row_and_include_flags():
    tok = F.qwen25()
    spec = [{"role": "assistant", "start": "<|im_start|>assistant", "end": None, "include_start": True}]
    out = render_and_mask(NO_SYSTEM[:2], tok, role_boundaries=spec)
    # From the start marker to the end of the row: <|im_start|> assistant \n Hello there <|im_end|> \n
    assert runs(out["labels"]) == [[151644, 77091, 198] + HELLO + [IM_END, 198]]
    spec = [
        {"role": "assistant", "start": "<|im_start|>assistant\n", "end": "<|im_end|>", "include_end": False}
    ]
    assert runs(render_and_mask(NO_SYSTEM, tok, role_boundaries=spec)["labels"]) == [HELLO, SURE]


def test_validation_reports_every_problem_with_its_key_path():
    tok = F.qwen25()
    specs = [
        {"role": "assistant", "start": "<|im_start|>assistant\n", "ending": "<|im_end|>"},
        {"role": "", "start": ""},
        {"role": "user", "end": "x", "include_end": "yes"},
        "assistant",
    ]
    problems = validate_role_boundaries(specs, tok)
    assert problems == [
        "role_boundaries[0].ending is not a field; allowed: role, start, end, include_start, include_end",
        "role_boundaries[1].role must be a non-empty role name, got ''",
        "role_boundaries[1].start must be non-empty marker text, got ''",
        "role_boundaries[2].start is required: the marker text that opens the turn",
        "role_boundaries[2].include_end must be true or false, got 'yes'",
        "role_boundaries[3] must be a mapping with fields role, start, end, include_start, include_end",
    ]
    with pytest.raises(MaskingError, match=r"role_boundaries\[0\]\.ending"):
        boundaries_for(tok, overrides=specs)


def test_marker_that_encodes_to_nothing_is_rejected():
    tok = F.qwen25()
    # The tokenizer has no EOS to stand for, so `end: eos_token` cannot be honoured.
    no_eos = F._qwen_with([], "{{ '' }}")
    assert no_eos.eos_token is None
    assert validate_role_boundaries([{"role": "a", "start": "x"}], no_eos) == [
        "role_boundaries[0].end is eos_token, but the tokenizer has no EOS token; write the marker text."
    ]
    assert validate_role_boundaries([{"role": "a", "start": "x", "end": None}], tok) == []


def test_derived_boundaries_for_a_template_without_builtin():
    tok = F.phi3()
    bs = boundaries_for(tok, chat_template=ZEPHYR)
    ids = lambda s: tuple(F.ids(tok, s))
    assert bs[:3] == [
        RoleBoundary("system", ids("<|system|>\n"), ids("<|endoftext|>")),
        RoleBoundary("user", ids("<|user|>\n"), ids("<|endoftext|>")),
        RoleBoundary("assistant", ids("<|assistant|>\n"), ids("<|endoftext|>")),
    ]
    out = render_and_mask(CONV, tok, chat_template=ZEPHYR)
    eos = tok.eos_token_id
    assert eos not in Masker(tok, chat_template=ZEPHYR).ignore_ids  # pad == eos, but eos is an end marker
    assert runs(out["labels"]) == [HELLO + [eos], SURE + [eos]]


@pytest.mark.parametrize("tok", [F.qwen25, lambda: F.llama3("llama3")], ids=["chatml", "llama3"])
def test_derivation_agrees_with_builtins(tok):
    # Deriving from a template that does have a built-in entry must find the same markers.
    t = tok()
    builtin = [b for b in boundaries_for(t) if b.role in ("system", "user", "assistant")]
    # Llama 3.1's second assistant end marker (<|eom_id|>) is built in only: probes never render it.
    assert derive_boundaries(t) == [dataclasses.replace(b, more_ends=()) for b in builtin]


def test_failed_derivation_warns_and_trains_all_but_pad(caplog):
    tok = F.qwen25()
    bare = "{% for m in messages %}{{ m['content'] }}\n{% endfor %}"
    with caplog.at_level(logging.WARNING):
        out = render_and_mask(
            NO_SYSTEM + [{"role": "assistant", "content": "<|endoftext|>"}], tok, chat_template=bare
        )
    assert "only pad and media tokens are masked; every other token contributes to loss" in caplog.text
    assert "role_boundaries" in caplog.text
    assert out["labels"][:-2] == out["input_ids"][:-2]
    assert out["labels"][-2] == IGNORE_INDEX  # <|endoftext|> is Qwen's pad token


def test_derived_turns_that_end_where_the_next_starts():
    # DeepSeek-R1-Distill's own template: <｜User｜>u<｜Assistant｜>a<｜end▁of▁sentence｜> -- the user turn
    # has no end marker, so it ends where <｜Assistant｜> (128012) opens the next turn, like Mistral's [/INST].
    tok = F.deepseek_r1_distill()
    m = Masker(tok, roles_to_train=["user", "assistant"])
    assert [(b.role, b.start, b.end, b.include_end) for b in m.boundaries] == [
        ("user", (128011,), (128012,), False),
        ("assistant", (128012,), (128001,), True),
    ]
    out = m([CONV])
    # "Hi" (13347), "Hello there" (9906 1070) <｜end▁of▁sentence｜> (128001), "Again", "Sure thing" + EOS;
    # the system prompt, written bare after BOS, is in no turn and stays masked.
    assert runs(out["labels"][0]) == [[13347], [9906, 1070, 128001], [31485], [40914, 3245, 128001]]


def test_phi4_chatml_with_im_sep():
    tok = F.phi4()
    out = render_and_mask(CONV, tok)
    assert runs(out["labels"]) == [HELLO + [IM_END], SURE + [IM_END]]  # <|im_sep|> is not trained
