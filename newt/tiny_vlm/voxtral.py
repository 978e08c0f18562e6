"""Voxtral (mistralai/Voxtral-Mini-3B-2507): Whisper-style audio encoder → 4 frames stacked per token →
projector → Llama text model. The chat format is mistral-common's V7 instruct tokenizer (a tekken tokenizer;
mistral-common uses no Jinja template): `<s>[INST][BEGIN_AUDIO][AUDIO]×n text[/INST]answer</s>[INST]…`, each clip
padded to 30-second chunks of 375 `[AUDIO]` tokens (12.5 tokens a second). The processor is transformers'
`VoxtralProcessor`: a `WhisperFeatureExtractor` (128 mel bins) and the tekken tokenizer through
`MistralCommonBackend`.

The tekken file is tiny: the 256 byte tokens (no merges) after mistral-common's 1000 special tokens, with
Voxtral's ranks for the tokens it uses (`[AUDIO]` 24, which `VoxtralProcessor` fixes; `[BEGIN_AUDIO]` 25;
`[TRANSCRIBE]` 34; 0–19 are mistral-common's `Tekkenizer.DEPRECATED_SPECIAL_TOKENS`, the others its
`<SPECIAL_{id}>` fillers) and the audio section of Voxtral's tekken.json (16 kHz, 12.5 frames a second, 128 mel
bins, hop 160, window 400, 30 s chunks)."""

from __future__ import annotations

import base64
import json
from pathlib import Path

from newt.tiny_vlm import building

AUDIO_SECONDS = 0.1  # any clip under 30 s becomes one chunk: 375 audio tokens
TOKENS_PER_CHUNK = 375
NUM_SPECIAL = 1000
AUDIO_TOKEN_ID = 24
# mistral-common Tekkenizer.DEPRECATED_SPECIAL_TOKENS (ranks 0–19) and Voxtral's audio/transcription tokens.
NAMED = {0: "<unk>", 1: "<s>", 2: "</s>", 3: "[INST]", 4: "[/INST]", 5: "[AVAILABLE_TOOLS]", 6: "[/AVAILABLE_TOOLS]",
         7: "[TOOL_RESULTS]", 8: "[/TOOL_RESULTS]", 9: "[TOOL_CALLS]", 10: "[IMG]", 11: "<pad>", 12: "[IMG_BREAK]",
         13: "[IMG_END]", 14: "[PREFIX]", 15: "[MIDDLE]", 16: "[SUFFIX]", 17: "[SYSTEM_PROMPT]",
         18: "[/SYSTEM_PROMPT]", 19: "[TOOL_CONTENT]", 24: "[AUDIO]", 25: "[BEGIN_AUDIO]", 34: "[TRANSCRIBE]"}
AUDIO = {"sampling_rate": 16000, "frame_rate": 12.5, "chunk_length_s": 30.0,
         "audio_encoding_config": {"num_mel_bins": 128, "hop_length": 160, "window_size": 400}}


def tekken(path: Path) -> None:
    """A v7 tekken.json with byte tokens only: the pre-tokenizer pattern is mistral-common's own tekken file's."""
    import mistral_common

    shipped = Path(mistral_common.__file__).parent / "data" / "tekken_240911.json"
    pattern = json.loads(shipped.read_text())["config"]["pattern"]
    special = [{"rank": i, "token_str": NAMED.get(i, f"<SPECIAL_{i}>"), "is_control": True}
               for i in range(max(NAMED) + 1)]  # mistral-common fills the rest up to NUM_SPECIAL
    vocab = [{"rank": b, "token_bytes": base64.b64encode(bytes([b])).decode(),
              "token_str": bytes([b]).decode("latin-1")} for b in range(256)]
    config = {"pattern": pattern, "num_vocab_tokens": 256, "default_vocab_size": NUM_SPECIAL + 256,
              "default_num_special_tokens": NUM_SPECIAL, "version": "v7"}
    path.write_text(json.dumps({"config": config, "vocab": vocab, "special_tokens": special, "audio": AUDIO}))


def build(out: Path) -> None:
    import tempfile

    from transformers import (
        MistralCommonBackend,
        VoxtralConfig,
        VoxtralForConditionalGeneration,
        VoxtralProcessor,
        WhisperFeatureExtractor,
    )

    with tempfile.TemporaryDirectory() as tmp:
        tekken(Path(tmp) / "tekken.json")
        tok = MistralCommonBackend.from_pretrained(tmp)
        # Voxtral's preprocessor_config.json: 128 mel bins over 30-second windows of 16 kHz audio.
        features = WhisperFeatureExtractor(feature_size=128, sampling_rate=16000, hop_length=160, chunk_length=30,
                                           n_fft=400)
        processor = VoxtralProcessor(feature_extractor=features, tokenizer=tok)
        text = {**building.text_config(tok), "model_type": "llama"}
        # The encoder's output (1500 frames of d_model) is read as rows of intermediate_size = 4·d_model: 375 tokens
        # per 30-second chunk, as Voxtral's 1280 / 5120.
        audio = {"hidden_size": 32, "intermediate_size": 128, "num_hidden_layers": 1, "num_attention_heads": 2,
                 "num_mel_bins": 128, "max_source_positions": 1500}
        config = VoxtralConfig(text_config=text, audio_config=audio, audio_token_id=AUDIO_TOKEN_ID)
        building.save(VoxtralForConditionalGeneration, config, processor, out)
