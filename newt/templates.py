"""Which chat template a recipe renders with.

`chat_template: tokenizer_default` uses the tokenizer's own template (the usual case); `jinja` uses
`chat_template_jinja` (text, or a path to a .jinja file); any other value names a template shipped inside the
installed `trl` package (`trl/chat_templates/<name>.jinja`, the model repos' originals), so newt carries no copies.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from newt.config import Recipe


class TemplateError(ValueError):
    pass


def trl_template_dir() -> Path:
    import trl

    return Path(trl.__file__).parent / "chat_templates"


def named_templates() -> list[str]:
    return sorted(p.stem for p in trl_template_dir().glob("*.jinja"))


def explicit_template(recipe: Recipe) -> str | None:
    """The template text the recipe names, or None when the tokenizer's own template is to be used."""
    if recipe.chat_template == "tokenizer_default":
        return None
    if recipe.chat_template == "jinja":
        value = recipe.chat_template_jinja or ""
        if value.endswith(".jinja") and "\n" not in value:
            path = Path(value).expanduser()
            if not path.is_file():
                raise TemplateError(
                    f"chat_template_jinja: file {value!r} not found; give the template text or an existing .jinja path"
                )
            return path.read_text(encoding="utf-8")
        return value
    path = trl_template_dir() / f"{recipe.chat_template}.jinja"
    if not path.is_file():
        import difflib

        names = named_templates()
        hint = difflib.get_close_matches(recipe.chat_template, names, n=1)
        raise TemplateError(
            f"chat_template: unknown template {recipe.chat_template!r}"
            + (f"; did you mean {hint[0]!r}?" if hint else "")
            + f" Use tokenizer_default, jinja, or one of: {', '.join(names)}"
        )
    return path.read_text(encoding="utf-8")


def renders_in_code(tokenizer: Any) -> bool:
    """Whether the tokenizer (or a processor's) renders chats in code, with no Jinja template: mistral-common's
    tokenizers (`MistralCommonBackend`, Voxtral's), whose ids come from their own `apply_chat_template`."""
    import sys

    # No instance exists unless its module was imported; looking it up instead of importing it spares every text
    # recipe mistral-common's import.
    module = sys.modules.get("transformers.tokenization_mistral_common")
    if module is None:
        return False
    return any(isinstance(t, module.MistralCommonBackend) for t in (tokenizer, getattr(tokenizer, "tokenizer", None)))


def template_for(recipe: Recipe, tokenizer: Any) -> str | None:
    """The template text actually used; None for a tokenizer that renders chats in code (`renders_in_code`); an
    error when there is none anywhere."""
    text = explicit_template(recipe)
    if renders_in_code(tokenizer):
        if text is not None:
            raise TemplateError(
                f"chat_template: the tokenizer of {recipe.tokenizer_config or recipe.base_model!r} is mistral-common's, "
                f"which renders chats in code and applies no Jinja template; remove chat_template / "
                f"chat_template_jinja (the model's own format is used)"
            )
        return None
    if text is not None:
        return text
    own = getattr(tokenizer, "chat_template", None)
    if not own:
        raise TemplateError(
            f"the tokenizer of {recipe.tokenizer_config or recipe.base_model!r} has no chat template and the recipe "
            f"gives none; set chat_template to a named template (e.g. chatml-style `qwen2_5`) or to `jinja` with "
            f"chat_template_jinja"
        )
    if isinstance(own, dict):  # several named templates: the default one is used
        own = own.get("default") or next(iter(own.values()))
    return own
