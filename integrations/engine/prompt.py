"""Text in and out of the engine: the chat template split around the video (`PromptTemplate`),
text around a frame's tokens (`BlockText`), multiple-choice options lettered one way for the
engine and the benchmarks (`lettered_options`, `format_options`), greedy answer decoding and the
answer's text in pieces as it is decoded (`AnswerText`).

Torch only at import (the decoder driver is only named), so that the benchmarks' scoring modules
letter options without loading transformers."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from stc.integrations.adapters.decoder import DecoderDriver

QUESTION_MARK = "STCQUESTIONSLOT"
MC_INSTRUCTION = "Answer with the option's letter from the given choices directly."


class PromptTemplate:
    """The chat template split around the video: header (the sink) and question suffix. Public:
    whatever builds a prompt the engine's way (the testbed's training, for one) uses this."""

    def __init__(self, tokenizer, placeholder: str, system_prompt: str | None):
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError("the tokenizer has no chat template; the engine builds its prompts from it")
        messages = [] if system_prompt is None else [{"role": "system", "content": system_prompt}]
        messages.append({"role": "user", "content": [{"type": "video"}, {"type": "text", "text": QUESTION_MARK}]})
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        if placeholder not in text or QUESTION_MARK not in text:
            raise ValueError(f"the chat template did not render the video placeholder {placeholder!r}")
        first = text.index(placeholder)
        last = text.rindex(placeholder) + len(placeholder)
        self.header, self.suffix = text[:first], text[last:]
        self.tokenizer = tokenizer
        if not self.header_ids():
            raise ValueError("the chat template puts nothing before the video: the engine needs a header as its sink")

    def ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def header_ids(self) -> list[int]:
        return self.ids(self.header)

    def prompt_ids(self, question: str) -> list[int]:
        return self.ids(self.suffix.replace(QUESTION_MARK, question))


class BlockText:
    """Text an adapter puts around a frame's tokens (e.g. a timestamp): token ids and their
    input embeddings [L, D]."""

    def __init__(self, template: PromptTemplate, driver: DecoderDriver):
        self.template, self.driver = template, driver

    def ids(self, text: str) -> list[int]:
        return self.template.ids(text)

    def embed(self, ids: list[int]) -> Tensor:
        return self.driver.embed(torch.tensor([ids], device=self.driver.embed.weight.device))[0]


def option_letter(index: int) -> str:
    """"A" for option 0, "B" for option 1, ..."""
    return chr(ord("A") + int(index))


def lettered_options(options: Sequence, keep_lettered: bool = True) -> list[str]:
    """Each option as "A. option", "B. option", ...; with `keep_lettered`, an option that already
    starts with its own letter ("B." or "B)" for the second) is kept as it is."""
    lettered = []
    for i, option in enumerate(options):
        option, letter = str(option), option_letter(i)
        kept = keep_lettered and option[:2] in (f"{letter}.", f"{letter})")
        lettered.append(option if kept else f"{letter}. {option}")
    return lettered


def format_options(question: str, options) -> str:
    """The engine's multiple-choice prompt: the question, one lettered option a line, then
    `MC_INSTRUCTION`; the question alone without options."""
    if not options:
        return question
    return "\n".join([question, *lettered_options(options), MC_INSTRUCTION])


# -- answers ------------------------------------------------------------------------------


def eos_ids(model, tokenizer) -> set[int]:
    """End tokens of the model's generation config and of its tokenizer."""
    ids = set()
    for source in (getattr(model, "generation_config", None), tokenizer):
        eos = getattr(source, "eos_token_id", None)
        if eos is not None:
            ids.update(eos if isinstance(eos, (list, tuple)) else [eos])
    return ids


def next_token(driver: DecoderDriver, context, embeds: Tensor) -> int:
    """The greedy token after `embeds` [1, L, hidden] under `context`."""
    hidden = driver.run(embeds, context)
    return int(driver.logits(hidden[:, -1]).argmax(-1))


def continue_greedy(driver: DecoderDriver, context, token: int, max_new_tokens: int, min_new_tokens: int,
                    ends: set[int], device, on_token: Callable[[int], None] | None = None) -> list[int]:
    """Tokens from `token` on, decoded greedily until `max_new_tokens`, or an end token once
    `min_new_tokens` are out (benchmarks time a fixed decode length this way). `on_token` sees
    each token as it is chosen; an exception it raises stops the decoding."""
    generated = []
    while True:
        generated.append(token)
        if on_token is not None:
            on_token(token)
        if len(generated) >= max_new_tokens or (token in ends and len(generated) >= min_new_tokens):
            return generated
        token = next_token(driver, context, driver.embed(torch.tensor([[token]], device=device)))


def answer_ids(generated: list[int], ends: set[int]) -> list[int]:
    """The answer: the tokens before the first end token."""
    first = next((i for i, t in enumerate(generated) if t in ends), len(generated))
    return generated[:first]


_LAST_WORD = re.compile(r"\s+\S*$")


class AnswerText:
    """The answer's text while it is decoded, in pieces that concatenate to the final text
    (`tokenizer.decode(answer ids, skip_special_tokens=True).strip()`): each `push(token)` gives
    the new suffix of the text decoded so far, holding back what may still change:
    - an incomplete multi-byte character (a byte-level BPE token may end inside one: it decodes
      to U+FFFD until the rest comes);
    - trailing whitespace (the final text is stripped);
    - with a tokenizer that cleans up spaces on decoding (" ." -> "."), the last word and the
      space before it (the clean-up only removes a space before the newest text).
    Nothing after the first end token is text. `finish(text)` gives the rest of the final text."""

    def __init__(self, tokenizer, ends: set[int]):
        self.tokenizer, self.ends = tokenizer, ends
        self.hold_last_word = bool(getattr(tokenizer, "clean_up_tokenization_spaces", False))
        self.ids: list[int] = []
        self.sent, self.ended = "", False

    def push(self, token: int) -> str:
        if self.ended or token in self.ends:
            self.ended = True
            return ""
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True).strip()
        incomplete = text.find("\ufffd", len(self.sent))
        if incomplete >= 0:
            text = text[:incomplete]
        if self.hold_last_word:
            last = _LAST_WORD.search(text)
            text = text[: last.start()] if last else ""
        return self._advance(text)

    def finish(self, text: str) -> str:
        return self._advance(text)

    def _advance(self, text: str) -> str:
        if len(text) <= len(self.sent) or not text.startswith(self.sent):
            return ""
        piece, self.sent = text[len(self.sent):], text
        return piece
