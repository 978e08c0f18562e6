"""The mask audit and the mask preview."""

from __future__ import annotations

import json

import masking_fixtures as F
from test_masking_families import CONV, NO_SYSTEM

from newt.masking import IGNORE_INDEX, Masker, audit, audit_markdown, audit_problems, mask_preview_markdown


def _run(tok, convs, **settings):
    m = Masker(tok, **settings)
    out = m(convs)
    return audit(convs, out["input_ids"], out["labels"], tok, m), out


def test_correct_masks_pass_and_report_is_json():
    report, _ = _run(F.qwen25(), [CONV, NO_SYSTEM])
    assert json.loads(json.dumps(report)) == report
    assert (report["sampled_rows"], report["failures"], report["failure_rate"]) == (2, [], 0.0)
    # 2 rows x 2 assistant turns x (2 content tokens + <|im_end|>)
    assert report["supervised_tokens_per_role"]["assistant"] == 12
    assert audit_problems(report) == []


def test_wrong_boundaries_fail_with_row_and_readable_diff():
    # A plausible mistake: the start marker stops before the role name, so the header is trained too.
    spec = [{"role": "assistant", "start": "<|im_start|>", "end": "<|im_end|>"}]
    report, _ = _run(F.qwen25(), [CONV], role_boundaries=spec)
    assert report["failure_rate"] == 1.0
    diff = report["failures"][0]["diff"]
    assert report["failures"][0]["row"] == 0
    assert diff.startswith("2 trainable messages (assistant) but 5 trainable turns in the tokens")
    assert "message 2 (assistant): expected 'Hello there'\n  supervised 'system\\nBe brief.'" in diff
    problems = audit_problems(report)
    assert len(problems) == 1 and "1 of 1 sampled rows" in problems[0] and "role_boundaries" in problems[0]
    assert audit_problems(report, max_failure_rate=1.0) == []


def test_zero_supervision_rows_are_counted_and_fail_unless_allowed():
    only_user = [{"role": "user", "content": "Hi"}]
    report, _ = _run(F.qwen25(), [CONV, only_user, only_user])
    assert report["zero_supervision_rows"] == 2 and report["zero_supervision_examples"] == [1, 2]
    assert any("2 rows have no supervised token" in p for p in audit_problems(report))
    assert audit_problems(report, allow_zero_supervision=True) == []


def test_max_rows_limits_the_checked_rows():
    report, _ = _run(F.qwen25(), [CONV] * 5, train_on_eos="last")
    assert report["sampled_rows"] == 5 and report["failures"] == []
    m = Masker(F.qwen25())
    out = m([CONV] * 5)
    assert audit([CONV] * 5, out["input_ids"], out["labels"], F.qwen25(), m, max_rows=2)["sampled_rows"] == 2


def test_audit_accepts_qwen3_think_rewrites():
    conv = [
        {"role": "user", "content": "q1"},
        {"role": "assistant", "content": "<think>\nr1\n</think>\n\na1"},
        {"role": "user", "content": "q2"},
        {"role": "assistant", "content": "a2"},
    ]
    report, _ = _run(F.qwen3(), [conv])
    assert report["failures"] == []


def test_audit_settings_dict_builds_the_masker():
    tok = F.qwen25()
    out = Masker(tok, roles_to_train=["user"])([CONV])
    report = audit([CONV], out["input_ids"], out["labels"], tok, {"roles_to_train": ["user"]})
    assert (
        report["failures"] == [] and report["supervised_tokens_per_role"]["user"] == 4
    )  # Hi, Again + 2 ends
    # Auditing user masks against assistant settings shows the mismatch.
    report = audit([CONV], out["input_ids"], out["labels"], tok, {})
    assert report["failure_rate"] == 1.0


def test_preview_tells_trained_from_masked():
    tok = F.qwen25()
    out = Masker(tok)([CONV, NO_SYSTEM])
    md = mask_preview_markdown(out["input_ids"], out["labels"], tok, rows=1)
    assert "#### Row 0: 34 tokens, 6 supervised" in md and "Row 1" not in md
    assert "**Hello there&lt;\\|im\\_end\\|&gt;**~~`⏎`~~" in md  # the newline after <|im_end|> is masked
    assert "~~`<|im_start|>assistant⏎`~~" in md


def test_preview_bold_is_the_trained_text_and_strikethrough_the_masked_in_a_gfm_renderer():
    # Segments that begin or end with spaces or punctuation next to a newline are where `**` stops being emphasis
    # (CommonMark flanking rules) and the UI shows literal asterisks.
    import html
    import re

    import markdown_it

    tok = F.qwen25()
    conv = [{"role": "user", "content": "Hi"},
            {"role": "assistant", "content": " Black.\n\n  (two spaces) end!  \nlast."}]
    out = Masker(tok)([conv])
    md = mask_preview_markdown(out["input_ids"], out["labels"], tok, rows=1)
    # GFM: CommonMark plus strikethrough, as Dagster's UI renders metadata markdown
    rendered = markdown_it.MarkdownIt("commonmark").enable("strikethrough").render(md.split("\n\n", 1)[1])
    assert "**" not in rendered and "~~" not in rendered  # every delimiter became emphasis or strikethrough
    struck = "".join(html.unescape(x) for x in re.findall(r"<s><code>(.*?)</code></s>", rendered, flags=re.S))
    masked = tok.decode([t for t, lab in zip(out["input_ids"][0], out["labels"][0]) if lab == IGNORE_INDEX])
    assert struck == masked.replace("\n", "⏎")
    strong = "".join(html.unescape(x) for x in re.findall(r"<strong>(.*?)</strong>", rendered, flags=re.S))
    trained = tok.decode([t for t in out["labels"][0] if t != IGNORE_INDEX])
    # spaces next to a delimiter are rendered outside the bold on purpose; every other character is inside it
    assert strong.replace(" ", "") == trained.replace("\n", "⏎").replace(" ", "")
    assert "Black." in strong and "end!" in strong and "last." in strong
    # Older renderers (CommonMark < 0.31, as in Dagster's UI) never close `**` right before ⏎ after punctuation.
    assert not re.search(r"[^\s*]\*\*⏎", md)


def test_audit_markdown_has_the_role_table_and_failures():
    spec = [{"role": "assistant", "start": "<|im_start|>", "end": "<|im_end|>"}]
    report, _ = _run(F.qwen25(), [CONV], role_boundaries=spec)
    md = audit_markdown(report)
    # 5 turns: system Ċ Be brief . (5), user Ċ Hi (3), assistant Ċ Hello there (4), 3, 4 + 5 ends
    assert "| assistant | 24 | 100.0% |" in md
    assert ("Audit of a sample (the first 1 of 1 rows): 1 of 1 sampled rows fail (100.0%); 0 of them have no "
            "supervised token; 0 messages dropped by the template. The asset has 1 rows.") in md
    assert "Row 0:\n```\n2 trainable messages" in md
