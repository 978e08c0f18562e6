"""`newt chat RECIPE`: talk to the model of one stage of a recipe, as it is in the store.

    newt chat recipes/demo.yaml                       # interactive, the merged model
    newt chat recipes/demo.yaml --stage quantized --prompt "gaehge"
    newt chat recipes/vlm.yaml --image cat.png --prompt "What colour is it?"

The stage's artifact is looked up under the recipe's current key (`newt plan` says the same); nothing is built, and a
stage that is not built is a clear message naming the command that builds it. `base` is the recipe's base model,
`trained` the base with the trained LoRA adapter applied (no merge) or the full fine-tune, `merged` and
`quantized`/`quantized_<method>` load their folders. Prompts are rendered with the recipe's chat template
(`newt.templates.template_for`, as in training and evaluation) with the generation prompt, and replies stream token
by token through transformers' `TextIteratorStreamer`. The interactive loop keeps the conversation (each turn is
rendered with the ones before it); `/reset` forgets it, `/exit` or end of input (Ctrl-D) quits.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from threading import Thread
from typing import Any, TextIO

from newt.config import Recipe

PROMPT = "you> "
REPLY = "assistant> "


class ChatError(ValueError):
    pass


@dataclass
class Loaded:
    model: Any
    tokenizer: Any  # the text tokenizer
    processor: Any | None  # a vision-language model's processor (tokenizer + image processor)
    template: str
    where: str  # what was loaded, for the banner


def stage_folder(recipe: Recipe, stage: str, store: Any) -> Path:
    """The committed artifact of `stage` under the recipe's current key; never builds."""
    from newt.pipeline import nodes, plan

    known = [n for n in nodes(recipe) if n in ("trained", "merged") or n.startswith("quantized")]
    if stage not in known:
        raise ChatError(f"--stage {stage!r}: choose base or one of {', '.join(known)}")
    info = plan(recipe, (stage,))[stage]
    found = store.lookup(info.stage, info.key)
    if not found.hit:
        upto = ",".join(n for n in nodes(recipe) if n in ("dataset", "prepared", "trained", "merged")
                        or n == stage)
        raise ChatError(f"the {stage} stage of recipe {recipe.name} is not built for its current key "
                        f"{info.key[:12]}… ({found.reason}); build it first: newt run {recipe.source or recipe.name + '.yaml'} "
                        f"--stages {upto}")
    return store.local_path(info.stage, info.key)


def load(recipe: Recipe, stage: str, store: Any) -> Loaded:
    from newt import models, templates

    if recipe.rl == "reward":
        raise ChatError(f"recipe {recipe.name} trains a reward model (rl: reward): it scores replies, it does not "
                        "write them; chat with a policy recipe instead")
    trust = recipe.trust_remote_code
    base = recipe.tokenizer_config or recipe.base_model
    if stage == "base":
        model, source = models.load_model(recipe.base_model, trust_remote_code=trust, dtype="float32"), base
        where = f"base model {recipe.base_model}"
    else:
        folder = stage_folder(recipe, stage, store)
        where = f"{stage} artifact {folder}"
        if stage == "trained" and (folder / "adapter").is_dir():
            from peft import PeftModel

            model = PeftModel.from_pretrained(models.load_model(recipe.base_model, trust_remote_code=trust,
                                                                dtype="float32"), str(folder / "adapter"))
            source = str(folder / "adapter")
        elif stage.startswith("quantized"):
            from newt.quantize import load_quantized

            model, _ = load_quantized(folder / "model")
            source = str(folder / "model")
        else:
            source = str(folder / "model")
            model = models.load_model(source, trust_remote_code=trust, dtype="float32")
    processor = None
    if recipe.processor_type:
        processor = models.load_processor(source, recipe.processor_type, trust_remote_code=trust)
        tokenizer = processor.tokenizer
    else:
        tokenizer = models.load_tokenizer(source, trust_remote_code=trust)
    import torch

    if torch.cuda.is_available() and not stage.startswith("quantized"):  # quantized folders pick their own device
        model.to("cuda")
    model.eval()
    try:
        template = templates.template_for(recipe, processor or tokenizer)
    except templates.TemplateError as exc:  # a base model without a template: say so, as training would
        raise ChatError(str(exc)) from None
    return Loaded(model, tokenizer, processor, template, where)


def encode(loaded: Loaded, messages: list[dict], images: list[Any]) -> dict[str, Any]:
    """Model inputs for the conversation so far, ending with the generation prompt."""
    renderer = loaded.processor or loaded.tokenizer
    text = renderer.apply_chat_template(messages, chat_template=loaded.template, tokenize=False,
                                        add_generation_prompt=True)
    if loaded.processor is not None:
        return dict(loaded.processor(text=text, images=images or None, return_tensors="pt"))
    return dict(loaded.tokenizer(text, add_special_tokens=False, return_tensors="pt"))


def user_message(text: str, image: bool, multimodal: bool) -> dict[str, Any]:
    if not multimodal:
        return {"role": "user", "content": text}
    parts = [{"type": "image"}] if image else []
    return {"role": "user", "content": [*parts, {"type": "text", "text": text}]}


def reply(loaded: Loaded, inputs: dict[str, Any], out: TextIO, *, max_new_tokens: int, temperature: float) -> str:
    """Generate on a thread and write the text to `out` as it streams; return it whole."""
    from transformers import TextIteratorStreamer

    tok = loaded.tokenizer
    streamer = TextIteratorStreamer(tok, skip_prompt=True, skip_special_tokens=True)
    device = next(loaded.model.parameters()).device
    kwargs = {k: v.to(device) for k, v in inputs.items()}
    sampling = {"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False}
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    worker = Thread(target=loaded.model.generate, kwargs={
        **kwargs, "streamer": streamer, "max_new_tokens": max_new_tokens, "pad_token_id": pad,
        "eos_token_id": tok.eos_token_id, **sampling})
    worker.start()
    pieces = []
    for piece in streamer:
        pieces.append(piece)
        out.write(piece)
        out.flush()
    worker.join()
    out.write("\n")
    out.flush()
    return "".join(pieces)


def open_image(path: str | None) -> Any:
    if path is None:
        return None
    from PIL import Image

    file = Path(path).expanduser()
    if not file.is_file():
        raise ChatError(f"--image {path!r}: no such file; give the path of a PNG or JPEG image")
    try:
        return Image.open(file).convert("RGB")
    except OSError as exc:
        raise ChatError(f"--image {path!r} is not an image PIL can read ({exc})") from None


def run(recipe: Recipe, stage: str, store: Any, *, prompt: str | None = None, image: str | None = None,
        max_new_tokens: int = 256, temperature: float = 0.0, stdin: TextIO | None = None,
        stdout: TextIO | None = None) -> int:
    """One `--prompt` answered, or the interactive loop on stdin/stdout. Returns the exit code."""
    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout
    picture = open_image(image)
    if picture is not None and not recipe.processor_type:
        raise ChatError(f"--image: recipe {recipe.name} is a text model (no processor_type); drop --image")
    loaded = load(recipe, stage, store)
    multimodal = loaded.processor is not None
    settings = {"max_new_tokens": max_new_tokens, "temperature": temperature}
    if prompt is not None:
        messages = [user_message(prompt, picture is not None, multimodal)]
        reply(loaded, encode(loaded, messages, [picture] if picture else []), stdout, **settings)
        return 0
    print(f"newt chat: {recipe.name}, {loaded.where}. /reset forgets the conversation, /exit or Ctrl-D quits.",
          file=stdout, flush=True)
    messages: list[dict] = []
    images: list[Any] = []
    while True:
        stdout.write(PROMPT)
        stdout.flush()
        line = stdin.readline()
        if not line:  # end of input
            stdout.write("\n")
            return 0
        text = line.strip()
        if text in ("/exit", "/quit"):
            return 0
        if text == "/reset":
            messages, images = [], []
            continue
        if not text:
            continue
        first = picture is not None and not images  # the image goes with the first turn of a conversation
        messages.append(user_message(text, first, multimodal))
        if first:
            images.append(picture)
        stdout.write(REPLY)
        answer = reply(loaded, encode(loaded, messages, images), stdout, **settings)
        messages.append({"role": "assistant", "content": answer if not multimodal
                         else [{"type": "text", "text": answer}]})
