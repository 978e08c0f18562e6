"""The `merged` stage: adapter + base model → one safetensors folder with the tokenizer, chat template and
generation config beside the weights (and the processor, for a vision-language model). The result loads with plain
`AutoModelForCausalLM.from_pretrained(folder)` (`AutoModelForMultimodalLM` for a vision- or audio-language model),
no PEFT needed, and is what the quantize/export outputs and the evaluation start from.

- LoRA: the base is loaded in `merge.dtype`, the adapter merged into it (`merge_and_unload`) and saved.
- QLoRA: the adapter was trained against the base as bitsandbytes NF4 saw it, not against the original weights. The
  merge therefore loads the base in NF4 with the same settings as training (`newt.train.child.load_base`), then
  dequantizes it to `merge.dtype` and merges the adapter into those weights: the merged model computes what the
  trained model computed. (Merging into the original full-precision weights instead would add the adapter's
  correction for quantization error on top of weights that have no such error.) The merged folder is a plain,
  unquantized model in `merge.dtype`.
- Full fine-tune: the trained folder already is a complete model; it passes through (copied, no merge), with the
  chat template written into its tokenizer files like the other two.

Merging is deterministic: the same inputs give byte-identical files (tests/test_merge.py), so a rebuilt artifact
has the same digests as the one it replaces.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from newt.stage import StageRun

USES_LIBRARIES = ("bitsandbytes",)  # QLoRA bases load through transformers' BitsAndBytesConfig (newt.codeversion)


def merge(base_model: str, trained: Path, out: Path, *, dtype: str = "float32", adapter: str | None = "lora",
          chat_template: str | None = None, trust_remote_code: bool = False) -> dict[str, Any]:
    """Write the merged model of the `trained` artifact folder into `out` (emptied first); return its metadata.

    `adapter` is the recipe's (`lora`, `qlora`, or None for a full fine-tune); `chat_template`, when given, is
    written into the tokenizer files so the folder carries the template the model was trained with.
    """
    import torch

    from newt.models import load_model, load_tokenizer

    trained, out = Path(trained), Path(out)
    if out.exists():  # a crashed earlier attempt: start clean so the result never mixes two runs
        shutil.rmtree(out)
    out.mkdir(parents=True)
    torch_dtype = getattr(torch, dtype)
    if (trained / "model").is_dir():  # full fine-tune: nothing to merge
        for p in sorted((trained / "model").iterdir()):
            if p.is_file():
                shutil.copy2(p, out / p.name)
        meta: dict[str, Any] = {"merged_from": "full fine-tune (passed through)"}
        tokenizer_source = out
    else:
        if not (trained / "adapter").is_dir():
            raise FileNotFoundError(f"{trained} has neither adapter/ (LoRA, QLoRA) nor model/ (full fine-tune); "
                                    "re-materialize the trained stage")
        from peft import PeftModel

        kwargs: dict[str, Any] = {}
        if adapter == "qlora":
            kwargs["quantization_config"] = qlora_base_config(torch_dtype)
        if _adapter_task(trained / "adapter") == "SEQ_CLS":  # a reward model (rl: reward): base + its score head
            from newt.models import load_scorer

            base = load_scorer(base_model, dtype=torch_dtype, trust_remote_code=trust_remote_code,
                               tokenizer=str(trained / "adapter"))
        else:
            base = load_model(base_model, trust_remote_code=trust_remote_code, dtype=torch_dtype, **kwargs)
        if adapter == "qlora":
            base = base.dequantize()  # NF4 → the values training saw, as plain nn.Linear weights
        base.to(torch_dtype)
        from newt.tokens import resize_model  # new tokens (special_tokens/tokens): the adapter's vocabulary

        resize_model(base, load_tokenizer(str(trained / "adapter"), trust_remote_code=trust_remote_code))
        model = PeftModel.from_pretrained(base, str(trained / "adapter")).merge_and_unload()
        model.to(torch_dtype)
        model.save_pretrained(str(out), safe_serialization=True)
        meta = {"merged_from": f"{adapter or 'lora'} adapter", "dtype": dtype,
                "parameters": sum(p.numel() for p in model.parameters())}
        if adapter == "qlora":
            meta["dequantized_from"] = "nf4 (bitsandbytes, double quantization)"
        tokenizer_source = trained / "adapter"
    tokenizer = load_tokenizer(str(tokenizer_source), trust_remote_code=trust_remote_code)
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    tokenizer.save_pretrained(str(out))
    if (Path(tokenizer_source) / "processor_config.json").is_file():  # a vision-language model keeps its processor
        from transformers import AutoProcessor

        from newt.models import tokenizer_kwargs

        processor = AutoProcessor.from_pretrained(str(tokenizer_source), trust_remote_code=trust_remote_code,
                                                  **tokenizer_kwargs(tokenizer_source))
        if chat_template is not None:
            processor.chat_template = chat_template
        processor.save_pretrained(str(out))
    _generation_config(out, tokenizer)
    return {**meta, "files": sorted(p.name for p in out.iterdir())}


def _adapter_task(adapter: Path) -> str | None:
    import json

    config = adapter / "adapter_config.json"
    return json.loads(config.read_text()).get("task_type") if config.is_file() else None


def qlora_base_config(compute_dtype: Any) -> Any:
    """The NF4 settings QLoRA training loads the base with (mirrors `newt.train.child.load_base`)."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=compute_dtype)


def _generation_config(out: Path, tokenizer: Any) -> None:
    """Make sure generation stops where the chat template ends a turn: eos/pad from the tokenizer when unset."""
    from transformers import GenerationConfig

    try:
        config = GenerationConfig.from_pretrained(str(out))
    except OSError:
        config = GenerationConfig.from_model_config(_model_config(out))
    if config.eos_token_id is None and tokenizer.eos_token_id is not None:
        config.eos_token_id = tokenizer.eos_token_id
    if config.pad_token_id is None and tokenizer.pad_token_id is not None:
        config.pad_token_id = tokenizer.pad_token_id
    config.save_pretrained(str(out))


def _model_config(out: Path) -> Any:
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(str(out))


def build(run: StageRun) -> dict[str, Any]:
    from newt import templates
    from newt.models import load_tokenizer, resolve

    recipe = run.recipe
    template = templates.explicit_template(recipe)
    if template is None:  # the tokenizer's own: recorded as is, and an error here if there is none at all
        template = templates.template_for(recipe, load_tokenizer(recipe.tokenizer_config or recipe.base_model,
                                                                 trust_remote_code=recipe.trust_remote_code))
    out = Path(run.workdir) / "model"
    meta = merge(resolve(recipe.base_model), run.upstream["trained"], out, dtype=recipe.merge.dtype,
                 adapter=recipe.adapter, chat_template=template, trust_remote_code=recipe.trust_remote_code)
    meta["bytes"] = sum(p.stat().st_size for p in out.iterdir())
    return meta


def model_dir(merged_artifact: Path) -> Path:
    return Path(merged_artifact) / "model"
