"""The text built-ins beside `tiny-llama`: `small-llama` is the ~30 M-parameter Llama bench/iteration.py --small
times (issue 20), built offline with the same tokenizer."""

from __future__ import annotations

import json
import math

from newt.tiny import ensure_builtin


def test_small_llama_is_a_30m_parameter_llama_with_the_tiny_tokenizer() -> None:
    from safetensors import safe_open

    folder = ensure_builtin("small-llama")
    config = json.loads((folder / "config.json").read_text())
    assert (config["model_type"], config["hidden_size"], config["num_hidden_layers"]) == ("llama", 512, 8)
    with safe_open(folder / "model.safetensors", "np") as f:
        parameters = sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())
    assert 28_000_000 < parameters < 32_000_000, parameters
    tiny = ensure_builtin("tiny-llama")
    assert (folder / "tokenizer.json").read_bytes() == (tiny / "tokenizer.json").read_bytes()
