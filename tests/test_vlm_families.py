"""Every vision-language family newt builds a tiny model for (`builtin:tiny-<family>`, newt/tiny_vlm/) masks,
trains, merges, quantizes and evaluates through the assets.

Per family: the exact labels of a two-turn row with an image for each `train_on_eos` and for `train_on_inputs`
(the processor expands the image, the same scanner labels the ids, every media id is -100), then one recipe through
dataset → prepared → trained → merged → quantized → evaluation in Dagster: one optimizer step that changes
parameters, a merged folder that reloads with the family's auto class, a quantized model whose vision tower stayed
in full precision, and an answer generated for each held-out row by every evaluated variant.

Families not here: see docs/masking.md, "Vision-language families". Llama 4 masks and prepares, but its forward
raises in transformers 5.24.0 (an upstream bug, `Family.forward_bug`): its pipeline and collator tests assert that
exact error and xfail, so they fail (and tell) once the upstream fix lands.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import numpy as np
import pytest
from PIL import Image

from definitions import build_definitions
from newt.masking import IGNORE_INDEX, Masker
from newt.masking.multimodal import process_and_mask
from resources.store import NewtStore

X = IGNORE_INDEX


@dataclass(frozen=True)
class Family:
    model: str
    end: str  # the token that closes every turn
    media: tuple[str, ...]  # the tokens an image becomes
    image_size: int
    model_class: str
    towers: tuple[str, ...]  # the modules quantization keeps in full precision
    user_end: bool = True  # the user turn ends with `end` (Mistral's `[/INST]` opens the answer instead)
    forward_bug: str | None = None  # an upstream bug that breaks the model's forward in this transformers


FAMILIES = {
    "llava": Family("builtin:tiny-llava", "<|im_end|>", ("<image>",), 28, "LlavaForConditionalGeneration",
                    ("model.multi_modal_projector", "model.vision_tower")),
    "gemma3": Family("builtin:tiny-gemma3", "<end_of_turn>", ("<start_of_image>", "<image_soft_token>",
                                                               "<end_of_image>"), 28,
                     "Gemma3ForConditionalGeneration", ("model.multi_modal_projector", "model.vision_tower")),
    "smolvlm": Family("builtin:tiny-smolvlm", "<end_of_utterance>",
                      ("<fake_token_around_image>", "<global-img>", "<image>"), 56,
                      "Idefics3ForConditionalGeneration", ("model.connector", "model.vision_model")),
    "llama3_2_vision": Family("builtin:tiny-llama3_2_vision", "<|eot_id|>", ("<|image|>",), 28,
                              "MllamaForConditionalGeneration",
                              ("model.multi_modal_projector", "model.vision_model")),
    "pixtral": Family("builtin:tiny-pixtral", "</s>", ("[IMG]", "[IMG_BREAK]", "[IMG_END]"), 32,
                      "LlavaForConditionalGeneration", ("model.multi_modal_projector", "model.vision_tower"),
                      user_end=False),
    "mistral3": Family("builtin:tiny-mistral3", "</s>", ("[IMG]", "[IMG_BREAK]", "[IMG_END]"), 42,
                       "Mistral3ForConditionalGeneration", ("model.multi_modal_projector", "model.vision_tower"),
                       user_end=False),
    "llama4": Family("builtin:tiny-llama4", "<|eot|>", ("<|image_start|>", "<|image|>", "<|patch|>", "<|image_end|>"),
                     56, "Llama4ForConditionalGeneration", ("multi_modal_projector", "vision_model"),
                     # transformers 5.24.0 modeling_llama4.py:1318 reads `outputs.image_outputs` off the language
                     # model's MoeCausalLMOutputWithPast, so every forward raises AttributeError.
                     forward_bug="'MoeCausalLMOutputWithPast' object has no attribute 'image_outputs'"),
    "lfm2_vl": Family("builtin:tiny-lfm2_vl", "<|im_end|>", ("<|image_start|>", "<image>", "<|image_end|>"), 64,
                      "Lfm2VlForConditionalGeneration", ("model.multi_modal_projector", "model.vision_tower")),
}
COLOURS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255)}


def conversation(name: str, image_part: dict | None = None) -> list[dict]:
    return [
        {"role": "user", "content": [image_part or {"type": "image"}, {"type": "text", "text": "Colour?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": name}]},
        {"role": "user", "content": [{"type": "text", "text": "Sure?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "yes"}]},
    ]


def square(rgb: tuple[int, int, int], size: int) -> Image.Image:
    return Image.fromarray(np.full((size, size, 3), rgb, dtype=np.uint8))


@pytest.fixture(scope="module")
def processors():
    from newt.models import load_processor

    cache: dict = {}

    def get(family: str):
        if family not in cache:
            cache[family] = load_processor(FAMILIES[family].model)
        return cache[family]

    return get


def runs(labels: list[int]) -> list[list[int]]:
    out, cur = [], []
    for t in labels:
        if t == X:
            out, cur = (out + [cur] if cur else out), []
        else:
            cur.append(t)
    return out + ([cur] if cur else [])


def expected_runs(tok, family: Family, train_on_eos: str) -> list[list[int]]:
    """The supervised spans of the two-turn row: each answer, with the end marker as `train_on_eos` says."""
    red, yes = tok.encode("red", add_special_tokens=False), tok.encode("yes", add_special_tokens=False)
    end = [tok.convert_tokens_to_ids(family.end)]
    return {"turn": [red + end, yes + end], "none": [red, yes], "last": [red, yes + end],
            # "all" also trains the user turns' end markers, where the user turn has its own
            "all": [end, red + end, end, yes + end] if family.user_end else [red + end, yes + end]}[train_on_eos]


@pytest.mark.parametrize("family", list(FAMILIES), ids=list(FAMILIES))
def test_labels_of_a_two_turn_row_with_an_image(family: str, processors) -> None:
    spec, proc = FAMILIES[family], processors(family)
    tok = proc.tokenizer
    media = [tok.convert_tokens_to_ids(t) for t in spec.media]
    image = [[square(COLOURS["red"], spec.image_size)]]
    for train_on_eos in ("turn", "all", "last", "none"):
        out = process_and_mask(proc, [conversation("red")], Masker(proc, train_on_eos=train_on_eos), images=image)
        ids, labels = out["input_ids"][0], out["labels"][0]
        assert runs(labels) == expected_runs(tok, spec, train_on_eos), train_on_eos
        assert all(m in ids for m in media)
        assert all(lab == X for t, lab in zip(ids, labels) if t in media)
    out = process_and_mask(proc, [conversation("red")], Masker(proc, train_on_inputs=True), images=image)
    ids, labels = out["input_ids"][0], out["labels"][0]
    assert labels == [X if t in media else t for t in ids]
    assert ids.count(tok.convert_tokens_to_ids(spec.media[-1])) >= 1 and tok.pad_token_id not in ids


def write_dataset(root: Path, size: int, n: int = 6) -> Path:
    """n two-turn chats about a coloured square (a relative image path in the first user turn)."""
    (root / "img").mkdir(parents=True, exist_ok=True)
    for name, rgb in COLOURS.items():
        square(rgb, size).save(root / "img" / f"{name}.png")
    names = [list(COLOURS)[i % 3] for i in range(n)]
    rows = [{"messages": conversation(c, {"type": "image", "path": f"img/{c}.png"})} for c in names]
    data = root / "vlm.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return data


RECIPE = """\
base_model: {model}
processor_type: AutoProcessor
datasets:
  - path: {data}
sequence_len: 128
val_set_size: 2
adapter: lora
lora_r: 4
lora_alpha: 8
learning_rate: 0.01
micro_batch_size: 2
max_steps: 1
logging_steps: 1
quantize:
  outputs: [int8_weight_only]
eval:
  max_samples: 2
  max_new_tokens: 3
"""


@pytest.mark.slow
@pytest.mark.parametrize("family", list(FAMILIES), ids=list(FAMILIES))
def test_family_trains_merges_quantizes_and_evaluates_through_the_assets(family: str, tmp_path: Path,
                                                                          processors) -> None:
    import torch
    import transformers

    from newt.models import local_snapshot
    from newt.prepare import load_prepared
    from newt.quantize import load_quantized

    spec = FAMILIES[family]
    data = write_dataset(tmp_path / "data", spec.image_size)
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    (recipes / f"{family}.yaml").write_text(RECIPE.format(model=spec.model, data=data))
    defs = build_definitions(recipes, NewtStore(root=str(tmp_path / "store")))
    stages = ("dataset", "prepared", "trained", "merged", "quantized", "evaluation")
    if spec.forward_bug:  # masking and prepared still checked below; training stops at the upstream forward
        stages = ("dataset", "prepared")
    selection = [a for a in defs.assets if a.key.path[-1] in stages]
    result = dg.materialize(selection, resources=defs.resources, instance=dg.DagsterInstance.ephemeral())
    assert result.success
    meta = {e.materialization.asset_key.path[-1]: e.materialization.metadata
            for e in result.get_asset_materialization_events()}
    assert set(stages) <= set(meta)

    # prepared: the masks of every row are the labels above (default train_on_eos: turn), images stored as bytes
    tok = processors(family).tokenizer
    media = {tok.convert_tokens_to_ids(t) for t in spec.media}
    train = load_prepared(Path(meta["prepared"]["artifact"].value), "train")
    assert meta["prepared"]["audit"].value["failure_count"] == 0 and len(train) == 4
    for row in train:
        answer = json.loads(row["messages"])[1]["content"][0]["text"]
        want = expected_runs(tok, spec, "turn")
        want[0] = tok.encode(answer, add_special_tokens=False) + want[0][-1:]
        assert runs(row["labels"]) == want
        assert all(lab == X for t, lab in zip(row["input_ids"], row["labels"]) if t in media)
        assert tuple(np.asarray(Image.open(io.BytesIO(row["images"][0])))[0, 0]) == COLOURS[answer]
    if spec.forward_bug:
        pytest.xfail(f"{spec.model_class} cannot train in this transformers: {spec.forward_bug}")

    # trained: one step; merged: parameters changed, the family's own class reloads it with its processor
    assert meta["trained"]["global_step"].value == 1 and np.isfinite(meta["trained"]["final_loss"].value)
    merged_dir = Path(meta["merged"]["artifact"].value) / "model"
    merged = transformers.AutoModelForImageTextToText.from_pretrained(merged_dir)
    assert type(merged).__name__ == spec.model_class
    assert type(transformers.AutoProcessor.from_pretrained(merged_dir)).__name__ == type(processors(family)).__name__
    base = transformers.AutoModelForImageTextToText.from_pretrained(local_snapshot(spec.model)).state_dict()
    changed = [k for k, v in merged.state_dict().items() if not torch.equal(v, base[k])]
    assert changed

    # quantized: int8 weight-only on the language model, the vision tower and projector in full precision
    qdir = Path(meta["quantized"]["artifact"].value) / "model"
    info = json.loads((qdir / "quantize.json").read_text())
    assert info["method"] == "int8_weight_only" and info["quantized_modules"] > 0
    assert info["full_precision_modules"] == list(spec.towers)
    qmodel, qproc = load_quantized(qdir)
    assert type(qmodel).__name__ == spec.model_class and hasattr(qproc, "image_processor")
    keep = info["full_precision_modules"]
    kept = [p for n, p in qmodel.named_parameters() if any(n.startswith(k + ".") for k in keep)]
    assert kept and all(type(p).__name__ in ("Parameter", "Tensor") and p.dtype == torch.float32 for p in kept)

    # evaluation: every variant scored the held-out rows with their images, one generated answer per row
    results = meta["evaluation"]
    out = Path(results["artifact"].value)
    generations = json.loads((out / "generations.json").read_text())
    assert set(generations) == {"base", "merged", "quantized"}
    assert all(len(answers) == 2 for answers in generations.values())
    scores = json.loads((out / "results.json").read_text())
    assert all(np.isfinite(scores[v]["loss"]) and scores[v]["rows"] == 2 for v in generations)


def test_vlm_quantize_takes_torchao_methods_only(tmp_path: Path) -> None:
    from newt.models import local_snapshot
    from newt.quantize import QuantizeError, quantize

    with pytest.raises(QuantizeError, match=r"'bnb_4bit' does not support the vision-language architecture "
                                            r"'LlavaForConditionalGeneration'.*int8_weight_only"):
        quantize(local_snapshot("builtin:tiny-llava"), tmp_path / "q", "bnb_4bit")


@pytest.mark.parametrize("family", list(FAMILIES), ids=list(FAMILIES))
def test_collator_gives_the_forward_what_the_processor_gives(family: str, processors) -> None:
    """A batch of a row with an image and a text-only row: padded ids and labels, the processor's pixel layout,
    token types where the processor names them, Mllama's cross-attention mask; the model's forward accepts it."""
    import torch
    import transformers

    from newt.models import local_snapshot
    from newt.train.collate import VisionCollator

    spec, proc = FAMILIES[family], processors(family)
    tok = proc.tokenizer
    masker = Masker(proc)
    with_image = process_and_mask(proc, [conversation("red")], masker, images=[[square(COLOURS["red"],
                                                                                     spec.image_size)]])
    text_only = [{"role": "user", "content": [{"type": "text", "text": "Hi"}]},
                 {"role": "assistant", "content": [{"type": "text", "text": "ok"}]}]
    plain = process_and_mask(proc, [text_only], masker)
    rows = [{"input_ids": with_image["input_ids"][0], "labels": with_image["labels"][0],
             "images": with_image["image_bytes"][0]},
            {"input_ids": plain["input_ids"][0], "labels": plain["labels"][0], "images": []}]
    batch = VisionCollator(proc)(rows)
    n, k = len(rows[0]["input_ids"]), len(rows[1]["input_ids"])
    assert batch["input_ids"][1].tolist() == rows[1]["input_ids"] + [tok.pad_token_id] * (n - k)
    assert batch["labels"][1].tolist() == rows[1]["labels"] + [X] * (n - k)
    assert batch["attention_mask"].sum(dim=1).tolist() == [n, k]
    image_id = tok.convert_tokens_to_ids(spec.media[-1] if family != "gemma3" else "<image_soft_token>")
    keys = set(batch) - {"input_ids", "labels", "attention_mask"}
    if family == "gemma3":
        assert keys == {"pixel_values", "token_type_ids"}
        assert batch["token_type_ids"].tolist() == (batch["input_ids"] == image_id).long().tolist()
        assert tuple(batch["pixel_values"].shape) == (1, 3, 28, 28)
    elif family == "llama3_2_vision":
        assert keys == {"pixel_values", "aspect_ratio_ids", "aspect_ratio_mask", "cross_attention_mask"}
        mask = batch["cross_attention_mask"]
        first = rows[0]["input_ids"].index(image_id)
        assert tuple(mask.shape) == (2, n, 1, 1) and tuple(batch["pixel_values"].shape) == (2, 1, 1, 3, 28, 28)
        assert mask[0, :, 0, 0].tolist() == [0] * first + [1] * (n - first) and int(mask[1].sum()) == 0
    elif family == "smolvlm":
        assert keys == {"pixel_values", "pixel_attention_mask"}
        assert tuple(batch["pixel_values"].shape) == (2, 1, 3, 56, 56)
    elif family in ("pixtral", "mistral3"):
        # The image at the size the processor resized it to: Mistral 3 pads the 42-pixel image to the merged
        # 28-pixel cells (56), as it did when it counted the row's [IMG] tokens (the image processor alone gives 42).
        side = {"pixtral": 32, "mistral3": 56}[family]
        assert keys == {"pixel_values", "image_sizes"} and batch["image_sizes"].tolist() == [[side, side]]
        assert tuple(batch["pixel_values"].shape) == (1, 3, side, side)
    elif family == "lfm2_vl":
        # NaFlex: the image as a sequence of 16 flattened 16-pixel patches (a 4 × 4 grid), all valid
        assert keys == {"pixel_values", "pixel_attention_mask", "spatial_shapes"}
        assert tuple(batch["pixel_values"].shape) == (1, 16, 3 * 16 * 16)
        assert batch["spatial_shapes"].tolist() == [[4, 4]] and batch["pixel_attention_mask"].tolist() == [[1] * 16]
    elif family == "llama4":
        # Llama 4's image processor normalizes in bfloat16 (Meta's reference); the collator casts to the model's dtype
        assert keys == {"pixel_values"} and tuple(batch["pixel_values"].shape) == (1, 3, 56, 56)
        assert batch["pixel_values"].dtype == torch.bfloat16
        assert VisionCollator(proc, torch.float32)(rows)["pixel_values"].dtype == torch.float32
    else:
        assert keys == {"pixel_values"} and tuple(batch["pixel_values"].shape) == (1, 3, 28, 28)
    model = transformers.AutoModelForImageTextToText.from_pretrained(local_snapshot(spec.model))
    batch = VisionCollator(proc, model.dtype)(rows)  # as training builds it
    if spec.forward_bug:
        with pytest.raises(AttributeError, match=spec.forward_bug):  # fails here once upstream fixes it
            model(**batch)
        pytest.xfail(f"{spec.model_class}'s forward in this transformers: {spec.forward_bug}")
    assert torch.isfinite(model(**batch).loss)


def test_lfm2_vl_tiled_image_headers_are_media() -> None:
    """LFM2-VL splits a large image into tiles, each behind `<|img_row_R_col_C|>`, plus `<|img_thumbnail|>` and the
    thumbnail's tokens: with train_on_inputs every one of them is -100 like the image tokens (builtin MEDIA_TOKENS).
    The tiny builder does not tile; this processor does, on the tiny tokenizer with LFM2-VL's grid tokens added."""
    from transformers import Lfm2VlImageProcessor, Lfm2VlProcessor

    from newt.models import load_processor

    base = load_processor("builtin:tiny-lfm2_vl")
    tok = base.tokenizer
    grid = [f"<|img_row_{r}_col_{c}|>" for r in (1, 2) for c in (1, 2)]
    tok.add_special_tokens({"additional_special_tokens": grid}, replace_extra_special_tokens=False)
    # 32-pixel tiles of (32 / 16)² patches → 1 token each; a 64 × 128 image is over the 4-token budget, so 1 × 2
    # tiles and a thumbnail in the budget (32 × 64: 2 tokens)
    images = Lfm2VlImageProcessor(do_image_splitting=True, encoder_patch_size=16, downsample_factor=2,
                                  min_image_tokens=4, max_image_tokens=4, tile_size=32, min_tiles=2, max_tiles=4,
                                  max_pixels_tolerance=1.0)
    proc = Lfm2VlProcessor(image_processor=images, tokenizer=tok, chat_template=base.chat_template)
    image = Image.fromarray(np.full((64, 128, 3), COLOURS["red"], dtype=np.uint8))
    conv = conversation("red")[:2]
    out = process_and_mask(proc, [conv], Masker(proc, train_on_inputs=True), images=[[image]])
    ids, labels = out["input_ids"][0], out["labels"][0]
    media = ["<|image_start|>", "<|img_row_1_col_1|>", "<image>", "<|img_row_1_col_2|>", "<image>",
             "<|img_thumbnail|>", "<image>", "<image>", "<|image_end|>"]
    first = ids.index(tok.convert_tokens_to_ids("<|image_start|>"))
    assert tok.convert_ids_to_tokens(ids[first:first + len(media)]) == media
    media_ids = set(tok.convert_tokens_to_ids(media))
    assert labels == [X if t in media_ids else t for t in ids]
