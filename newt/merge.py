"""The `merged` stage: adapter + base model → one safetensors folder with the tokenizer and chat template beside it.

A full fine-tune already is a complete model: it is copied through unchanged. The result loads with plain
`AutoModelForCausalLM.from_pretrained(folder)`, no PEFT needed.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from newt.pipeline import StageRun


def merge(base_model: str, trained: Path, out: Path, *, dtype: str = "float32", trust_remote_code: bool = False) -> dict:
    import torch

    from newt.models import load_model, load_tokenizer

    trained = Path(trained)
    out.mkdir(parents=True, exist_ok=True)
    if (trained / "model").is_dir():  # full fine-tune: nothing to merge
        for p in (trained / "model").iterdir():
            shutil.copy2(p, out / p.name)
        return {"merged_from": "full fine-tune (copied)"}
    from peft import PeftModel

    torch_dtype = getattr(torch, dtype)
    base = load_model(base_model, trust_remote_code=trust_remote_code, dtype=torch_dtype)
    model = PeftModel.from_pretrained(base, str(trained / "adapter")).merge_and_unload()
    model.to(torch_dtype)
    model.save_pretrained(str(out), safe_serialization=True)
    load_tokenizer(str(trained / "adapter")).save_pretrained(str(out))
    return {"merged_from": "lora adapter", "dtype": dtype,
            "parameters": sum(p.numel() for p in model.parameters())}


def build(run: StageRun) -> dict[str, Any]:
    from newt.models import resolve

    recipe = run.recipe
    meta = merge(resolve(recipe.base_model), run.upstream["trained"], Path(run.workdir) / "model",
                 dtype=recipe.merge.dtype, trust_remote_code=recipe.trust_remote_code)
    meta["bytes"] = sum(p.stat().st_size for p in (Path(run.workdir) / "model").iterdir())
    return meta


def model_dir(merged_artifact: Path) -> Path:
    return Path(merged_artifact) / "model"
