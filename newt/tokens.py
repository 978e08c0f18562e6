"""The recipe's vocabulary changes (Axolotl's `special_tokens`, `tokens`, `eot_tokens`) applied to a tokenizer, and
the model's embeddings resized to match.

The same function runs where the tokenizer is loaded for the `prepared` stage (so the ids and masks use the new
tokens) and in the training child (so the model is trained with them); the keys are tagged `prepared` and `trained`.
New embedding rows are trained: in full fine-tunes every row is, and with LoRA the embedding and output head join
`modules_to_save` (`newt.train.args.lora_kwargs`), as Axolotl requires for new tokens.
"""

from __future__ import annotations

from typing import Any

from newt.config import Recipe
from newt.masking.boundaries import text_tokenizer

ROLES = ("bos_token", "eos_token", "pad_token", "unk_token")


def wants_changes(recipe: Recipe) -> bool:
    st = recipe.special_tokens
    return bool(any(getattr(st, r) for r in ROLES) or st.additional_special_tokens or recipe.tokens
                or recipe.eot_tokens)


def apply_tokens(recipe: Recipe, tokenizer: Any) -> list[int]:
    """Set the special tokens and add the new tokens; return the ids that are new to the vocabulary.

    `tokenizer` may be a multimodal processor (its text tokenizer is changed)."""
    if not wants_changes(recipe):
        return []
    tok = text_tokenizer(tokenizer)
    before = len(tok)
    st = recipe.special_tokens
    specials: dict[str, Any] = {r: getattr(st, r) for r in ROLES if getattr(st, r)}
    extra = [t for t in [*st.additional_special_tokens, *recipe.eot_tokens] if t not in specials.values()]
    if specials:
        tok.add_special_tokens(specials)
    if extra:
        # keep the tokenizer's own extra special tokens; these are added beside them
        tok.add_special_tokens({"additional_special_tokens": list(dict.fromkeys(extra))},
                               replace_extra_special_tokens=False)
    if recipe.tokens:
        tok.add_tokens(list(recipe.tokens))
    return list(range(before, len(tok)))


def resize_model(model: Any, tokenizer: Any, *, multiple: int | None = None) -> None:
    """Grow the model's embeddings (and tied/untied output head) to the tokenizer's vocabulary when it is larger,
    or to the next multiple of `multiple` rows (Axolotl's resize_token_embeddings_to_32x). New rows start as
    transformers initialises them without mean resizing (Axolotl's default)."""
    tok = text_tokenizer(tokenizer)
    rows = model.get_input_embeddings().weight.shape[0]
    if len(tok) > rows or (multiple and rows % multiple):
        model.resize_token_embeddings(max(len(tok), rows), pad_to_multiple_of=multiple, mean_resizing=False)


def prepare_tokens(recipe: Recipe, tokenizer: Any, model: Any) -> list[int]:
    """The child's step: apply the vocabulary changes and resize the model; the new ids (for LoRA's
    modules_to_save)."""
    new_ids = apply_tokens(recipe, tokenizer)
    resize_model(model, tokenizer, multiple=32 if recipe.resize_token_embeddings_to_32x else None)
    return new_ids


def check_turn_ends(recipe: Recipe, boundaries: Any, tokenizer: Any) -> None:
    """`eot_tokens` name the turn ends: each trained role's end marker in masking must be one of them, so the
    tokens `train_on_eos` trains (or not) are the ones the recipe calls turn ends. A mismatch fails the prepared
    stage with the fix, instead of training on other markers than the recipe says."""
    if not recipe.eot_tokens or not boundaries:
        return
    tok = text_tokenizer(tokenizer)
    eot = {tuple(tok.convert_tokens_to_ids([t])) for t in recipe.eot_tokens}
    wrong = sorted({b.role for b in boundaries if b.end and tuple(b.end) not in eot})
    if wrong:
        ends = {b.role: tok.decode(list(b.end)) for b in boundaries if b.role in wrong}
        raise ValueError(
            f"eot_tokens {list(recipe.eot_tokens)} are not the turn ends the chat template gives roles "
            f"{', '.join(wrong)} ({ends}); set role_boundaries with end: one of the eot_tokens, or change eot_tokens"
        )
