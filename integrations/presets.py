"""Random-weight models with real architectures, built from configs (no hub access).

Used by the tests (tiny sizes), by `stc bench` (real geometries) and as a fallback demo model.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

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


def _text_config(g, **extra) -> dict:
    """The text_config fields every geometry sets (their LLMs are Qwen2 / Qwen3 / Qwen3.5), plus `extra`."""
    return {
        "vocab_size": g.vocab_size,
        "hidden_size": g.text_hidden,
        "intermediate_size": g.text_intermediate,
        "num_hidden_layers": g.text_layers,
        "num_attention_heads": g.text_heads,
        "num_key_value_heads": g.text_kv_heads,
        "max_position_embeddings": 32768,
        **extra,
    }


def llava_onevision_config(geometry: LlavaOnevisionGeometry | str):
    from transformers import LlavaOnevisionConfig

    g = LLAVA_OV_GEOMETRIES[geometry] if isinstance(geometry, str) else geometry
    tiny_vocab = g.vocab_size <= TINY_VOCAB
    text = _text_config(g, model_type="qwen2")
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


def build_llava_onevision(geometry: LlavaOnevisionGeometry | str, dtype=torch.float32, seed: int = 0, device="cpu"):
    """A random-weight LlavaOnevisionForConditionalGeneration in eval mode, initialised on
    `device` (a 7B model initialises in seconds on a GPU, minutes on a CPU)."""
    from transformers import LlavaOnevisionForConditionalGeneration

    return _random_model(LlavaOnevisionForConditionalGeneration, llava_onevision_config(geometry), dtype, seed, device)


def _random_model(cls, config, dtype, seed: int, device):
    """`cls(config)` with weights drawn from `seed` on `device`, in `dtype` and eval mode."""
    torch.manual_seed(seed)
    with torch.device(device):
        model = cls(config)
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


def build_word_tokenizer(
    words,
    vocab_size: int = TINY_VOCAB,
    reserved_ids: dict[str, int] | None = None,
    media_tokens: tuple[str, str] = ("<image>", "<video>"),
    chat_template: str | None = None,
):
    """A word-level fast tokenizer with a Qwen-style chat template.

    Text splits into runs of letters, single digits and single other characters (newline is a
    token; spaces and tabs only separate). Ids: the special tokens, then `words`, then the
    multimodal tokens (`<image>`, `<video>`, `<|vision_start|>`, `<|vision_end|>`) at
    `reserved_ids` (default: the presets' ids 100-103, which the words must stay below), then
    filler tokens up to `vocab_size`. `media_tokens` name the image and video tokens (they must
    be among the reserved ones); `chat_template` defaults to the LLaVA-style `CHAT_TEMPLATE`.
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
        extra_special_tokens={"image_token": media_tokens[0], "video_token": media_tokens[1]},
    )
    tokenizer.chat_template = CHAT_TEMPLATE if chat_template is None else chat_template
    return tokenizer


PRESET_WORDS = ("user", "assistant", "system", "\n", "What", "what", "is", "happening", "in", "the", "video", "?",
                "Describe", "scene", "colour", "how", "many", "people", "are", "there", ".", ",", "A", "B", "C", "D")


def preset_processor(image_size: int):
    """A word-level tokenizer with a chat template and the frame preprocessing of a preset."""
    from .processing import FramePreprocessing, VideoLLMProcessor

    return VideoLLMProcessor(build_word_tokenizer(PRESET_WORDS), FramePreprocessing(image_size, image_size))


def _llava_preset(name: str):
    def build(dtype=torch.float32, seed: int = 0, device="cpu"):
        model = build_llava_onevision(name, dtype=dtype, seed=seed, device=device)
        return model, preset_processor(LLAVA_OV_GEOMETRIES[name].image_size)

    return build


# name -> builder(dtype, seed, device) returning (model, processor); random weights, real architectures.
PRESETS = {name: _llava_preset(name) for name in LLAVA_OV_GEOMETRIES}


def build_preset(name: str, dtype=torch.float32, seed: int = 0, device="cpu"):
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; presets: {', '.join(sorted(PRESETS))}")
    return PRESETS[name](dtype=dtype, seed=seed, device=device)


# -- Qwen2-VL / Qwen2.5-VL --------------------------------------------------------------------

QWEN_SPECIAL_IDS = {"image": 151655, "video": 151656, "vision_start": 151652, "vision_end": 151653}
QWEN_TINY_IDS = {"image": IMAGE_TOKEN, "video": VIDEO_TOKEN, "vision_start": VISION_START, "vision_end": VISION_END}


@dataclass(frozen=True)
class QwenVLGeometry:
    """Sizes of a Qwen2-VL / Qwen2.5-VL model (family = config model_type)."""

    family: str  # "qwen2_vl" or "qwen2_5_vl"
    vision_depth: int
    vision_hidden: int
    vision_intermediate: int
    vision_heads: int
    patch_size: int
    text_hidden: int
    text_intermediate: int
    text_layers: int
    text_heads: int
    text_kv_heads: int
    mrope_section: tuple[int, int, int]
    vocab_size: int = TINY_VOCAB
    window_size: int = 112  # Qwen2.5-VL only
    fullatt_block_indexes: tuple[int, ...] = (7, 15, 23, 31)  # Qwen2.5-VL only
    tokens_per_second: int = 2  # Qwen2.5-VL only
    rope_theta: float = 1e6
    tie_word_embeddings: bool = False
    min_pixels: int = 128 * 28 * 28  # frame preprocessing of the preset processor
    max_pixels: int = 768 * 28 * 28


_QWEN25_VISION = dict(vision_depth=32, vision_hidden=1280, vision_intermediate=3420, vision_heads=16, patch_size=14)
_QWEN25_VISION_NARROW = dict(vision_depth=32, vision_hidden=320, vision_intermediate=855, vision_heads=4, patch_size=14)
_QWEN25_3B_TEXT = dict(text_hidden=2048, text_intermediate=11008, text_heads=16, text_kv_heads=2,
                       mrope_section=(16, 24, 24), vocab_size=151936, tie_word_embeddings=True)
_QWEN25_7B_TEXT = dict(text_hidden=3584, text_intermediate=18944, text_heads=28, text_kv_heads=4,
                       mrope_section=(16, 24, 24), vocab_size=152064)

QWEN_VL_GEOMETRIES = {
    # Qwen2.5-VL-3B / 7B: 32-block ViT (width 1280, window 112 px, full attention at 7/15/23/31)
    # + Qwen2.5-3B (36 layers) / Qwen2.5-7B (28 layers).
    "qwen2.5-vl-3b": QwenVLGeometry("qwen2_5_vl", **_QWEN25_VISION, text_layers=36, **_QWEN25_3B_TEXT),
    "qwen2.5-vl-7b": QwenVLGeometry("qwen2_5_vl", **_QWEN25_VISION, text_layers=28, **_QWEN25_7B_TEXT),
    # Same layouts at a quarter of the ViT width (head dim kept) and 8 LLM layers: quick runs.
    "qwen2.5-vl-3b-narrow": QwenVLGeometry("qwen2_5_vl", **_QWEN25_VISION_NARROW, text_layers=8, **_QWEN25_3B_TEXT),
    "qwen2.5-vl-7b-narrow": QwenVLGeometry("qwen2_5_vl", **_QWEN25_VISION_NARROW, text_layers=8, **_QWEN25_7B_TEXT),
    # Test sizes: patch 4, merge 2 -> frames resized to multiples of 8 px; 24 px -> 6x6 patches,
    # 3x3 = 9 LLM tokens per temporal slice; Qwen2.5-VL windows of 2x2 merged tokens (16 px).
    "qwen2-vl-tiny": QwenVLGeometry(
        "qwen2_vl", 2, 32, 64, 4, 4, 32, 64, 2, 4, 2, (2, 1, 1), rope_theta=1e4, min_pixels=8 * 8, max_pixels=32 * 32
    ),
    "qwen2.5-vl-tiny": QwenVLGeometry(
        "qwen2_5_vl", 2, 32, 64, 4, 4, 32, 64, 2, 4, 2, (2, 1, 1), window_size=16, fullatt_block_indexes=(1,),
        tokens_per_second=4, rope_theta=1e4, min_pixels=8 * 8, max_pixels=32 * 32
    ),
}


def qwen_vl_config(geometry: QwenVLGeometry | str):
    """A Qwen2VLConfig or Qwen2_5_VLConfig for a geometry (token ids in the tiny vocab for tiny ones)."""
    from transformers import Qwen2_5_VLConfig, Qwen2VLConfig

    g = QWEN_VL_GEOMETRIES[geometry] if isinstance(geometry, str) else geometry
    tiny_vocab = g.vocab_size <= TINY_VOCAB
    text = _text_config(g, model_type="qwen2", rope_parameters={
        "rope_type": "default", "rope_theta": g.rope_theta, "mrope_section": list(g.mrope_section)})
    text.update(dict(pad_token_id=0, bos_token_id=1, eos_token_id=2) if tiny_vocab
                else dict(pad_token_id=151643, bos_token_id=151643, eos_token_id=151645))
    ids = QWEN_TINY_IDS if tiny_vocab else QWEN_SPECIAL_IDS
    common = dict(
        image_token_id=ids["image"],
        video_token_id=ids["video"],
        vision_start_token_id=ids["vision_start"],
        vision_end_token_id=ids["vision_end"],
        tie_word_embeddings=g.tie_word_embeddings,
    )
    vision = {
        "depth": g.vision_depth,
        "num_heads": g.vision_heads,
        "patch_size": g.patch_size,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
    }
    if g.family == "qwen2_vl":
        vision.update(embed_dim=g.vision_hidden, hidden_size=g.text_hidden, mlp_ratio=g.vision_intermediate // g.vision_hidden)
        return Qwen2VLConfig(text_config=text, vision_config=vision, **common)
    if g.family == "qwen2_5_vl":
        vision.update(
            hidden_size=g.vision_hidden,
            intermediate_size=g.vision_intermediate,
            out_hidden_size=g.text_hidden,
            window_size=g.window_size,
            fullatt_block_indexes=list(g.fullatt_block_indexes),
            tokens_per_second=g.tokens_per_second,
        )
        return Qwen2_5_VLConfig(text_config=text, vision_config=vision, **common)
    raise ValueError(f"unknown Qwen-VL family {g.family!r}")


def build_qwen_vl(geometry: QwenVLGeometry | str, dtype=torch.float32, seed: int = 0, device="cpu"):
    """A random-weight Qwen2VLForConditionalGeneration / Qwen2_5_VLForConditionalGeneration in
    eval mode, initialised on `device`."""
    from transformers import Qwen2_5_VLForConditionalGeneration, Qwen2VLForConditionalGeneration

    config = qwen_vl_config(geometry)
    cls = Qwen2VLForConditionalGeneration if config.model_type == "qwen2_vl" else Qwen2_5_VLForConditionalGeneration
    return _random_model(cls, config, dtype, seed, device)


QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_qwen_word_tokenizer(words, vocab_size: int = TINY_VOCAB):
    """A word-level fast tokenizer (as `build_word_tokenizer`) with Qwen-VL's multimodal tokens
    (`<|image_pad|>`, `<|video_pad|>`, `<|vision_start|>`, `<|vision_end|>` at ids 100-103) and a
    chat template that renders a video as <|vision_start|><|video_pad|><|vision_end|>, as
    Qwen2-VL's does (the processor expands <|video_pad|> to the video's tokens)."""
    names = ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>")
    return build_word_tokenizer(
        words,
        vocab_size=vocab_size,
        reserved_ids=dict(zip(names, (IMAGE_TOKEN, VIDEO_TOKEN, VISION_START, VISION_END))),
        media_tokens=names[:2],
        chat_template=QWEN_CHAT_TEMPLATE,
    )


def qwen_preset_processor(geometry: QwenVLGeometry | str):
    """A word-level Qwen-style tokenizer plus Qwen's video preprocessing for a geometry."""
    from .processing import QwenVideoPreprocessing, VideoLLMProcessor

    g = QWEN_VL_GEOMETRIES[geometry] if isinstance(geometry, str) else geometry
    frames = QwenVideoPreprocessing(min_pixels=g.min_pixels, max_pixels=g.max_pixels, patch_size=g.patch_size)
    return VideoLLMProcessor(build_qwen_word_tokenizer(PRESET_WORDS), frames)


def _qwen_preset(name: str):
    def build(dtype=torch.float32, seed: int = 0, device="cpu"):
        return build_qwen_vl(name, dtype=dtype, seed=seed, device=device), qwen_preset_processor(name)

    return build


PRESETS.update({name: _qwen_preset(name) for name in QWEN_VL_GEOMETRIES})


# -- Qwen3-VL / Qwen3.5 -----------------------------------------------------------------------


@dataclass(frozen=True)
class Qwen3Geometry:
    """Sizes of a Qwen3-VL or Qwen3.5 model (family = config model_type). The vision encoder is
    the same kind in both (learned + rotary positions, full attention per temporal slice, a 2x2
    merger); Qwen3-VL feeds DeepStack taps to the first LLM layers, Qwen3.5's LLM mixes gated
    linear-attention layers with full-attention ones (`layer_types`)."""

    family: str  # "qwen3_vl", "qwen3_vl_moe", "qwen3_5" or "qwen3_5_moe"
    vision_depth: int
    vision_hidden: int
    vision_intermediate: int
    vision_heads: int
    patch_size: int
    position_grid: int  # learned positions on a position_grid x position_grid grid
    text_hidden: int
    text_intermediate: int
    text_layers: int
    text_heads: int
    text_kv_heads: int
    head_dim: int
    mrope_section: tuple[int, int, int]
    deepstack: tuple[int, ...] = ()  # Qwen3-VL only
    full_attention_every: int = 4  # Qwen3.5 only: every 4th LLM layer has full attention
    linear_heads: tuple[int, int] = (16, 32)  # Qwen3.5 only: key / value heads of the linear layers
    linear_head_dim: int = 128
    partial_rotary_factor: float = 1.0
    experts: tuple[int, int, int] = (0, 0, 0)  # MoE families: experts, experts per token, expert width
    vocab_size: int = TINY_VOCAB
    rope_theta: float = 5e6
    tie_word_embeddings: bool = False
    min_pixels: int = 128 * 32 * 32  # frame preprocessing of the preset processor
    max_pixels: int = 768 * 32 * 32


_QWEN3_VISION = dict(vision_depth=27, vision_hidden=1152, vision_intermediate=4304, vision_heads=16, patch_size=16, position_grid=48)
_QWEN3_VISION_NARROW = dict(vision_depth=27, vision_hidden=288, vision_intermediate=1076, vision_heads=4, patch_size=16, position_grid=48)
_QWEN3_VL_8B_TEXT = dict(text_hidden=4096, text_intermediate=12288, text_heads=32, text_kv_heads=8, head_dim=128,
                         mrope_section=(24, 20, 20), deepstack=(8, 16, 24), vocab_size=151936)
_QWEN3_5_9B_TEXT = dict(text_hidden=4096, text_intermediate=12288, text_heads=16, text_kv_heads=4, head_dim=256,
                        mrope_section=(11, 11, 10), partial_rotary_factor=0.25, vocab_size=248320, rope_theta=1e7)

QWEN3_GEOMETRIES = {
    # Qwen3-VL-8B: 27-block ViT (width 1152, patch 16, DeepStack taps after blocks 8/16/24) + a
    # 36-layer Qwen3 LLM (width 4096, 8 KV heads).
    "qwen3-vl-8b": Qwen3Geometry("qwen3_vl", **_QWEN3_VISION, text_layers=36, **_QWEN3_VL_8B_TEXT),
    # Qwen3.5 at a comparable size (the 9B layout of transformers' Qwen3_5Config defaults): the same
    # kind of ViT without DeepStack + 32 LLM layers, 3 gated linear-attention layers to 1 full one.
    "qwen3.5-9b": Qwen3Geometry("qwen3_5", **_QWEN3_VISION, text_layers=32, **_QWEN3_5_9B_TEXT),
    # Quarter-width ViT (head dim kept) and 8 LLM layers: quick runs on a CPU.
    "qwen3-vl-8b-narrow": Qwen3Geometry("qwen3_vl", **_QWEN3_VISION_NARROW, text_layers=8, **_QWEN3_VL_8B_TEXT),
    "qwen3.5-9b-narrow": Qwen3Geometry("qwen3_5", **_QWEN3_VISION_NARROW, text_layers=8, **_QWEN3_5_9B_TEXT),
    # Test sizes: patch 4, merge 2 -> 24 px frames give 3x3 = 9 LLM tokens per temporal slice.
    "qwen3-vl-tiny": Qwen3Geometry("qwen3_vl", 3, 32, 64, 4, 4, 4, 32, 64, 3, 4, 2, 8, (2, 1, 1), deepstack=(0, 1),
                                   rope_theta=1e4, min_pixels=8 * 8, max_pixels=32 * 32),
    "qwen3.5-tiny": Qwen3Geometry("qwen3_5", 2, 32, 64, 4, 4, 4, 32, 64, 4, 4, 2, 16, (2, 1, 1), full_attention_every=2,
                                  linear_heads=(2, 4), linear_head_dim=8, partial_rotary_factor=0.5, rope_theta=1e4,
                                  min_pixels=8 * 8, max_pixels=32 * 32),
}
# The MoE variants at test size: the same, with 4 experts (2 per token) in every LLM layer.
QWEN3_GEOMETRIES["qwen3-vl-moe-tiny"] = replace(QWEN3_GEOMETRIES["qwen3-vl-tiny"], family="qwen3_vl_moe", experts=(4, 2, 32))
QWEN3_GEOMETRIES["qwen3.5-moe-tiny"] = replace(QWEN3_GEOMETRIES["qwen3.5-tiny"], family="qwen3_5_moe", experts=(4, 2, 32))


# family -> (config class, model class) in transformers
QWEN3_CLASSES = {
    "qwen3_vl": ("Qwen3VLConfig", "Qwen3VLForConditionalGeneration"),
    "qwen3_vl_moe": ("Qwen3VLMoeConfig", "Qwen3VLMoeForConditionalGeneration"),
    "qwen3_5": ("Qwen3_5Config", "Qwen3_5ForConditionalGeneration"),
    "qwen3_5_moe": ("Qwen3_5MoeConfig", "Qwen3_5MoeForConditionalGeneration"),
}


def qwen3_config(geometry: Qwen3Geometry | str):
    """A Qwen3VLConfig or Qwen3_5Config for a geometry (token ids in the tiny vocab for tiny ones)."""
    import transformers

    g = QWEN3_GEOMETRIES[geometry] if isinstance(geometry, str) else geometry
    tiny_vocab = g.vocab_size <= TINY_VOCAB
    rope = {"rope_type": "default", "rope_theta": g.rope_theta, "mrope_section": list(g.mrope_section),
            "mrope_interleaved": True}
    if g.partial_rotary_factor != 1.0:
        rope["partial_rotary_factor"] = g.partial_rotary_factor
    text = _text_config(g, head_dim=g.head_dim, rope_parameters=rope)
    vision = {
        "depth": g.vision_depth,
        "hidden_size": g.vision_hidden,
        "intermediate_size": g.vision_intermediate,
        "num_heads": g.vision_heads,
        "patch_size": g.patch_size,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "out_hidden_size": g.text_hidden,
        "num_position_embeddings": g.position_grid**2,
    }
    ids = QWEN_TINY_IDS if tiny_vocab else None
    common = {} if ids is None else dict(
        image_token_id=ids["image"], video_token_id=ids["video"],
        vision_start_token_id=ids["vision_start"], vision_end_token_id=ids["vision_end"],
    )
    text.update(dict(pad_token_id=0, bos_token_id=1, eos_token_id=2) if tiny_vocab else {})
    experts, per_token, width = g.experts
    if g.family == "qwen3_vl_moe":
        text.update(num_experts=experts, num_experts_per_tok=per_token, moe_intermediate_size=width)
    if g.family == "qwen3_5_moe":
        text.update(num_experts=experts, num_experts_per_tok=per_token, moe_intermediate_size=width,
                    shared_expert_intermediate_size=width)
    config_class = getattr(transformers, QWEN3_CLASSES[g.family][0])
    if g.family.startswith("qwen3_vl"):
        vision["deepstack_visual_indexes"] = list(g.deepstack)
        return config_class(text_config=text, vision_config=vision, tie_word_embeddings=g.tie_word_embeddings, **common)
    if g.family.startswith("qwen3_5"):
        text.update(
            layer_types=["full_attention" if (i + 1) % g.full_attention_every == 0 else "linear_attention"
                         for i in range(g.text_layers)],
            linear_num_key_heads=g.linear_heads[0],
            linear_num_value_heads=g.linear_heads[1],
            linear_key_head_dim=g.linear_head_dim,
            linear_value_head_dim=g.linear_head_dim,
        )
        return config_class(text_config=text, vision_config=vision, tie_word_embeddings=g.tie_word_embeddings, **common)
    raise ValueError(f"unknown Qwen3 family {g.family!r}")


def build_qwen3(geometry: Qwen3Geometry | str, dtype=torch.float32, seed: int = 0, device="cpu"):
    """A random-weight Qwen3VLForConditionalGeneration / Qwen3_5ForConditionalGeneration in eval
    mode, initialised on `device`."""
    import transformers

    config = qwen3_config(geometry)
    return _random_model(getattr(transformers, QWEN3_CLASSES[config.model_type][1]), config, dtype, seed, device)


QWEN3_MEAN_STD = (0.5, 0.5, 0.5)  # Qwen3-VL's and Qwen3.5's pixel normalisation
# Qwen3-VL's processor puts "<{seconds:.1f} seconds>" before every temporal slice.
TIMESTAMP_WORDS = ("seconds", "<", ">", *"0123456789")


def qwen3_preset_processor(geometry: Qwen3Geometry | str):
    """A word-level Qwen-style tokenizer (timestamps included) plus Qwen's video preprocessing."""
    from .processing import QwenVideoPreprocessing, VideoLLMProcessor

    g = QWEN3_GEOMETRIES[geometry] if isinstance(geometry, str) else geometry
    frames = QwenVideoPreprocessing(min_pixels=g.min_pixels, max_pixels=g.max_pixels, patch_size=g.patch_size,
                                    mean=QWEN3_MEAN_STD, std=QWEN3_MEAN_STD)
    return VideoLLMProcessor(build_qwen_word_tokenizer(PRESET_WORDS + TIMESTAMP_WORDS), frames)


def _qwen3_preset(name: str):
    def build(dtype=torch.float32, seed: int = 0, device="cpu"):
        return build_qwen3(name, dtype=dtype, seed=seed, device=device), qwen3_preset_processor(name)

    return build


PRESETS.update({name: _qwen3_preset(name) for name in QWEN3_GEOMETRIES})
