"""Random-weight models with real architectures, built from configs (no hub access).

Used by the tests (tiny sizes), by `stc bench` (real geometries) and as a fallback demo model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

TINY_VOCAB = 128
IMAGE_TOKEN, VIDEO_TOKEN, VISION_START, VISION_END = 100, 101, 102, 103


@dataclass(frozen=True)
class LlavaOnevisionGeometry:
    image_size: int
    patch_size: int
    vision_hidden: int
    vision_intermediate: int
    vision_layers: int
    vision_heads: int
    text_hidden: int
    text_intermediate: int
    text_layers: int
    text_heads: int
    text_kv_heads: int
    vocab_size: int = TINY_VOCAB


LLAVA_OV_GEOMETRIES = {
    # SigLIP-so400m (384 px, patch 14, 729 tokens, width 1152, 26 layers) + Qwen2-0.5B.
    "llava-ov-0.5b": LlavaOnevisionGeometry(384, 14, 1152, 4304, 26, 16, 896, 4864, 24, 14, 2, 151936),
    # Same SigLIP + Qwen2-7B.
    "llava-ov-7b": LlavaOnevisionGeometry(384, 14, 1152, 4304, 26, 16, 3584, 18944, 28, 28, 4, 152064),
    # SigLIP geometry at a quarter of the width, Qwen2-0.5B width with fewer layers: quick runs.
    "llava-ov-0.5b-narrow": LlavaOnevisionGeometry(384, 14, 288, 1076, 26, 4, 896, 4864, 8, 14, 2, 151936),
    "llava-ov-7b-narrow": LlavaOnevisionGeometry(384, 14, 288, 1076, 26, 4, 896, 4864, 8, 14, 2, 152064),
    # Test size: 28 px / patch 7 -> 16 ViT tokens, 4 LLM tokens per frame.
    "llava-ov-tiny": LlavaOnevisionGeometry(28, 7, 32, 64, 2, 4, 32, 64, 2, 4, 2),
}


def llava_onevision_config(geometry: LlavaOnevisionGeometry | str):
    from transformers import LlavaOnevisionConfig

    g = LLAVA_OV_GEOMETRIES[geometry] if isinstance(geometry, str) else geometry
    tiny_vocab = g.vocab_size <= TINY_VOCAB
    text = {
        "model_type": "qwen2",
        "vocab_size": g.vocab_size,
        "hidden_size": g.text_hidden,
        "intermediate_size": g.text_intermediate,
        "num_hidden_layers": g.text_layers,
        "num_attention_heads": g.text_heads,
        "num_key_value_heads": g.text_kv_heads,
        "max_position_embeddings": 32768,
    }
    if tiny_vocab:
        text.update(pad_token_id=0, bos_token_id=1, eos_token_id=2)
    vision = {
        "model_type": "siglip_vision_model",
        "hidden_size": g.vision_hidden,
        "intermediate_size": g.vision_intermediate,
        "num_hidden_layers": g.vision_layers,
        "num_attention_heads": g.vision_heads,
        "image_size": g.image_size,
        "patch_size": g.patch_size,
        "vision_use_head": False,
    }
    image_token, video_token = (IMAGE_TOKEN, VIDEO_TOKEN) if tiny_vocab else (151646, 151647)
    return LlavaOnevisionConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=image_token,
        video_token_id=video_token,
        image_grid_pinpoints=[[g.image_size, g.image_size]],
        vision_feature_layer=-1,
        vision_feature_select_strategy="full",
    )


def build_llava_onevision(geometry: LlavaOnevisionGeometry | str, dtype=torch.float32, seed: int = 0):
    """A random-weight LlavaOnevisionForConditionalGeneration in eval mode."""
    from transformers import LlavaOnevisionForConditionalGeneration

    torch.manual_seed(seed)
    model = LlavaOnevisionForConditionalGeneration(llava_onevision_config(geometry))
    return model.to(dtype).eval()


SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>", "<|im_start|>", "<|im_end|>")

CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'video' %}<video>{% elif part['type'] == 'image' %}<image>"
    "{% elif part['type'] == 'text' %}{{ '\\n' + part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_word_tokenizer(words, vocab_size: int = TINY_VOCAB, reserved_ids: dict[str, int] | None = None):
    """A word-level fast tokenizer with a Qwen-style chat template.

    Text splits into runs of letters, single digits and single other characters (newline is a
    token; spaces and tabs only separate). Ids: the special tokens, then `words`, then the
    multimodal tokens (`<image>`, `<video>`, `<|vision_start|>`, `<|vision_end|>`) at
    `reserved_ids` (default: the presets' ids 100-103, which the words must stay below), then
    filler tokens up to `vocab_size`.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS)}
    for word in words:
        if word not in vocab:
            vocab[word] = len(vocab)
    names = ("<image>", "<video>", "<|vision_start|>", "<|vision_end|>")
    if reserved_ids is None:
        reserved_ids = dict(zip(names, (IMAGE_TOKEN, VIDEO_TOKEN, VISION_START, VISION_END)))
    if len(vocab) > min(reserved_ids.values()):
        raise ValueError(f"{len(vocab)} tokens do not fit below the reserved id {min(reserved_ids.values())}")
    vocab.update(reserved_ids)
    filler = len(vocab)
    while len(vocab) < vocab_size:
        while filler in vocab.values():
            filler += 1
        vocab[f"<extra_{filler}>"] = filler
        filler += 1
    model = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    model.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex("[ \t]+"), "removed"),
            pre_tokenizers.Split(Regex("[A-Za-z]+|[0-9]|[^A-Za-z0-9]"), "isolated"),
        ]
    )
    model.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    model.add_special_tokens([*SPECIAL_TOKENS, *reserved_ids])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=model,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="<|im_end|>",
        unk_token="<unk>",
        extra_special_tokens={"image_token": "<image>", "video_token": "<video>"},
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer
