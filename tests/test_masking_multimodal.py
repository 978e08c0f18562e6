"""Multimodal rows: the same scanner on ids after a real transformers processor expanded the media.

Processors are real transformers classes at tiny sizes with the tokenizers of masking_fixtures
(PIL image processors: torchvision is not installed). Pixtral-style ids come from mistral-common,
Mistral's own reference encoder for Pixtral (tekken, [IMG]/[IMG_BREAK]/[IMG_END]).
"""

from __future__ import annotations

import functools
import http.server
import threading

import masking_fixtures as F
import numpy as np
import pytest
import transformers as T
from PIL import Image
from test_masking_families import runs

from newt.masking import IGNORE_INDEX, Masker, audit, boundaries_for, build_labels, media_ids
from newt.masking.multimodal import process_and_mask

# Llama 3.2 Vision's documented format: an image part renders as <|image|> inside the user turn.
LLAMA32_VISION = (
    "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
    "{% if m['content'] is string %}{{ m['content'] | trim }}{% else %}{% for p in m['content'] %}"
    "{% if p['type'] == 'image' %}<|image|>{% else %}{{ p['text'] | trim }}{% endif %}{% endfor %}{% endif %}"
    "<|eot_id|>{% endfor %}"
)


class _Qwen2VLImagesOnly(T.Qwen2VLProcessor):
    """Qwen2VLProcessor without its video processor, which needs torchvision (not installed here)."""

    @classmethod
    def get_attributes(cls):
        return ["image_processor", "tokenizer"]


@functools.cache
def qwen2vl_processor():
    tok = F.qwen2vl()
    ip = T.Qwen2VLImageProcessorPil(min_pixels=28 * 28 * 4, max_pixels=28 * 28 * 4)
    return _Qwen2VLImagesOnly(image_processor=ip, tokenizer=tok, chat_template=tok.chat_template)


@functools.cache
def gemma3_processor():
    tok = F.gemma3()
    ip = T.Gemma3ImageProcessorPil(size={"height": 28, "width": 28})
    return T.Gemma3Processor(
        image_processor=ip, tokenizer=tok, chat_template=tok.chat_template, image_seq_length=4
    )


@functools.cache
def mllama_processor():
    ip = T.MllamaImageProcessorPil(size={"height": 28, "width": 28}, max_image_tiles=1)
    return T.MllamaProcessor(image_processor=ip, tokenizer=F.llama3("llama3_2"), chat_template=LLAMA32_VISION)


def _image(color: int = 0) -> Image.Image:
    return Image.fromarray(np.full((56, 56, 3), color, dtype=np.uint8))


def _conv(image_part: dict) -> list[dict]:
    return [
        {"role": "user", "content": [image_part, {"type": "text", "text": "What colour?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "Black."}]},
    ]


PROCESSORS = {"qwen2-vl": qwen2vl_processor, "gemma3": gemma3_processor, "llama3.2-vision": mllama_processor}


@pytest.mark.parametrize("name", PROCESSORS)
def test_media_ids_are_masked_and_knobs_apply(name):
    proc = PROCESSORS[name]()
    conv = _conv({"type": "image", "image": _image()})
    media = set(media_ids(proc))
    tok = proc.tokenizer
    answer = F.ids(tok, "Black.")

    m = Masker(proc)
    out = process_and_mask(proc, [conv], m)
    ids, labels = out["input_ids"][0], out["labels"][0]
    n_media = sum(t in media for t in ids)
    # Qwen2-VL and Gemma 3 expand the image into placeholders between begin/end markers; Llama 3.2
    # Vision keeps one <|image|> and feeds the pixels through cross-attention.
    assert n_media == {"qwen2-vl": 6, "gemma3": 6, "llama3.2-vision": 1}[name]
    assert "pixel_values" in out
    assert runs(labels)[-1][:-1] == answer and len(runs(labels)) == 1  # "Black." + the turn's end marker
    assert audit([conv], out["input_ids"], out["labels"], proc, m)["failures"] == []

    # train_on_inputs: everything is trained except the media (and pad) ids.
    everything = process_and_mask(proc, [conv], Masker(proc, train_on_inputs=True))["labels"][0]
    assert [t for t, lab in zip(ids, everything) if lab == IGNORE_INDEX] == [t for t in ids if t in media]

    # roles_to_train / train_on_eos reach the multimodal path: the user's text, no end markers.
    user = process_and_mask(proc, [conv], Masker(proc, roles_to_train=["user"], train_on_eos="none"))[
        "labels"
    ][0]
    assert tok.decode([t for t in user if t != IGNORE_INDEX]).strip() == "What colour?"
    assert all(lab == IGNORE_INDEX for t, lab in zip(ids, user) if t in media)


def test_pixtral_style_ids_from_mistral_common():
    from mistral_common.protocol.instruct.messages import AssistantMessage, ImageChunk, TextChunk, UserMessage
    from mistral_common.protocol.instruct.request import ChatCompletionRequest

    req = ChatCompletionRequest(
        messages=[
            UserMessage(content=[ImageChunk(image=_image()), TextChunk(text="What colour?")]),
            AssistantMessage(content=[TextChunk(text="Black.")]),
        ]
    )
    ids = F._mistral_common("tekken").encode_chat_completion(req).tokens
    tok = F.mistral("tekken")
    media = media_ids(tok)
    assert {tok.convert_ids_to_tokens(i) for i in media} >= {"[IMG]", "[IMG_BREAK]", "[IMG_END]"}
    bs = boundaries_for(tok)
    # <s> [INST] [IMG]x3 [IMG_BREAK] ... [IMG_END] What colour? [/INST] Black. </s>
    assert ids[:3] == [1, 3, 10] and 12 in ids and 13 in ids
    assert runs(build_labels(ids, bs, ignore_ids=media)) == [F.ids(tok, "Black.") + [2]]
    user = build_labels(ids, bs, roles_to_train=["user"], train_on_inputs=False, ignore_ids=media)
    assert tok.decode([t for t in user if t != IGNORE_INDEX]) == "What colour?"
    everything = build_labels(ids, bs, train_on_inputs=True, ignore_ids=media)
    assert all((lab == IGNORE_INDEX) == (t in media) for t, lab in zip(ids, everything))


def test_images_from_a_path_column_and_a_url(tmp_path):
    proc = qwen2vl_processor()
    _image(0).save(tmp_path / "black.png")
    _image(255).save(tmp_path / "white.png")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/white.png"
        convs = [_conv({"type": "image"}), _conv({"type": "image", "url": url})]
        m = Masker(proc)
        out = process_and_mask(proc, convs, m, images=[[str(tmp_path / "black.png")], []])
    finally:
        server.shutdown()
    pixels = np.asarray(out["pixel_values"])
    assert pixels.shape[0] == 2 * 16  # 2 images x 16 patches of 14 px (56x56 px)
    assert pixels[:16].mean() < pixels[16:].mean()  # black from the path column, white from the URL
    assert all(runs(lab) == runs(out["labels"][0]) for lab in out["labels"])
