"""What every tiny vision-language family shares: a tiny tokenizer with the family's special tokens and chat
template, seeded weights, and the files a real checkpoint folder has (weights, config, generation config,
tokenizer and processor files).

The vocabulary is newt's byte-level BPE (`newt.tiny.build_tokenizer`: 256 byte tokens, one merge) plus the family's
own special tokens, so the family's chat template renders and tokenizes exactly as with the real tokenizer's
special tokens; ordinary text is one token per byte.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

# Text model and vision tower sizes every family uses (two text layers, one or two vision layers).
TEXT = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "head_dim": 16, "max_position_embeddings": 1024, "tie_word_embeddings": False}
SEED = 0


def trl_template(name: str) -> str:
    """A chat template TRL installs (trl/chat_templates/<name>.jinja: the model repositories' own templates)."""
    import trl

    return (Path(trl.__file__).parent / "chat_templates" / f"{name}.jinja").read_text()


def tokenizer(special: list[str], template: str, *, eos: str, pad: str, bos: str | None = None,
              extra: dict[str, str] | None = None) -> Any:
    """The tiny byte-level tokenizer with `special` tokens added (in order, after the 257 byte tokens), the
    family's EOS/PAD/BOS and chat template; `extra` names tokens processors look up (`image_token`, ...)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from newt.tiny import _bytes_to_unicode

    alphabet = _bytes_to_unicode()
    vocab = {alphabet[b]: b for b in range(256)}
    vocab["ĠĠ"] = 256
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[("Ġ", "Ġ")]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(list(dict.fromkeys(special)))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=eos, pad_token=pad, bos_token=bos,
                                   clean_up_tokenization_spaces=False, extra_special_tokens=extra or {})
    fast.chat_template = template
    return fast


def text_config(tok: Any, **overrides: Any) -> dict:
    """The language model's settings, sized for the tokenizer."""
    return {**TEXT, "vocab_size": len(tok), "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id,
            "bos_token_id": tok.bos_token_id, **overrides}


def save(model_class: Any, config: Any, processor: Any, out: Path, *, stop_tokens: tuple[str, ...] = ()) -> None:
    """Seeded weights; greedy generation that stops at the tokenizer's EOS (and `stop_tokens`); processor files."""
    import torch
    from transformers import GenerationConfig

    tok = processor.tokenizer
    torch.manual_seed(SEED)
    model = model_class(config)
    eos = [tok.eos_token_id] + [tok.convert_tokens_to_ids(t) for t in stop_tokens]
    model.generation_config = GenerationConfig(eos_token_id=eos if len(eos) > 1 else eos[0],
                                               pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                                               do_sample=False)
    model.save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)
