"""A vision-language recipe through the ordinary assets: images from a relative path and from the row's `images`
column are expanded by the processor at prepare time, masked by the same scanner, stored as bytes, and a tiny LLaVA
(`builtin:tiny-llava`: CLIP tower + projector + Llama) trains one step on CPU through `prepared` → `trained`."""

from __future__ import annotations

import io
import json
from pathlib import Path

import dagster as dg
import numpy as np
import pytest
from PIL import Image

from definitions import build_definitions
from newt.config import RecipeError, parse_recipe
from newt.masking import IGNORE_INDEX
from newt.prepare import load_prepared
from resources.store import NewtStore

COLOURS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255)}
IMAGE_TOKENS = 4  # (28 / 14)² patches of the tiny CLIP tower


def write_image_dataset(root: Path, n: int = 12) -> Path:
    """n chats about a coloured square; even rows name the picture in the part (relative path), odd rows in the
    row's `images` column (absolute path) with a bare {"type": "image"} part."""
    (root / "img").mkdir(parents=True, exist_ok=True)
    for name, rgb in COLOURS.items():
        Image.fromarray(np.full((40, 50, 3), rgb, dtype=np.uint8)).save(root / "img" / f"{name}.png")
    rows = []
    for i in range(n):
        name = list(COLOURS)[i % 3]
        part = {"type": "image", "path": f"img/{name}.png"} if i % 2 == 0 else {"type": "image"}
        row = {"messages": [
            {"role": "user", "content": [part, {"type": "text", "text": f"Colour {i}?"}]},
            {"role": "assistant", "content": [{"type": "text", "text": name}]},
        ]}
        if i % 2:
            row["images"] = [str(root / "img" / f"{name}.png")]
        rows.append(row)
    data = root / "vlm.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return data


RECIPE = """\
base_model: builtin:tiny-llava
processor_type: AutoProcessor
datasets:
  - path: {data}
sequence_len: 64
val_set_size: 2
adapter: lora
lora_r: 4
lora_alpha: 8
micro_batch_size: 4
max_steps: 1
logging_steps: 1
"""


@pytest.mark.slow
def test_tiny_vlm_trains_one_step_through_prepared_and_trained(tmp_path: Path) -> None:
    data = write_image_dataset(tmp_path / "data")
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    (recipes / "vlm.yaml").write_text(RECIPE.format(data=data))
    store = tmp_path / "store"
    defs = build_definitions(recipes, NewtStore(root=str(store)))
    selection = [a for a in defs.assets if a.key.path[-1] in ("dataset", "prepared", "trained", "merged")]
    result = dg.materialize(selection, resources=defs.resources, instance=dg.DagsterInstance.ephemeral())
    assert result.success
    meta = {e.materialization.asset_key.path[-1]: e.materialization.metadata
            for e in result.get_asset_materialization_events()}

    # prepared: every row kept with its one image; media ids masked; the answer and its end marker trained
    prepared = meta["prepared"]
    assert prepared["rows_train"].value == 10 and prepared["rows_validation"].value == 2
    assert prepared["audit"].value["failure_count"] == 0
    folder = Path(prepared["artifact"].value)
    train = load_prepared(folder, "train")
    assert set(train.column_names) == {"input_ids", "labels", "messages", "source", "images"}
    from newt.models import load_processor

    proc = load_processor("builtin:tiny-llava")
    tok = proc.tokenizer
    image_id, im_end = tok.convert_tokens_to_ids("<image>"), tok.convert_tokens_to_ids("<|im_end|>")
    for row in train:
        ids, labels = row["input_ids"], row["labels"]
        assert ids.count(image_id) == IMAGE_TOKENS and len(row["images"]) == 1
        assert all(lab == IGNORE_INDEX for t, lab in zip(ids, labels) if t == image_id)
        trained = [lab for lab in labels if lab != IGNORE_INDEX]
        answer = json.loads(row["messages"])[1]["content"][0]["text"]
        assert trained == tok(answer, add_special_tokens=False)["input_ids"] + [im_end]
        assert json.loads(row["messages"])[0]["content"][0] == {"type": "image"}  # no paths or bytes in messages
        picture = np.asarray(Image.open(io.BytesIO(row["images"][0])))
        assert tuple(picture[0, 0]) == COLOURS[answer]  # the stored image is the row's own

    # trained: one optimizer step of the LLaVA model under accelerate, adapter + processor saved
    trained = meta["trained"]
    assert trained["global_step"].value == 1 and trained["method"].value == "sft"
    assert np.isfinite(trained["final_loss"].value)
    out = Path(trained["artifact"].value)
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    assert (out / "adapter" / "processor_config.json").is_file()

    # merged: a plain LLaVA folder with its processor, loading without PEFT
    import transformers

    merged = Path(meta["merged"]["artifact"].value) / "model"
    assert type(transformers.AutoProcessor.from_pretrained(merged)).__name__ == "LlavaProcessor"
    model = transformers.AutoModelForImageTextToText.from_pretrained(merged)
    assert type(model).__name__ == "LlavaForConditionalGeneration"


def test_vlm_collator_pads_and_turns_bytes_into_pixels() -> None:
    from newt.models import load_processor
    from newt.train.sft import VisionCollator

    proc = load_processor("builtin:tiny-llava")
    buf = io.BytesIO()
    Image.fromarray(np.full((40, 50, 3), 200, dtype=np.uint8)).save(buf, format="PNG")
    batch = VisionCollator(proc)([
        {"input_ids": [1, 2, 3], "labels": [-100, 2, 3], "images": [buf.getvalue()]},
        {"input_ids": [4, 5], "labels": [4, 5], "images": []},
    ])
    pad = proc.tokenizer.pad_token_id
    assert batch["input_ids"].tolist() == [[1, 2, 3], [4, 5, pad]]
    assert batch["labels"].tolist() == [[-100, 2, 3], [4, 5, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert tuple(batch["pixel_values"].shape) == (1, 3, 28, 28)


def test_multimodal_recipes_refuse_packing_and_rl() -> None:
    base = "base_model: builtin:tiny-llava\nprocessor_type: AutoProcessor\ndatasets: [{path: x.jsonl}]\n"
    with pytest.raises(RecipeError, match="sample_packing cannot pack multimodal rows"):
        parse_recipe(base + "sample_packing: true\n")
    with pytest.raises(RecipeError, match="supervised fine-tuning only"):
        parse_recipe(base + "rl: dpo\n")


def test_a_missing_image_names_the_row(tmp_path: Path) -> None:
    from newt.cache import Store
    from newt.pipeline import plan, run_stage
    from newt.prepare import PrepareError

    data = write_image_dataset(tmp_path / "data", n=4)
    (tmp_path / "data" / "img" / "blue.png").unlink()  # row 2 names img/blue.png
    recipe = parse_recipe(RECIPE.format(data=data) + "dataset_num_proc: 1\n")
    store = Store(str(tmp_path / "store"))
    keys = plan(recipe, ("prepared",))
    run_stage(recipe, "dataset", store, keys=keys)
    with pytest.raises(PrepareError, match=r"datasets\[0\] .*vlm.jsonl\) row 2: its images could not be processed"):
        run_stage(recipe, "prepared", store, keys=keys)


def test_an_axolotl_multimodal_config_loads_as_it_stands() -> None:
    # The keys Axolotl's multimodal examples set (examples/llava, qwen2-vl style): AutoProcessor, prepare skipped,
    # unused columns kept, no packing. newt honours the first and accepts the others as already true.
    recipe = parse_recipe(
        "base_model: builtin:tiny-llava\nprocessor_type: AutoProcessor\nskip_prepare_dataset: true\n"
        "remove_unused_columns: false\nsample_packing: false\nmodel_type: AutoModelForImageTextToText\n"
        "datasets:\n  - path: x.jsonl\n    type: chat_template\n"
    )
    assert recipe.processor_type == "AutoProcessor" and not recipe.sample_packing
    notes = "\n".join(recipe.notes)
    assert "skip_prepare_dataset: " in notes and "remove_unused_columns: " in notes
    with pytest.raises(RecipeError, match="image_size"):
        parse_recipe("base_model: builtin:tiny-llava\nprocessor_type: AutoProcessor\nimage_size: 512\n"
                     "datasets: [{path: x.jsonl}]\n")


def test_an_unknown_processor_type_is_named(tmp_path: Path) -> None:
    from newt.models import load_processor

    with pytest.raises(ValueError, match="processor_type: 'AutoProcesor' is not a transformers processor class; "
                                         "did you mean 'AutoProcessor'"):
        load_processor("builtin:tiny-llava", "AutoProcesor")
    with pytest.raises(ValueError, match="not a vision-language model, so remove processor_type"):
        load_processor("builtin:tiny-llama")


def test_truncation_never_cuts_through_an_image(tmp_path: Path) -> None:
    from newt.cache import Store
    from newt.pipeline import plan, run_stage

    write_image_dataset(tmp_path / "data", n=1)  # the pictures
    img = {"type": "image", "path": "img/red.png"}
    rows = [
        # image in the first turn; the cut at 36 falls in the answer (tokens 24-41): truncated, kept
        {"messages": [{"role": "user", "content": [img, {"type": "text", "text": "Q"}]},
                      {"role": "assistant", "content": "a long answer here"}]},
        # image tokens at 34-37 (after a first exchange): a cut at 36 would split them, so the row is dropped
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
                      {"role": "user", "content": [img, {"type": "text", "text": "Q"}]},
                      {"role": "assistant", "content": "x"}]},
    ]
    data = tmp_path / "data" / "cut.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    recipe = parse_recipe(f"base_model: builtin:tiny-llava\nprocessor_type: AutoProcessor\ndatasets:\n"
                          f"  - path: {data}\nsequence_len: 36\n")
    store = Store(str(tmp_path / "store"))
    keys = plan(recipe, ("prepared",))
    run_stage(recipe, "dataset", store, keys=keys)
    out = run_stage(recipe, "prepared", store, keys=keys)
    assert out.metadata["rows_too_long"] == 1 and out.metadata["rows_truncated"] == 1
    (row,) = load_prepared(Path(out.uri), "train")
    proc_image = 260  # <image> in builtin:tiny-llava (256 bytes + 1 merge + 3 ChatML tokens)
    assert len(row["input_ids"]) == 36 and row["input_ids"].count(proc_image) == IMAGE_TOKENS
    assert json.loads(row["messages"])[1]["content"] == "a long answer here"


def test_image_references_base64_and_leftovers() -> None:
    import base64

    from newt.masking.multimodal import image_bytes, image_refs

    buf = io.BytesIO()
    Image.fromarray(np.full((4, 4, 3), 7, dtype=np.uint8)).save(buf, format="PNG")
    png = buf.getvalue()
    raw, url = base64.b64encode(png).decode(), "data:image/png;base64," + base64.b64encode(png).decode()
    conv = [{"role": "user", "content": [{"type": "image", "base64": raw}, {"type": "image", "url": url},
                                         {"type": "image"}]}]
    refs = image_refs(conv, ["from-column.png"])
    assert [image_bytes(r) for r in refs[:2]] == [png, png] and refs[2] == "from-column.png"
    with pytest.raises(ValueError, match=r'1 image\(s\) more than its messages have image parts \({"type": "image"}\)'):
        image_refs(conv, ["a.png", "b.png"])
