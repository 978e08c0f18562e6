"""Boundaries for a template newt has no built-in entry for, found by rendering probe conversations.

Render [user, assistant, user, assistant] with unique probe words, cut the text between the probe
contents, and split each gap into "end of the previous turn" and "start of the next": a role's end
marker is what all of its turns are followed by (the common prefix of the gaps after them, the text
after a final turn included), and the next role's start is the rest of the gap. A system turn is
recognised when the user's start with "user" replaced by "system" precedes the system probe. The
result is checked by masking the probe render; any doubt gives no boundaries and a warning.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from newt.masking.builtin import MarkerSpec
from newt.masking.scanner import MaskingError, RoleBoundary, build_labels

log = logging.getLogger(__name__)

DERIVE_FAILED_WARNING = (
    "newt could not find role boundaries for this chat template (it matches no built-in family and "
    "deriving them by rendering probe conversations failed: {why}): only pad and media tokens are "
    "masked; every other token contributes to loss. To train on some roles only, set "
    "`role_boundaries` in the recipe, e.g. [{{role: assistant, start: '<|assistant|>', end: eos_token}}]."
)
_warned: set[str] = set()

PROBE = {
    "u1": "newtprobeuserone",
    "a1": "newtprobeassistantone",
    "u2": "newtprobeusertwo",
    "a2": "newtprobeassistanttwo",
    "s": "newtprobesystem",
}


class _Fail(Exception):
    pass


def _common_prefix(tokenizer: Any, texts: list[str]) -> str:
    """The longest common prefix of `texts` that ends on a token boundary in every one of them.

    Character-level prefixes cut special tokens apart (`<|end|>` and `<|return|>` share `<|`);
    a prefix of whole tokens cannot.
    """
    from newt.masking.boundaries import text_tokenizer

    prefix = os.path.commonprefix(texts)
    if not prefix:
        return ""
    tok = text_tokenizer(tokenizer)
    cut = len(prefix)
    for text in texts:
        enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
        ends = [0] + [e for _, e in enc["offset_mapping"]]
        cut = min(cut, max(e for e in ends if e <= cut))
    return prefix[:cut]


def _render(tokenizer: Any, chat_template: str | None, messages: list[dict]) -> str:
    kwargs: dict = {"tokenize": False, "date_string": "26 Jul 2024"}
    if chat_template:
        kwargs["chat_template"] = chat_template
    try:
        return tokenizer.apply_chat_template(messages, **kwargs)
    except Exception as err:  # a template may refuse a probe (e.g. no system role): not derivable
        raise _Fail(f"the template failed to render a probe conversation: {err}") from err


def _cut(text: str, keys: list[str]) -> list[str]:
    """The text pieces around the probe contents, in order: [before k0, between k0 and k1, ..., after]."""
    pieces, at = [], 0
    for k in keys:
        i = text.find(PROBE[k], at)
        if i < 0:
            raise _Fail(f"the template dropped or rewrote the {k} probe message")
        pieces.append(text[at:i])
        at = i + len(PROBE[k])
    pieces.append(text[at:])
    return pieces


def _msg(role: str, key: str, parts: bool) -> dict:
    text = PROBE[key]
    return {"role": role, "content": [{"type": "text", "text": text}] if parts else text}


def _probe(parts: bool) -> list[dict]:
    keys = [("user", "u1"), ("assistant", "a1"), ("user", "u2"), ("assistant", "a2")]
    return [_msg(r, k, parts) for r, k in keys]


def derive_specs(
    tokenizer: Any, chat_template: str | None = None, parts: bool | None = None
) -> list[MarkerSpec]:
    """Marker text per role. `parts=None` tries string contents, then (for templates that only
    render content parts, e.g. Idefics3/SmolVLM) `[{"type": "text", ...}]` contents."""
    if parts is None:
        try:
            return derive_specs(tokenizer, chat_template, parts=False)
        except _Fail:
            return derive_specs(tokenizer, chat_template, parts=True)

    def msg(role: str, key: str) -> dict:
        return _msg(role, key, parts)

    conv = _probe(parts)
    _, s1, s2, s3, post_a = _cut(_render(tokenizer, chat_template, conv), ["u1", "a1", "u2", "a2"])
    post_u = _cut(_render(tokenizer, chat_template, conv[:3]), ["u1", "a1", "u2"])[-1]
    end_a = _common_prefix(tokenizer, [s2, post_a])
    end_u = _common_prefix(tokenizer, [s1, s3, post_u])
    # Whitespace between an end and the next start is glue; a start's trailing newline is its own.
    start_a, start_u = s1[len(end_u) :].lstrip(), s2[len(end_a) :].lstrip()
    end_a, end_u = end_a.strip(), end_u.strip()
    if not (start_a.strip() and start_u.strip()):
        raise _Fail("the turns are not opened by distinct start text")
    # No end text of their own (DeepSeek, Metharme, Alpaca-style user turns): a turn ends where the
    # next one starts, and the scan resumes there (include_end=False), as Mistral's [/INST] does.
    closes_u = (end_u, True) if end_u else (start_a, False)
    closes_a = (end_a, True) if end_a else (start_u, False)
    specs = [
        MarkerSpec("user", start_u, closes_u[0], include_end=closes_u[1]),
        MarkerSpec("assistant", start_a, closes_a[0], include_end=closes_a[1]),
    ]
    if "user" in start_u:
        start_s = start_u.replace("user", "system")
        try:
            pieces = _cut(_render(tokenizer, chat_template, [msg("system", "s")] + conv), ["s", "u1"])
        except _Fail:
            pieces = None
        if pieces and pieces[0].endswith(start_s) and pieces[1].strip().startswith(closes_u[0]):
            specs.insert(0, MarkerSpec("system", start_s, closes_u[0], include_end=closes_u[1]))
    return specs


def derive_boundaries(tokenizer: Any, chat_template: str | None = None) -> list[RoleBoundary]:
    """Derived boundaries, or [] with a one-shot warning naming the consequence and the fix."""
    from newt.masking.boundaries import from_specs, text_tokenizer

    try:
        specs = derive_specs(tokenizer, chat_template)
        try:
            boundaries = from_specs(tokenizer, specs, where="derived boundaries")
        except MaskingError as err:
            raise _Fail(str(err)) from err
        # Check: masking the probe render must supervise exactly the probes of each role.
        try:
            text = _render(tokenizer, chat_template, _probe(False))
            if PROBE["u1"] not in text:
                raise _Fail("string contents dropped")
        except _Fail:
            text = _render(tokenizer, chat_template, _probe(True))
        tok = text_tokenizer(tokenizer)
        ids = tok(text, add_special_tokens=False)["input_ids"]
        for role, want in (("assistant", PROBE["a1"] + PROBE["a2"]), ("user", PROBE["u1"] + PROBE["u2"])):
            labels = build_labels(ids, boundaries, roles_to_train=[role], train_on_eos="none")
            trained = tok.decode([t for t in labels if t >= 0])
            if tok.eos_token:  # a last turn that runs to the end of the row may train the EOS
                trained = trained.replace(tok.eos_token, "")
            if "".join(trained.split()) != want:
                raise _Fail(f"masking a probe conversation supervised {trained!r} for role {role!r}")
        return boundaries
    except _Fail as err:
        message = DERIVE_FAILED_WARNING.format(why=err)
        if message not in _warned:
            _warned.add(message)
            log.warning(message)
        return []
