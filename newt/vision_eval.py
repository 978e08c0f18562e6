"""Evaluation of a multimodal recipe (`processor_type`): the same metrics as text recipes (`newt.evaluate`), on
held-out rows *with their images* (or audio).

- `loss` / `perplexity`: teacher forced on the prepared rows' supervised tokens, batched by the training collator
  (`newt.train.collate.VisionCollator`), so the model sees exactly the pixels and token types training gave it;
- `exact_match` / `contains` / `regex_match`: one greedy generation per row of the conversation's last assistant
  turn, the prompt rendered with the recipe's chat template and the row's own images given to the processor.

Variants: `base` and `merged` load with their processor; `quantized*` load through `newt.quantize.load_quantized`
(torchao weight-only on the language model, vision tower in full precision).
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any

from newt import IGNORE_INDEX
from newt.config import Recipe
from newt.stage import StageRun


def load_variant(variant: str, run: StageRun) -> tuple[Any, Any]:
    """(model, processor) of one variant."""
    from newt import models
    from newt.merge import model_dir

    recipe = run.recipe
    if variant in ("base", "merged"):
        source = recipe.base_model if variant == "base" else str(model_dir(run.upstream["merged"]))
        model = models.load_model(source, trust_remote_code=recipe.trust_remote_code, dtype="float32")
        processor = models.load_processor(recipe.tokenizer_config or source if variant == "base" else source,
                                          recipe.processor_type, trust_remote_code=recipe.trust_remote_code)
        return model, processor
    from newt.quantize import load_quantized

    return load_quantized(Path(run.upstream[variant]) / "model")


def score(model: Any, processor: Any, rows: list[dict], recipe: Recipe, template: str | None,
          batch_size: int = 8) -> tuple[dict, list[str]]:
    """(metrics, the generated answer of each row). `template` None: the processor renders chats itself."""
    import torch
    from PIL import Image

    from newt.eval.answers import answer_scores
    from newt.masking.audit import message_text
    from newt.masking.multimodal import with_media
    from newt.train.collate import VisionCollator

    model.eval()
    device = next(model.parameters()).device
    collate = VisionCollator(processor)
    tok = processor.tokenizer
    total_loss, total_tokens = 0.0, 0
    hits: dict[str, int] = {}
    outputs: list[str] = []
    with torch.no_grad():
        for start in range(0, len(rows), batch_size):
            batch = collate(rows[start : start + batch_size])
            labels = batch.pop("labels")
            dtype = next(model.parameters()).dtype
            inputs = {k: (v.to(device, dtype) if v.is_floating_point() else v.to(device)) for k, v in batch.items()}
            logits = model(**inputs).logits.float().cpu()
            shift_logits, shift_labels = logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1)
            total_loss += float(torch.nn.functional.cross_entropy(shift_logits, shift_labels, ignore_index=IGNORE_INDEX,
                                                                  reduction="sum"))
            total_tokens += int((shift_labels != IGNORE_INDEX).sum())
        for r in rows:
            conv = json.loads(r["messages"])
            if template is None:  # the processor renders chats itself (mistral-common): the prompt's media as bytes
                prompt = with_media(conv[:-1], r.get("images") or [], r.get("audios") or [])
                enc = processor.apply_chat_template(prompt, tokenize=True, return_dict=True)
            else:
                prompt = processor.apply_chat_template(conv[:-1], chat_template=template, tokenize=False,
                                                       add_generation_prompt=True)
                # The prompt's image parts are the row's first images (the answer carries none).
                n_prompt = sum(1 for m in conv[:-1] if isinstance(m.get("content"), list) for p in m["content"]
                               if isinstance(p, dict) and p.get("type") in ("image", "image_url"))
                images = [Image.open(io.BytesIO(b)).convert("RGB") for b in (r.get("images") or [])[:n_prompt]]
                kwargs = {"text": [prompt], "add_special_tokens": False, "return_tensors": "pt"}
                if images:
                    kwargs["images"] = [images]
                enc = processor(**kwargs)
            enc = {k: (v.to(device, dtype) if v.is_floating_point() else v.to(device)) for k, v in enc.items()
                   if isinstance(v, torch.Tensor)}
            out = model.generate(**enc, max_new_tokens=recipe.eval.max_new_tokens, do_sample=False,
                                 pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)
            text = tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
            outputs.append(text)
            answer = message_text(conv[-1]) or ""
            for name, ok in answer_scores(text, answer, recipe.eval.answer_regex).items():
                hits[name] = hits.get(name, 0) + int(ok)
    loss = total_loss / max(total_tokens, 1)
    n = max(len(rows), 1)
    return {"loss": round(loss, 5), "perplexity": round(math.exp(min(loss, 50.0)), 4),
            **{name: round(count / n, 4) for name, count in hits.items()}, "rows": len(rows)}, outputs


def build(run: StageRun) -> dict[str, Any]:
    from newt import templates
    from newt.prepare import load_prepared

    recipe = run.recipe
    held_out = load_prepared(run.upstream["prepared"], "validation")
    if len(held_out) == 0:
        raise ValueError("evaluation: the prepared data has no validation rows; set val_set_size (e.g. 0.05 or 200)")
    rows = [held_out[i] for i in range(min(len(held_out), recipe.eval.max_samples))]
    results: dict[str, dict] = {}
    generations: dict[str, list[str]] = {}
    for variant in recipe.eval.models:
        model, processor = load_variant(variant, run)
        results[variant], generations[variant] = score(model, processor, rows, recipe,
                                                       templates.template_for(recipe, processor))
        run.log(f"evaluation: {variant}: {results[variant]}")
    (Path(run.workdir) / "results.json").write_text(json.dumps(results, indent=2, sort_keys=True))
    # What each variant answered, row by row (held-out order): to read next to the metrics.
    (Path(run.workdir) / "generations.json").write_text(json.dumps(generations, indent=2))
    return {"results": results}
