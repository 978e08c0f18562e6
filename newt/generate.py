"""Greedy generation for evaluation: left-padded batches through the model's own forward with its KV cache.

Why not `model.generate`: for the short answers evaluation asks for (`eval.max_new_tokens`, a dozen tokens), the
generation framework's per-call set-up (generation config, logits processors, stopping criteria, cache objects) and
per-step bookkeeping cost more than a small model's forward. This loop does only what greedy decoding needs:

1. prompts sorted by length and cut into batches as large as `MAX_ROWS`/`MAX_TOKENS` allow, so a batch pads
   little and the forward count stays small;
2. one forward over each left-padded batch (attention mask zero on the padding, position ids counted from each
   row's first real token, exactly as an unpadded row would see them), keeping the KV cache;
3. then one token per step: the argmax of the last position, fed back with the cache, until every row has
   produced EOS or `max_new_tokens`.

A row's answer is its new tokens up to and including the first EOS, the same whatever batch it ran in
(tests/test_generate.py compares batched and one-row-at-a-time answers on the demo recipe).
"""

from __future__ import annotations

from typing import Any


# A batch holds at most this many rows and this many tokens (rows x (longest prompt + new tokens)): the KV cache
# grows with tokens, and on a small model each forward costs about the same whatever the batch, so fewer, fuller
# batches are what make evaluation fast.
MAX_ROWS = 256
MAX_TOKENS = 16384


def batches(lengths: list[int], max_new_tokens: int, max_rows: int = MAX_ROWS,
            max_tokens: int = MAX_TOKENS) -> list[list[int]]:
    """Indices into `lengths` grouped into batches: shortest first, so rows of one batch have similar lengths."""
    out: list[list[int]] = []
    for i in sorted(range(len(lengths)), key=lambda i: (lengths[i], i)):
        width = lengths[i] + max_new_tokens  # the longest row so far: rows come sorted by length
        if out and len(out[-1]) < max_rows and (len(out[-1]) + 1) * width <= max_tokens:
            out[-1].append(i)
        else:
            out.append([i])
    return out


def greedy(model: Any, prompts: list[list[int]], *, max_new_tokens: int, eos_token_id: int | list[int] | None,
           pad_token_id: int, max_rows: int = MAX_ROWS, max_tokens: int = MAX_TOKENS) -> list[list[int]]:
    """The greedy continuation of each prompt (token ids), in the order of `prompts`."""
    import inspect

    import torch

    eos = set([eos_token_id] if isinstance(eos_token_id, int) else (eos_token_id or []))
    # Only the last position's logits are needed: models that take `logits_to_keep` skip the rest of the lm_head.
    keep = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}
    out: list[list[int]] = [[] for _ in prompts]
    device = next(model.parameters()).device
    with torch.no_grad():
        for rows in batches([len(p) for p in prompts], max_new_tokens, max_rows, max_tokens):
            for i, answer in zip(rows, _greedy_batch(model, [prompts[i] for i in rows], max_new_tokens, eos,
                                                     pad_token_id, device, keep)):
                out[i] = answer
    return out


def _greedy_batch(model: Any, prompts: list[list[int]], max_new_tokens: int, eos: set[int], pad: int,
                  device: Any, keep: dict[str, int]) -> list[list[int]]:
    import torch

    n, width = len(prompts), max(len(p) for p in prompts)
    ids = torch.tensor([[pad] * (width - len(p)) + list(p) for p in prompts], device=device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
    # Positions count real tokens only, so a left-padded row sees the positions it would see alone.
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    answers: list[list[int]] = [[] for _ in range(n)]
    done = [False] * n
    cache = None
    for _ in range(max_new_tokens):
        result = model(input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache, use_cache=True,
                       **keep)
        cache = result.cache
        step = result.logits[:, -1, :].argmax(dim=-1)
        for r, token in enumerate(step.tolist()):
            if not done[r]:
                answers[r].append(token)
                done[r] = token in eos
        if all(done):
            break
        ids = step[:, None]
        positions = positions[:, -1:] + 1
        mask = torch.cat([mask, mask.new_ones((n, 1))], dim=-1)
    return answers


def greedy_texts(model: Any, tokenizer: Any, prompts: list[str], max_new_tokens: int, **limits: int) -> list[str]:
    """Each prompt's greedy answer, decoded without special tokens. Prompts are rendered text (the chat template
    already applied), tokenized without adding special tokens."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    answers = greedy(model, ids, max_new_tokens=max_new_tokens, eos_token_id=tokenizer.eos_token_id,
                     pad_token_id=pad, **limits)
    return [tokenizer.decode(a, skip_special_tokens=True) for a in answers]


def generate_answers(model: Any, tokenizer: Any, prompts: list[str], max_new_tokens: int,
                     batch_size: int | None = None) -> list[list[int]]:
    """Greedy continuation of each rendered prompt: the generated token ids, up to and including the first
    end-of-sequence token (absent when the budget ran out). The one generation call of the evaluation stage
    (SFT answers, GRPO completions). `batch_size` caps the rows per batch (default `MAX_ROWS`)."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    return greedy(model, ids, max_new_tokens=max_new_tokens, eos_token_id=tokenizer.eos_token_id,
                  pad_token_id=pad, max_rows=batch_size or MAX_ROWS)
