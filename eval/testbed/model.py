"""The testbed model's build: its word-level tokenizer (with one token per multiple-choice
option) and its small LLaVA-OneVision config, and saving it in Hugging Face format."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from stc.eval.presets import build_word_tokenizer
from stc.eval.synthetic.episodes import OPTION_LETTERS, QUADRANTS, VOCABULARY
from stc.eval.synthetic.scene import COLOURS, GLYPHS, SHAPES
from stc.integrations.processing import VideoLLMProcessor

TEXT_WORDS = ("user", "assistant", "system", "\n", *VOCABULARY)
RESERVED_IDS = {"<image>": 110, "<video>": 111, "<|vision_start|>": 112, "<|vision_end|>": 113}
VOCAB_SIZE = 128  # words, special and multimodal tokens; the option tokens come after
# One token per multiple-choice option ("B. red", "A. top left", "C. 7"; a description such as
# "B. red letter K" reads "B. red", "letter", "K": options of one question never share a colour),
# and the model is trained to answer multiple choice by repeating the chosen option ("B. red ..."),
# whose first word is the letter the scorer reads. With the answer letter alone as the target, a
# 4-layer LM must find the seen value among the options and copy the letter bound to it (two
# composed attention steps); it did not learn that within the CPU budget (multiple choice stayed at
# chance; a text-only look-up stayed at chance after 400 steps x 64). Scoring option tokens is
# additive instead (the value seen + the options listed) and is learned within a few hundred steps.
# The benchmark's prompts and answers are unchanged.
OPTION_TOKENS = tuple(f"{letter}. {value}" for letter in OPTION_LETTERS for value in (*COLOURS, *SHAPES, *GLYPHS, *QUADRANTS))


@dataclass(frozen=True)
class TestbedArchitecture:
    """The testbed's widths and geometry. A frame of `image_size` px is cut into patches of
    `patch_size` px; LLaVA-OneVision pools them 2 x 2, so the LLM sees a `grid` x `grid` of
    visual tokens per frame (patch 12: 4 x 4, the shipped v1 model; 8: 6 x 6; 6: 8 x 8, v2)."""

    image_size: int = 96
    patch_size: int = 6  # 16 x 16 patches, 8 x 8 = 64 visual tokens per frame after 2 x 2 pooling
    vision_hidden: int = 128
    vision_intermediate: int = 512
    vision_layers: int = 4
    vision_heads: int = 4
    text_hidden: int = 256
    text_intermediate: int = 768
    text_layers: int = 4
    text_heads: int = 8
    text_kv_heads: int = 4

    def __post_init__(self) -> None:
        if self.patch_size < 1 or self.image_size % (2 * self.patch_size):
            raise ValueError(f"image size {self.image_size} px must be a multiple of twice the patch size "
                             f"({self.patch_size} px): the 2 x 2 pooling needs an even number of patches a side")

    @property
    def grid(self) -> int:
        """Visual tokens per side of a frame, as the LLM sees them (after the 2 x 2 pooling)."""
        return self.image_size // self.patch_size // 2

    @property
    def tokens_per_frame(self) -> int:
        return self.grid**2

    @classmethod
    def with_grid(cls, grid: int, **fields) -> "TestbedArchitecture":
        """The architecture whose frames give `grid` x `grid` LLM tokens (its patch size chosen)."""
        image_size = fields.get("image_size", cls.image_size)
        if grid < 1 or image_size % (2 * grid):
            raise ValueError(f"a {grid} x {grid} token grid needs an image size divisible by {2 * grid} px, "
                             f"not {image_size}")
        return cls(**{**fields, "patch_size": image_size // (2 * grid)})


def testbed_tokenizer():
    from tokenizers import AddedToken  # on use, with transformers: only a built tokenizer needs it

    tokenizer = build_word_tokenizer(TEXT_WORDS, VOCAB_SIZE, RESERVED_IDS)
    tokenizer.add_tokens([AddedToken(token, normalized=False) for token in OPTION_TOKENS])
    return tokenizer


def testbed_config(arch: TestbedArchitecture = TestbedArchitecture()):
    from transformers import LlavaOnevisionConfig  # on use: transformers takes seconds to load

    tokenizer = testbed_tokenizer()
    return LlavaOnevisionConfig(
        text_config={
            "model_type": "qwen2",
            "vocab_size": len(tokenizer),
            "hidden_size": arch.text_hidden,
            "intermediate_size": arch.text_intermediate,
            "num_hidden_layers": arch.text_layers,
            "num_attention_heads": arch.text_heads,
            "num_key_value_heads": arch.text_kv_heads,
            "max_position_embeddings": 4096,
            "pad_token_id": tokenizer.pad_token_id,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "tie_word_embeddings": True,
        },
        vision_config={
            "model_type": "siglip_vision_model",
            "hidden_size": arch.vision_hidden,
            "intermediate_size": arch.vision_intermediate,
            "num_hidden_layers": arch.vision_layers,
            "num_attention_heads": arch.vision_heads,
            "image_size": arch.image_size,
            "patch_size": arch.patch_size,
            "vision_use_head": False,
        },
        image_token_id=RESERVED_IDS["<image>"],
        video_token_id=RESERVED_IDS["<video>"],
        image_grid_pinpoints=[[arch.image_size, arch.image_size]],
        vision_feature_layer=-1,
        vision_feature_select_strategy="full",
        tie_word_embeddings=True,
    )


def save(model, tokenizer, preprocessing, out_dir: Path) -> None:
    model.eval()
    model.save_pretrained(out_dir)
    VideoLLMProcessor(tokenizer, preprocessing).save_pretrained(out_dir)
    model.train()


__all__ = ["OPTION_TOKENS", "RESERVED_IDS", "TEXT_WORDS", "VOCAB_SIZE", "TestbedArchitecture", "save", "testbed_config",
           "testbed_tokenizer"]
