"""What every preset shares: the tiny vocabulary's reserved ids, the text config fields, the
word-level tokenizers (no hub access) and random-weight model construction."""

from __future__ import annotations

import torch

TINY_VOCAB = 128
IMAGE_TOKEN, VIDEO_TOKEN, VISION_START, VISION_END = 100, 101, 102, 103


def text_config(g, **extra) -> dict:
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


def random_model(cls, config, dtype, seed: int, device):
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
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers  # on use, with transformers: only a built tokenizer needs it
    from transformers import PreTrainedTokenizerFast  # on use: transformers takes seconds to load

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

