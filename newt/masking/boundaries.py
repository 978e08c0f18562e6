"""Which role boundaries apply to a tokenizer + template: recipe overrides, built-ins, or derived."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from newt.config import RoleBoundarySpec
from newt.masking.builtin import EOS, FAMILIES, MEDIA_TOKENS, Family, MarkerSpec
from newt.masking.scanner import MaskingError, RoleBoundary

# A role_boundaries entry is the recipe schema's `RoleBoundarySpec`: its fields and defaults are read from there
# (`end` defaults to the tokenizer's EOS; `end: null` runs the turn to the end of the row, which must be asked for
# explicitly, or it would swallow the following turns of a template whose turns do close). Recipes hand over typed
# specs; the dict form is for callers of the Python API and is checked field by field here.
SPEC_FIELDS: tuple[str, ...] = tuple(RoleBoundarySpec.model_fields)
SPEC_DEFAULTS: dict[str, Any] = {
    name: info.default for name, info in RoleBoundarySpec.model_fields.items() if not info.is_required()
}


def template_text(tokenizer: Any, chat_template: str | None = None) -> str | None:
    """The Jinja text that renders conversations: the given one, else the tokenizer's."""
    if chat_template:
        return chat_template
    tmpl = getattr(tokenizer, "chat_template", None)
    if isinstance(tmpl, dict):  # several named templates: the default one renders chats
        tmpl = tmpl.get("default")
    return tmpl or None


def text_tokenizer(tokenizer: Any) -> Any:
    """The text tokenizer inside a processor, or the tokenizer itself (a tokenizer may hold a `.tokenizer` of its
    own: mistral-common's `MistralCommonBackend` wraps a `MistralTokenizer`)."""
    if hasattr(tokenizer, "convert_tokens_to_ids"):
        return tokenizer
    return getattr(tokenizer, "tokenizer", None) or tokenizer


def token_id(tokenizer: Any, token: str) -> int | None:
    """The id of one vocabulary entry (added tokens included), or None. A fast tokenizer answers from its
    backend without building the whole vocabulary (`get_vocab()` costs ≈0.2 s on Qwen's 150k entries)."""
    tok = text_tokenizer(tokenizer)
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is not None and hasattr(backend, "token_to_id"):
        return backend.token_to_id(token)
    return tok.get_vocab().get(token)


def encode_marker(tokenizer: Any, text: str) -> tuple[int, ...]:
    """Token ids of a marker encoded on its own (for SentencePiece: with the dummy `▁` prefix, as
    after BOS or a space, which is where Mistral v1 puts `[INST]` and `[/INST]`). A marker that is one special
    token is that token: mistral-common's tokenizers never read control tokens out of text (user text cannot
    inject `[INST]`), where Hugging Face tokenizers encode a special token's text to its id anyway."""
    tok = text_tokenizer(tokenizer)
    if text in set(getattr(tok, "all_special_tokens", ()) or ()):
        return (int(tok.convert_tokens_to_ids(text)),)
    return tuple(tok.encode(text, add_special_tokens=False))


def marker_variants(tokenizer: Any, text: str) -> list[tuple[int, ...]]:
    """The marker's ids on its own, then (SentencePiece only) as it encodes mid-text without the
    dummy prefix, e.g. `[` rather than `▁[` right after `<s>` with a non-legacy tokenizer."""
    tok = text_tokenizer(tokenizer)
    out = [encode_marker(tok, text)]
    if out[0] and _has_dummy_prefix(tok):
        lead = tok.encode("\n", add_special_tokens=False)
        both = tuple(tok.encode("\n" + text, add_special_tokens=False))
        if both[: len(lead)] == tuple(lead) and both[len(lead) :] and both[len(lead) :] != out[0]:
            out.append(both[len(lead) :])
    return out


def _has_dummy_prefix(tok: Any) -> bool:
    ids = tok.encode("a", add_special_tokens=False)
    pieces = tok.convert_ids_to_tokens(ids) if ids else []
    return bool(pieces) and isinstance(pieces[0], str) and pieces[0].startswith("▁")


def _marker_ids(tokenizer: Any, text: str | None, where: str) -> tuple[int, ...]:
    if text is None:
        return ()
    if text == EOS:
        eos = text_tokenizer(tokenizer).eos_token
        if not eos:
            raise MaskingError(
                f"{where} is eos_token, but the tokenizer has no EOS token; write the marker text."
            )
        text = eos
    ids = encode_marker(tokenizer, text)
    if not ids:
        raise MaskingError(
            f"{where} is {text!r}, which the tokenizer encodes to no tokens; give marker text."
        )
    return ids


def detect_family(tokenizer: Any, chat_template: str | None = None) -> Family | None:
    """The built-in family whose markers the template (or, without one, the vocabulary) uses."""
    tmpl = template_text(tokenizer, chat_template)
    for fam in FAMILIES:
        if tmpl is not None:
            if all(s in tmpl for s in fam.signature):
                return fam
        elif all(token_id(tokenizer, s) is not None for s in fam.signature):
            return fam
    return None


def from_specs(
    tokenizer: Any, specs: Sequence[MarkerSpec], where: str = "role_boundaries"
) -> list[RoleBoundary]:
    """Encode text specs. Variants of each start marker are declared after all primary markers, so
    at a position where both match the longer one wins and a tie goes to the primary:

    - the start without its trailing whitespace: BPE merges a template's trailing "\n" or " " with
      what opens the content (Qwen's `ĊĊ`, `ASSISTANT: ` + `Hi` -> `Ġ Hi`), so the full marker is
      absent from such rows; the merged token is trained as content (docs/masking.md, "Straddling
      tokens");
    - SentencePiece encodings of the marker with and without the dummy `▁` prefix.
    """
    primary, extra = [], []
    for i, s in enumerate(specs):
        start = _marker_ids(tokenizer, s.start, f"{where}[{i}].start")
        end = _marker_ids(tokenizer, s.end, f"{where}[{i}].end")
        more = tuple(_marker_ids(tokenizer, e, f"{where}[{i}].end") for e in s.more_ends)
        primary.append(RoleBoundary(s.role, start, end, s.include_start, s.include_end, more))
        variants = marker_variants(tokenizer, s.start)[1:]
        stripped = s.start.rstrip()
        if stripped and stripped != s.start:
            variants += marker_variants(tokenizer, stripped)
        seen = {start}
        for v in variants:
            if v and v not in seen:
                seen.add(v)
                extra.append(RoleBoundary(s.role, v, end, s.include_start, s.include_end, more))
    return primary + extra


def builtin_boundaries(tokenizer: Any, family: Family) -> list[RoleBoundary]:
    """A family's markers as ids; markers the tokenizer cannot encode (other versions) are skipped."""
    specs = []
    for s in family.markers:
        if s.requires_token and token_id(tokenizer, s.start) is None:
            continue
        try:
            _marker_ids(tokenizer, s.start, "start")
            _marker_ids(tokenizer, s.end, "end")
        except MaskingError:
            continue
        # A special-token end marker this vocabulary lacks (<|eom_id|> before Llama 3.1) is left out.
        more = tuple(e for e in s.more_ends if not (e.startswith("<") and e.endswith(">"))
                     or token_id(tokenizer, e) is not None)
        specs.append(dataclasses.replace(s, more_ends=more))
    return from_specs(tokenizer, specs, where=f"built-in {family.name} boundaries")


def validate_role_boundaries(specs: Sequence[Any], tokenizer: Any | None = None) -> list[str]:
    """Every problem of a recipe's `role_boundaries` list, each naming `role_boundaries[i].field`."""
    problems: list[str] = []
    if not isinstance(specs, (list, tuple)):
        return [
            f"role_boundaries must be a list of {{{', '.join(SPEC_FIELDS)}}} entries, got {type(specs).__name__}"
        ]
    for i, spec in enumerate(specs):
        at = f"role_boundaries[{i}]"
        if isinstance(spec, RoleBoundarySpec):  # the schema checked its fields and types
            spec = {name: getattr(spec, name) for name in SPEC_FIELDS}
        if not isinstance(spec, dict):
            problems.append(f"{at} must be a mapping with fields {', '.join(SPEC_FIELDS)}")
            continue
        for key in spec:
            if key not in SPEC_FIELDS:
                problems.append(f"{at}.{key} is not a field; allowed: {', '.join(SPEC_FIELDS)}")
        role = spec.get("role")
        if not isinstance(role, str) or not role:
            problems.append(f"{at}.role must be a non-empty role name, got {role!r}")
        if "start" not in spec:
            problems.append(f"{at}.start is required: the marker text that opens the turn")
        for field in ("start", "end"):
            if field not in spec and field == "start":
                continue
            value = spec.get(field, SPEC_DEFAULTS.get(field))
            if value is None and field == "end":
                continue
            if not isinstance(value, str) or not value:
                problems.append(f"{at}.{field} must be non-empty marker text, got {value!r}")
                continue
            if tokenizer is not None:
                try:
                    _marker_ids(tokenizer, value, f"{at}.{field}")
                except MaskingError as err:
                    problems.append(str(err))
        for field in ("include_start", "include_end"):
            if field in spec and not isinstance(spec[field], bool):
                problems.append(f"{at}.{field} must be true or false, got {spec[field]!r}")
    return problems


def specs_from_recipe(specs: Sequence[RoleBoundarySpec | dict]) -> list[MarkerSpec]:
    """Typed recipe entries (or checked dicts, the schema's defaults filled in) as the scanner's marker specs."""
    typed = [s if isinstance(s, RoleBoundarySpec) else RoleBoundarySpec(**s) for s in specs]
    return [MarkerSpec(s.role, s.start, s.end, s.include_start, s.include_end) for s in typed]


def media_ids(tokenizer: Any) -> tuple[int, ...]:
    """Ids of the media placeholder and begin/end/break tokens this tokenizer (or processor) has."""
    tok = text_tokenizer(tokenizer)
    ids = {i for i in (token_id(tok, t) for t in MEDIA_TOKENS) if i is not None}
    # Processors name their media tokens; include them even when not in our list.
    for attr in (
        "image_token",
        "video_token",
        "audio_token",
        "boi_token",
        "eoi_token",
        "image_break_token",
        "image_end_token",
    ):
        for obj in (tokenizer, tok):
            t = getattr(obj, attr, None)
            i = token_id(tok, t) if isinstance(t, str) else None
            if i is not None:
                ids.add(i)
    return tuple(sorted(ids))


def pad_ids(tokenizer: Any) -> tuple[int, ...]:
    pad = text_tokenizer(tokenizer).pad_token_id
    return () if pad is None else (int(pad),)


def never_trained_ids(tokenizer: Any, turn_ends: Iterable[int] = ()) -> tuple[int, ...]:
    """The one pad/media rule of every path: media ids and the pad id are never trained, except a pad id that is
    also a marker a turn ends with (`turn_ends`, e.g. pad_token = eos_token): masking it by value would untrain
    every end marker and the model would never learn to stop (TRL PR #5988). Padding added later is masked by the
    collator."""
    keep = set(turn_ends)
    return tuple(sorted(set(media_ids(tokenizer)) | {p for p in pad_ids(tokenizer) if p not in keep}))


def stop_ids(tokenizer: Any) -> tuple[int, ...]:
    """The model's stop tokens: `eos_token_id` (one id or a list) of the `generation_config.json` saved beside the
    tokenizer (GLM-4 lists `<|endoftext|>`, `<|user|>`, `<|observation|>`), and the tokenizer's EOS."""
    tok = text_tokenizer(tokenizer)
    ids = {int(tok.eos_token_id)} if tok.eos_token_id is not None else set()
    folder = Path(str(getattr(tok, "name_or_path", "") or ""))
    path = folder / "generation_config.json"
    if folder.parts and path.is_file():
        eos = json.loads(path.read_text()).get("eos_token_id")
        ids |= {int(i) for i in (eos if isinstance(eos, list) else [eos]) if i is not None}
    return tuple(sorted(ids))


def mark_stop_ends(boundaries: Sequence[RoleBoundary], stops: Sequence[int]) -> list[RoleBoundary]:
    """Turns closed by the next turn's opening marker (include_end=False) whose end markers all begin with a stop
    token (GLM-4: `<|user|>`, or `<|observation|>` after a tool call) end at that token with `end_is_stop`, so
    `train_on_eos` trains it: the model learns to stop there, as GLM's own fine-tuning scripts train the token after
    each assistant message. A turn that may also end at a marker that is no stop token (a system turn followed by
    `<|assistant|>`) is left as it is: its end is never trained."""
    stops = set(stops)
    starts = {o.start for o in boundaries}

    def opens_next(end: tuple[int, ...]) -> bool:
        return any(s[: len(end)] == end or end[: len(s)] == s for s in starts)

    out = []
    for b in boundaries:
        if not b.include_end and b.ends and all(e[0] in stops and opens_next(e) for e in b.ends):
            b = dataclasses.replace(b, end=b.end[:1], more_ends=tuple(e[:1] for e in b.more_ends), end_is_stop=True)
        out.append(b)
    return out
