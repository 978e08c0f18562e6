"""Built-in boundaries, each checked on the family's real template with a real or faithful tokenizer.

Golden ids come from the tokenizers in tests/masking_fixtures.py (registry packages, offline):
Qwen2.5/Qwen2-VL/Qwen3 ids are the real Qwen vocabulary; Llama 3 ids the real Llama 3.1 vocabulary;
Mistral ids are what mistral-common 1.13.1 itself encodes. Gemma/Phi-3/Llama 4 use faithful
tokenizers (their special tokens appended to Qwen2.5's vocabulary, ids from 151665 on).
"""

from __future__ import annotations

import masking_fixtures as F
import pytest

from newt.masking import (
    IGNORE_INDEX,
    Masker,
    MaskingError,
    boundaries_for,
    build_labels,
    detect_family,
    render_and_mask,
)

CONV = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello there"},
    {"role": "user", "content": "Again"},
    {"role": "assistant", "content": "Sure thing"},
]
NO_SYSTEM = CONV[1:]


def runs(labels: list[int]) -> list[list[int]]:
    """The supervised spans of a row, as lists of ids."""
    out, cur = [], []
    for t in labels:
        if t == IGNORE_INDEX:
            if cur:
                out.append(cur)
            cur = []
        else:
            cur.append(t)
    return out + ([cur] if cur else [])


# --- ChatML: Qwen2 / 2.5 / 3, Qwen2-VL / 2.5-VL ----------------------------------------------------
# Qwen2.5 vocabulary: "Hello there" = 9707 1052, "Sure thing" = 39814 3166, <|im_end|> = 151645,
# "Be brief." = 3430 9814 13, "Hi" = 13048, "Again" = 30385.
HELLO, SURE, IM_END = [9707, 1052], [39814, 3166], 151645


@pytest.mark.parametrize("tok", [F.qwen25, F.qwen2vl, F.qwen25vl], ids=["qwen2.5", "qwen2-vl", "qwen2.5-vl"])
def test_chatml_qwen_supervises_assistant_content_and_im_end(tok):
    out = render_and_mask(CONV, tok())
    assert detect_family(tok()).name == "chatml"
    assert runs(out["labels"]) == [HELLO + [IM_END], SURE + [IM_END]]


def test_chatml_roles_to_train_and_train_on_eos():
    tok = F.qwen25()
    out = render_and_mask(CONV, tok, roles_to_train=["system", "user"], train_on_eos="none")
    assert runs(out["labels"]) == [[3430, 9814, 13], [13048], [30385]]
    out = render_and_mask(CONV, tok, train_on_eos="last")
    assert runs(out["labels"]) == [HELLO, SURE + [IM_END]]
    with pytest.raises(MaskingError, match="known roles: system, user, assistant, tool"):
        render_and_mask(CONV, tok, roles_to_train=["model"])


def test_qwen25_default_system_prompt_is_masked():
    # Qwen2.5's template injects "You are Qwen, created by Alibaba Cloud..." when no system message is given.
    out = render_and_mask(NO_SYSTEM, F.qwen25())
    assert out["input_ids"][:3] == [151644, 8948, 198]  # <|im_start|> system \n
    assert runs(out["labels"]) == [HELLO + [IM_END], SURE + [IM_END]]


def test_masker_batch_equals_render_and_mask():
    tok = F.qwen25()
    m = Masker(tok, roles_to_train=["assistant", "user"])
    batch = m([CONV, NO_SYSTEM])
    for i, conv in enumerate([CONV, NO_SYSTEM]):
        one = render_and_mask(conv, tok, roles_to_train=["assistant", "user"])
        assert (batch["input_ids"][i], batch["labels"][i]) == (one["input_ids"], one["labels"])
    assert m.known_roles == ("system", "user", "assistant", "tool")


def test_chatml_given_template_is_used_for_rendering():
    # A template passed in replaces the tokenizer's (here: plain ChatML without Qwen's default system).
    chatml = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    out = render_and_mask(NO_SYSTEM, F.qwen25(), chat_template=chatml)
    assert out["input_ids"][:3] == [151644, 872, 198]  # <|im_start|> user \n
    assert runs(out["labels"]) == [HELLO + [IM_END], SURE + [IM_END]]


def test_qwen3_drops_think_from_earlier_turns_and_trains_the_last_reasoning():
    # Qwen3's template keeps <think> only in assistant turns after the last user query.
    conv = [
        {"role": "user", "content": "q1"},
        {"role": "assistant", "content": "<think>\nr1\n</think>\n\na1"},
        {"role": "user", "content": "q2"},
        {"role": "assistant", "content": "a2", "reasoning_content": "r2"},
    ]
    out = render_and_mask(conv, F.qwen3())
    # a1 <|im_end|> ; <think> \n r2 \n </think> \n\n a2 <|im_end|>
    assert runs(out["labels"]) == [[64, 16, IM_END], [151667, 198, 81, 17, 198, 151668, 271, 64, 17, IM_END]]


# --- Llama 3 / 3.1 / 3.2 / 3.2 Vision -----------------------------------------------------------------
# Llama 3 vocabulary: "Hello there" = 9906 1070, "Sure thing" = 40914 3245, <|eot_id|> = 128009.


@pytest.mark.parametrize("template", ["llama3", "llama3_1", "llama3_2"])
def test_llama3_family(template):
    tok = F.llama3(template)
    out = render_and_mask(CONV, tok)
    assert detect_family(tok).name == "llama3"
    assert out["input_ids"][0] == 128000 and out["input_ids"][1] != 128000
    assert runs(out["labels"]) == [[9906, 1070, 128009], [40914, 3245, 128009]]


def test_llama32_date_line_is_pinned():
    tok = F.llama3("llama3_2")
    m = Masker(tok)
    assert "Today Date: 26 Jul 2024" in m.render([CONV])[0]
    other = Masker(tok, template_kwargs={"date_string": "01 Jan 2025"})
    assert "Today Date: 01 Jan 2025" in other.render([CONV])[0]
    assert runs(m([CONV])["labels"][0]) == runs(other([CONV])["labels"][0])


def test_bos_is_not_added_twice():
    # The Llama 3 template writes <|begin_of_text|> and the tokenizer's post-processor adds one too.
    tok = F.llama3("llama3_2", bos_post_processor=True)
    text = Masker(tok).render([CONV])[0]
    assert tok(text)["input_ids"][:2] == [128000, 128000]  # what tokenizing with specials would do
    assert Masker(tok)([CONV])["input_ids"][0][:2] == [128000, 128006]


def test_llama32_vision_image_token_is_masked_inside_a_trained_turn():
    tok = F.llama3("llama3_2")
    # Llama 3.2 Vision writes <|image|> (128256) at the start of the user turn; here one also sits in an
    # assistant turn to show media is masked even inside trained spans.
    conv = [
        {"role": "user", "content": "<|image|>What is it?"},
        {"role": "assistant", "content": "A <|image|> cat"},
    ]
    out = render_and_mask(conv, tok)
    assert 128256 in out["input_ids"]
    spans = runs(out["labels"])
    # "A", "Ġ" | <|image|> masked | "Ġcat", <|eot_id|>
    assert spans == [[32, 220], [8415, 128009]]
    assert all(lab == IGNORE_INDEX for t, lab in zip(out["input_ids"], out["labels"]) if t == 128256)


# --- Llama 4, Gemma 3/3n/4, Phi-3 (faithful tokenizers) ---------------------------------------------


@pytest.mark.parametrize(
    ("tok", "family", "end_id"),
    [
        (F.llama4, "llama4", 151669),
        (F.gemma3, "gemma", 151669),
        (F.gemma4, "gemma4", 151669),
        (F.phi3, "phi3", 151668),
    ],
)
def test_faithful_families(tok, family, end_id):
    t = tok()
    assert detect_family(t).name == family
    assert t.convert_ids_to_tokens(end_id) in ("<|eot|>", "<end_of_turn>", "<turn|>", "<|end|>")
    out = render_and_mask(CONV, t)
    assert runs(out["labels"]) == [HELLO + [end_id], SURE + [end_id]]


def test_gemma_model_role_is_exposed_as_assistant_and_has_no_system_turn():
    tok = F.gemma3()
    assert Masker(tok).known_roles == ("user", "assistant")
    with pytest.raises(MaskingError, match="'model'.*known roles: user, assistant"):
        Masker(tok, roles_to_train=["model"])
    # Gemma 3 folds the system prompt into the first user turn: training "user" trains it too.
    out = render_and_mask(CONV, tok, roles_to_train=["user"], train_on_eos="none")
    assert [tok.decode(s) for s in runs(out["labels"])] == ["Be brief.\n\nHi", "Again"]


# --- Mistral v1 / v3 / V7 / tekken (ids rendered by mistral-common itself) -------------------------


@pytest.mark.parametrize(
    ("version", "expected"),
    [
        # v1: [INST] and [/INST] are ordinary SentencePiece tokens (▁[ INST ] = 733 16289 28793); the
        # content's first token ▁Hello (22557) carries the template's space.
        ("v1", [[22557, 736, 2], [12875, 1970, 2]]),
        ("v3", [[23325, 1504, 2], [13643, 2738, 2]]),
        ("v7", [[23325, 1504, 2], [13643, 2738, 2]]),
        ("tekken", [[22177, 2156, 2], [69957, 6588, 2]]),
    ],
)
def test_mistral_family_on_mistral_common_ids(version, expected):
    tok = F.mistral(version)
    bs = boundaries_for(tok, chat_template="{{ '[INST]' }}{{ '[/INST]' }}")
    ids = F.mistral_common_ids(version, CONV)
    assert runs(build_labels(ids, bs)) == expected


def test_mistral_user_turn_ends_where_the_assistant_turn_starts():
    tok = F.mistral("v7")
    bs = boundaries_for(tok, chat_template="[INST][/INST]")
    ids = F.mistral_common_ids("v7", CONV)
    # [SYSTEM_PROMPT]=16 ▁Be ▁brief . [/SYSTEM_PROMPT]=17 [INST]=3 ▁Hi [/INST]=4 ... ; [/INST] is never trained.
    labels = build_labels(ids, bs, roles_to_train=["system", "user", "assistant"], train_on_eos="all")
    assert runs(labels) == [[2507, 7585, 29491, 17], [16127], [23325, 1504, 2], [10474], [13643, 2738, 2]]


def test_mistral_v1_markers_are_ordinary_tokens_and_v1_has_no_system_turn():
    tok = F.mistral("v1")
    bs = boundaries_for(tok, chat_template="[INST][/INST]")
    assert bs[0].start == (733, 16289, 28793)  # ▁[ INST ] -- plain vocabulary pieces
    assert "system" not in {b.role for b in bs}
    # A user who writes "[INST]" inside an assistant message: in v1 that text IS the marker, so the
    # scanner cannot tell it apart; the assistant turn still closes at </s> and the rest stays masked.
    ids = [1, 733, 16289, 28793, 23809, 733, 28748, 16289, 28793, 22557, 733, 16289, 28793, 2]
    assert runs(build_labels(ids, bs)) == [[22557, 733, 16289, 28793, 2]]
