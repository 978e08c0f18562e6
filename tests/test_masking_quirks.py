"""Real-template quirks (docs/masking.md, "Template quirks")."""

from __future__ import annotations

import masking_fixtures as F
from test_masking_families import CONV, HELLO, IM_END, runs

from newt.masking import Masker, audit, render_and_mask

# Mistral v0.3-style template, written from the documented behaviour of Mistral-7B-Instruct-v0.3's
# chat template: the system prompt is prepended to the LAST user message only, so it is silently
# dropped when the conversation ends with an assistant turn (i.e. every training row).
MISTRAL_V03_STYLE = (
    "{%- if messages[0]['role'] == 'system' %}{%- set system_message = messages[0]['content'] %}"
    "{%- set loop_messages = messages[1:] %}{%- else %}{%- set loop_messages = messages %}{%- endif %}"
    "{{- bos_token }}{%- for message in loop_messages %}{%- if message['role'] == 'user' %}"
    "{%- if loop.last and system_message is defined %}{{- '[INST] ' + system_message + '\\n\\n' + message['content'] + '[/INST]' }}"
    "{%- else %}{{- '[INST] ' + message['content'] + '[/INST]' }}{%- endif %}"
    "{%- else %}{{- ' ' + message['content'] + eos_token }}{%- endif %}{%- endfor %}"
)


def test_mistral_v03_dropped_system_prompt_is_reported_by_the_audit():
    tok = F.mistral("v3")
    m = Masker(tok, chat_template=MISTRAL_V03_STYLE)
    out = m([CONV])
    assert "Be brief" not in tok.decode(out["input_ids"][0])
    report = audit([CONV], out["input_ids"], out["labels"], tok, m)
    assert report["failures"] == []  # the masks themselves are right...
    assert report["dropped_messages"] == [{"row": 0, "message": 0, "role": "system"}]  # ...but data was lost
    # [/INST]=4 ▁Hello ▁there </s>: the template's space merges into the first content token.
    assert runs(out["labels"][0]) == [[23325, 1504, 2], [13643, 2738, 2]]


def test_trimmed_content_is_supervised_as_rendered_and_passes_the_audit():
    # Llama 3 templates `| trim` the content: the surrounding whitespace is never seen, so not trained.
    tok = F.llama3("llama3_2")
    conv = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "  Hello there \n"}]
    m = Masker(tok)
    out = m([conv])
    assert runs(out["labels"][0]) == [[9906, 1070, 128009]]
    assert audit([conv], out["input_ids"], out["labels"], tok, m)["failures"] == []


def test_straddling_newline_token_is_trained_as_content():
    # Qwen's BPE merges the template's "\n" after "assistant" with the content's leading "\n\n" into
    # one token ĊĊĊ (1406). The full start marker (<|im_start|> assistant Ċ) is then absent; the
    # shorter start variant matches and the merged token is trained: it carries content characters.
    tok = F.qwen25()
    conv = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "\n\nHello there"}]
    out = render_and_mask(conv, tok)
    assert out["input_ids"][-6:-2] == [77091, 1406, 9707, 1052]  # assistant ĊĊĊ Hello there
    assert runs(out["labels"]) == [[1406] + HELLO + [IM_END]]


def test_think_blocks_of_earlier_turns_are_dropped_by_qwen3():
    tok = F.qwen3()
    conv = [
        {"role": "user", "content": "q1"},
        {"role": "assistant", "content": "<think>\nsecret\n</think>\n\na1"},
        {"role": "user", "content": "q2"},
        {"role": "assistant", "content": "a2"},
    ]
    m = Masker(tok)
    out = m([conv])
    assert "secret" not in tok.decode(out["input_ids"][0])
    assert audit([conv], out["input_ids"], out["labels"], tok, m)["failures"] == []
