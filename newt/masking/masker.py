"""Render conversations, tokenize them in one batch, and label them with the scanner."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from newt.config import RoleBoundarySpec
from newt.masking.boundaries import (
    builtin_boundaries,
    detect_family,
    from_specs,
    mark_stop_ends,
    never_trained_ids,
    specs_from_recipe,
    stop_ids,
    template_text,
    text_tokenizer,
    validate_role_boundaries,
)
from newt.masking.scanner import (
    MaskingError,
    RoleBoundary,
    TrainOnEos,
    build_labels_batch,
    check_knobs,
    known_roles,
    turns,
)

# Llama 3.1/3.2 templates print today's date unless `date_string` is given; a pinned date keeps
# renders (and so prepared-data cache keys) reproducible. 26 Jul 2024 is the templates' own fallback.
DEFAULT_TEMPLATE_KWARGS = {"date_string": "26 Jul 2024"}


def boundaries_for(
    tokenizer: Any, chat_template: str | None = None, overrides: Sequence[RoleBoundarySpec | dict] | None = None
) -> list[RoleBoundary]:
    """The boundaries to scan with: the recipe's (a non-empty list replaces the built-ins wholesale),
    else the built-in family's, else ones derived from the template. [] when none can be found."""
    if overrides:
        problems = validate_role_boundaries(overrides, tokenizer)
        if problems:
            raise MaskingError("invalid role_boundaries:\n  " + "\n  ".join(problems))
        return from_specs(tokenizer, specs_from_recipe(overrides))
    family = detect_family(tokenizer, chat_template)
    if family is not None:
        return builtin_boundaries(tokenizer, family)
    from newt.masking.derive import derive_boundaries  # derive renders templates: import when needed

    return derive_boundaries(tokenizer, chat_template)


class Masker:
    """Resolves boundaries and checks the knobs once; then labels batches of conversations.

    BOS: conversations are tokenized with `add_special_tokens=False`, as transformers'
    `apply_chat_template(tokenize=True)` does, so the template is the only source of BOS and a
    template that writes `{{ bos_token }}` does not get a second one from the tokenizer.
    """

    def __init__(
        self,
        tokenizer: Any,
        *,
        chat_template: str | None = None,
        roles_to_train: Iterable[str] = ("assistant",),
        train_on_eos: TrainOnEos = "turn",
        train_on_inputs: bool = False,
        role_boundaries: Sequence[RoleBoundarySpec | dict] | None = None,
        ignore_ids: Iterable[int] = (),
        template_kwargs: dict | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.chat_template = chat_template
        self.template = template_text(tokenizer, chat_template)
        self.boundaries: list[RoleBoundary] = mark_stop_ends(
            boundaries_for(tokenizer, chat_template, role_boundaries), stop_ids(tokenizer)
        )
        self.known_roles: tuple[str, ...] = known_roles(self.boundaries)
        self.train_on_eos = train_on_eos
        self.train_on_inputs = train_on_inputs
        self.template_kwargs = {**DEFAULT_TEMPLATE_KWARGS, **(template_kwargs or {})}
        if not self.boundaries:
            # No boundaries (derivation failed and warned): every token but pad and media is trained.
            self.train_on_inputs = True
            check_knobs([], (), train_on_eos)
            self.roles_to_train = (
                tuple(roles_to_train) if not isinstance(roles_to_train, str) else (roles_to_train,)
            )
        else:
            self.roles_to_train = check_knobs(self.boundaries, roles_to_train, train_on_eos)
        markers = {t for b in self.boundaries for e in b.ends for t in e}  # every end marker of every boundary
        self.ignore_ids = tuple(sorted(set(never_trained_ids(tokenizer, markers)) | set(ignore_ids)))

    def render(self, conversations: Sequence[list[dict]]) -> list[str]:
        # Only variables the template reads: processors treat any other keyword as a processor option.
        used = {k: v for k, v in self.template_kwargs.items() if self.template and k in self.template}
        kwargs = dict(tokenize=False, **used)
        if self.chat_template:
            kwargs["chat_template"] = self.chat_template
        return [self.tokenizer.apply_chat_template(c, **kwargs) for c in conversations]

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        return text_tokenizer(self.tokenizer)(texts, add_special_tokens=False)["input_ids"]

    def close_rows(self, rows: Sequence[Sequence[int]]) -> list[list[int]]:
        """Rows whose last turn is closed only by the next turn's stop token (`end_is_stop`, GLM-4) and so runs to
        the end of the row get that stop token appended: the model learns to stop after its last answer too."""
        rows = [list(r) for r in rows]
        if not any(b.end_is_stop for b in self.boundaries):
            return rows
        for row in rows:
            last = (turns(row, self.boundaries) or [None])[-1]
            if last is not None and not last.found and self.boundaries[last.boundary].end_is_stop:
                row.append(self.boundaries[last.boundary].end[0])
        return rows

    def label(self, rows: Sequence[Sequence[int]]) -> list[list[int]]:
        """Labels for already-tokenized rows (e.g. after a processor expanded the media tokens)."""
        return build_labels_batch(
            rows,
            self.boundaries,
            roles_to_train=self.roles_to_train if self.boundaries else (),
            train_on_eos=self.train_on_eos,
            train_on_inputs=self.train_on_inputs,
            ignore_ids=self.ignore_ids,
        )

    def __call__(self, conversations: Sequence[list[dict]]) -> dict[str, list[list[int]]]:
        input_ids = self.close_rows(self.tokenize(self.render(conversations)))
        return {"input_ids": input_ids, "labels": self.label(input_ids)}


def render_and_mask(
    messages: list[dict],
    tokenizer: Any,
    *,
    chat_template: str | None = None,
    roles_to_train: Iterable[str] = ("assistant",),
    train_on_eos: TrainOnEos = "turn",
    train_on_inputs: bool = False,
    role_boundaries: list[dict] | None = None,
) -> dict[str, list[int]]:
    """One conversation: `{"input_ids", "labels"}`, the same as `Masker(...)([messages])` row 0."""
    out = Masker(
        tokenizer,
        chat_template=chat_template,
        roles_to_train=roles_to_train,
        train_on_eos=train_on_eos,
        train_on_inputs=train_on_inputs,
        role_boundaries=role_boundaries,
    )([messages])
    return {"input_ids": out["input_ids"][0], "labels": out["labels"][0]}
