"""GRPO reward functions: the built-ins and how a recipe names its own (`trl.reward_funcs`).

A reward function follows TRL's contract: `func(prompts, completions, **columns) -> list[float | None]`, where
`columns` holds the prepared row's extra columns (e.g. `answer`) plus TRL's `completion_ids` and `trainer_state`.

Names a recipe may use:
- `exact_match` — 1.0 when the completion, stripped, equals the row's `answer` column;
- `format` — 1.0 when the completion is `<think>...</think><answer>...</answer>` (DeepSeek-R1's format);
- `regex:<pattern>` — 1.0 when the completion matches the pattern (Python `re.fullmatch`, DOTALL);
- `length` — 1 − tokens / `trl.max_completion_length`: shorter is better;
- `pkg.module.func` or `pkg.module:func` — a function importable from the training process;
- `path/to/rewards.py:func` — a function in a file (relative paths from the working directory).
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

RewardFunc = Callable[..., list[float | None]]
BUILTINS = ("exact_match", "format", "length")
THINK_ANSWER = r"<think>.*?</think>\s*<answer>.*?</answer>"


class RewardError(ValueError):
    pass


def exact_match(completions: list[Any], answer: list[Any] | None = None, **_: Any) -> list[float]:
    if answer is None:
        raise RewardError("reward exact_match needs an `answer` column in the prepared rows (GRPO rows made from "
                          "`messages` get it from the last assistant turn)")
    return [float(_text(c).strip() == str(a).strip()) for c, a in zip(completions, answer)]


def regex_reward(pattern: str) -> RewardFunc:
    compiled = re.compile(pattern, re.DOTALL)

    def reward(completions: list[Any], **_: Any) -> list[float]:
        return [float(compiled.fullmatch(_text(c).strip()) is not None) for c in completions]

    reward.__name__ = "format" if pattern == THINK_ANSWER else "regex"
    return reward


def length_reward(max_completion_length: int) -> RewardFunc:
    def length(completions: list[Any], completion_ids: list[list[int]] | None = None, **_: Any) -> list[float]:
        sizes = [len(ids) for ids in completion_ids] if completion_ids is not None else [len(_text(c))
                                                                                        for c in completions]
        return [1.0 - min(n, max_completion_length) / max_completion_length for n in sizes]

    return length


def _text(completion: Any) -> str:
    """A completion is text, or (conversational) a list of messages whose content is the text."""
    if isinstance(completion, list):
        return "".join(str(m.get("content", "")) for m in completion if isinstance(m, dict))
    return str(completion)


def resolve(spec: str, *, max_completion_length: int = 64) -> RewardFunc:
    """The function a `trl.reward_funcs` entry names; an error that says what was tried and what is allowed."""
    if spec == "exact_match":
        return exact_match
    if spec == "format":
        return regex_reward(THINK_ANSWER)
    if spec == "length":
        return length_reward(max_completion_length)
    if spec.startswith("regex:"):
        try:
            return regex_reward(spec[len("regex:"):])
        except re.error as exc:
            raise RewardError(f"trl.reward_funcs: {spec!r} is not a valid regular expression ({exc})") from None
    if ":" in spec and spec.split(":", 1)[0].endswith(".py"):
        file, name = spec.split(":", 1)
        path = Path(file).expanduser()
        if not path.is_file():
            raise RewardError(f"trl.reward_funcs: file {file!r} not found (from {spec!r}); give an existing .py file")
        module_spec = importlib.util.spec_from_file_location(f"newt_reward_{path.stem}", path)
        assert module_spec is not None and module_spec.loader is not None
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
        return _attr(module, name, spec)
    module_name, _, name = spec.replace(":", ".").rpartition(".")
    if not module_name:
        hint = difflib.get_close_matches(spec, BUILTINS, n=1)
        raise RewardError(f"trl.reward_funcs: unknown reward {spec!r}"
                          + (f"; did you mean {hint[0]!r}?" if hint else "")
                          + f". Use a built-in ({', '.join(BUILTINS)}, regex:<pattern>), pkg.module.func or "
                            f"path/to/file.py:func")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise RewardError(f"trl.reward_funcs: cannot import {module_name!r} for {spec!r} ({exc}); make it "
                          f"importable in the training process or use path/to/file.py:func") from None
    return _attr(module, name, spec)


def _attr(module: Any, name: str, spec: str) -> RewardFunc:
    func = getattr(module, name, None)
    if not callable(func):
        raise RewardError(f"trl.reward_funcs: {spec!r}: {module.__name__} has no function {name!r}")
    return func
