"""Property tests of the recipe loader: whatever YAML it is given, it returns a Recipe or raises RecipeError, and
every problem it reports starts with the key path it is about.

The masking scanner's property tests (random id streams and boundary sets against a reference scanner; pad and
media ids never trained) live with the scanner in tests/test_masking_scanner.py.
"""

from __future__ import annotations

import copy
import difflib
from typing import Any

import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from newt.config import Recipe, RecipeError, iter_fields, key_path, parse_recipe

VALID: dict[str, Any] = {
    "base_model": "builtin:tiny-llama",
    "datasets": [{"path": "data.jsonl", "roles_to_train": ["assistant"]}],
    "sequence_len": 64,
    "val_set_size": 8,
    "role_boundaries": [{"role": "assistant", "start": "<|im_start|>assistant\n", "end": "<|im_end|>"}],
    "micro_batch_size": 8,
    "max_steps": 3,
    "merge": {"dtype": "float32"},
    "eval": {"max_samples": 8, "thresholds": {"exact_match": 0.5}},
}
TOP_KEYS = sorted(Recipe.model_fields)
FIELD_NAMES = {path.replace("[]", "").rsplit(".", 1)[-1] for path, *_ in iter_fields()}

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(10**6), 10**6), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12), st.sampled_from(["lora", "turn", "drop", "assistant", "builtin:tiny-llama", "1e400"]),
)  # fmt: skip
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.one_of(st.sampled_from(TOP_KEYS + ["path", "role", "start"]), st.text(max_size=6)),
                        inner, max_size=4),
    ),
    max_leaves=12,
)
keys = st.one_of(st.sampled_from(TOP_KEYS), st.text(min_size=1, max_size=10))


def load(text: str) -> Recipe | RecipeError:
    try:
        return parse_recipe(text, source="r.yaml")
    except RecipeError as err:
        return err
    # any other exception fails the test with its traceback


def assert_problems_name_keys(err: RecipeError, data: Any) -> None:
    """Each problem starts with `<key path>: `, the path of a key of the input or of a schema field below one."""
    assert err.problems, "a RecipeError without problems"
    assert str(err).startswith("r.yaml: "), "the error names the file"
    inside = [key_path(p) for p in _paths(data)]
    paths = {"<top level>", *TOP_KEYS, *inside, *(f"{p}.{f}" for p in inside for f in FIELD_NAMES)}
    for problem in err.problems:
        if problem.startswith(("YAML ", "expected a mapping")):
            continue
        assert any(problem.startswith(f"{p}: ") for p in paths), f"no key path at the start of {problem!r}"


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(keys, values, max_size=8))
def test_random_mappings_give_a_recipe_or_a_recipe_error_naming_keys(data: dict) -> None:
    text = yaml.safe_dump(data, allow_unicode=True)
    out = load(text)
    if isinstance(out, RecipeError):
        assert_problems_name_keys(out, yaml.safe_load(text))  # what YAML read back (it folds e.g. U+0085)


def _paths(obj: Any, prefix: tuple = ()) -> list[tuple]:
    """Every (container, key) location inside a nested dict/list, as a path."""
    out = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.append(prefix + (k,))
            out += _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out.append(prefix + (i,))
            out += _paths(v, prefix + (i,))
    return out


def _parent(obj: Any, path: tuple) -> Any:
    for part in path[:-1]:
        obj = obj[part]
    return obj


@settings(max_examples=120, deadline=None)
@given(st.data())
def test_mutations_of_a_valid_recipe_never_crash_the_loader(data: st.DataObject) -> None:
    assert isinstance(load(yaml.safe_dump(VALID)), Recipe)
    recipe = copy.deepcopy(VALID)
    for _ in range(data.draw(st.integers(1, 3))):
        paths = _paths(recipe)
        path = data.draw(st.sampled_from(paths))
        parent = _parent(recipe, path)
        action = data.draw(st.sampled_from(["delete", "replace", "add_key"]))
        if action == "delete":
            del parent[path[-1]]
        elif action == "replace":
            parent[path[-1]] = data.draw(values)
        elif isinstance(parent, dict):
            parent[data.draw(st.text(min_size=1, max_size=8))] = data.draw(values)
    text = yaml.safe_dump(recipe, allow_unicode=True)
    out = load(text)
    if isinstance(out, RecipeError):
        assert_problems_name_keys(out, yaml.safe_load(text))


@settings(max_examples=80, deadline=None)
@given(st.data())
def test_a_misspelt_key_is_reported_with_the_right_suggestion(data: st.DataObject) -> None:
    name = data.draw(st.sampled_from([k for k in TOP_KEYS if len(k) >= 6]))
    i = data.draw(st.integers(0, len(name) - 1))
    typo = name[:i] + name[i + 1 :]  # one character dropped
    assume(typo not in Recipe.model_fields)
    assume(difflib.get_close_matches(typo, TOP_KEYS, n=1, cutoff=0.6) == [name])
    recipe = {**VALID, typo: VALID.get(name, 1)}
    recipe.pop(name, None)
    out = load(yaml.safe_dump(recipe))
    assert isinstance(out, RecipeError)
    [problem] = [p for p in out.problems if p.startswith(f"{typo}:")]
    assert f"unknown key; did you mean {name!r}?" in problem


@settings(max_examples=120, deadline=None)
@given(st.text(max_size=200))
def test_arbitrary_text_gives_a_recipe_or_a_recipe_error(text: str) -> None:
    out = load(text)
    if isinstance(out, RecipeError):
        assert out.problems and str(out).startswith("r.yaml: ")


def test_found_by_the_properties_a_bad_date_and_deep_nesting_are_recipe_errors() -> None:
    # yaml.safe_load raised ValueError (not YAMLError) for an impossible date, RecursionError for deep nesting.
    err = load("base_model: x\ndatasets: [{path: p}]\nseed: 2001-02-30\n")
    assert isinstance(err, RecipeError) and "quote the value" in str(err)
    err = load("a: " + "[" * 5000)
    assert isinstance(err, RecipeError) and "fix the YAML" in str(err)
