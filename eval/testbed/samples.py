"""Training samples of the testbed: episodes, single-frame stills and text-only option look-ups,
each packed into one sequence laid out as the streaming engine lays it out at answer time, with
the visual tokens a `TokenDrop` keeps."""

from __future__ import annotations

import math

import numpy as np
import torch

from stc.eval.synthetic.episodes import OPTION_LETTERS, QUADRANTS, generate_episode, still_queries
from stc.eval.synthetic.scene import COLOURS, GLYPH, GLYPHS, SHAPES, SceneConfig, noun, render_still
from stc.eval.testbed.token_drop import TokenDrop
from stc.eval.testbed.vision import cell_labels, frames_labels
from stc.integrations.engine.prompt import PromptTemplate, lettered_options

VALIDATION_FIRST_INDEX = 900_000_000  # train-split episodes never used for training


class SequenceBuilder:
    """Packs an episode's frames and questions into one training sequence, laid out as the
    streaming engine lays them out at answer time."""

    def __init__(self, tokenizer, tokens_per_frame: int):
        self.template = PromptTemplate(tokenizer, "<video>", None)
        self.header = self.template.header_ids()
        self.eos = tokenizer.eos_token_id
        self.tokenizer = tokenizer
        self.tokens_per_frame = tokens_per_frame
        self._answer_ids = {}

    def answer_id(self, answer: str) -> int:
        if answer not in self._answer_ids:
            ids = self.tokenizer(answer, add_special_tokens=False)["input_ids"]
            if len(ids) != 1:
                raise ValueError(f"answer {answer!r} is not one token")
            self._answer_ids[answer] = ids[0]
        return self._answer_ids[answer]

    def answer_ids(self, answer: str) -> list[int]:
        """A one-token benchmark answer, or a caption of several tokens."""
        ids = self.tokenizer(answer, add_special_tokens=False)["input_ids"]
        return [self.answer_id(answer)] if len(ids) == 1 else ids

    def build(self, frames: int, queries: list[tuple[int, str, str]], kept: int | None = None) -> dict:
        """queries: (last visible frame, prompt, answer); `kept`: tokens each frame keeps (None:
        all), laid out contiguously as the engine lays out pruned frames. Returns ids (visual
        slots = -1), positions, the question blocks for the mask, (position, target) label pairs
        (every answer token and the end-of-turn token) and the index of each answer's first label."""
        n = self.tokens_per_frame if kept is None else kept
        ids = list(self.header) + [-1] * (frames * n)
        positions = list(range(len(ids)))
        blocks, labels, firsts = [], [], []
        for frame, prompt, answer in queries:
            prompt_ids = self.template.prompt_ids(prompt)
            targets = self.answer_ids(answer) + [self.eos]
            start = len(ids)
            visible = len(self.header) + (frame + 1) * n  # the header and frames 0..frame
            ids.extend(prompt_ids + targets)
            positions.extend(range(visible, visible + len(prompt_ids) + len(targets)))
            blocks.append((start, len(ids), visible))
            firsts.append(len(labels))
            predicted_from = start + len(prompt_ids) - 1
            labels.extend((predicted_from + j, target) for j, target in enumerate(targets))
        return {"ids": ids, "positions": positions, "blocks": blocks, "labels": labels, "firsts": firsts,
                "video": (len(self.header), frames * n)}


def block_mask(length: int, video_end: int, blocks: list[tuple[int, int, int]]) -> torch.Tensor:
    """[length, length] bool: causal over header + frames; question block (start, end, visible)
    sees tokens [0, visible) and itself causally."""
    mask = torch.ones(length, length, dtype=torch.bool).tril()
    mask[video_end:, video_end:] = False
    for start, end, visible in blocks:
        mask[start:end, visible:start] = False
        mask[start:end, start:end] = torch.ones(end - start, end - start, dtype=torch.bool).tril()
    return mask


def collate(samples: list[dict], pixels: list[torch.Tensor], aux: list[torch.Tensor] | None = None):
    """Pad packed sequences into a batch: ids, positions, 4-D mask, video slices, each sample's
    kept token rows (`sample["keep"]`, None: all), labels."""
    length = max(len(s["ids"]) for s in samples)
    batch = len(samples)
    ids = torch.zeros(batch, length, dtype=torch.long)
    positions = torch.zeros(batch, length, dtype=torch.long)
    mask = torch.zeros(batch, 1, length, length, dtype=torch.bool)
    label_rows, label_cols, targets, firsts, keep = [], [], [], [], []
    for b, s in enumerate(samples):
        n = len(s["ids"])
        ids[b, :n] = torch.tensor([max(i, 0) for i in s["ids"]])
        positions[b, :n] = torch.tensor(s["positions"])
        start, count = s["video"]
        mask[b, 0, :n, :n] = block_mask(n, start + count, s["blocks"])
        mask[b, 0, n:, n:] = torch.eye(length - n, dtype=torch.bool)  # padding sees itself only
        firsts.extend(len(targets) + i for i in s["firsts"])
        keep.append(s.get("keep"))
        for col, target in s["labels"]:
            label_rows.append(b)
            label_cols.append(col)
            targets.append(target)
    return {
        "ids": ids,
        "positions": positions,
        "mask": mask,
        "video": [s["video"] for s in samples],
        "keep": keep,
        "pixels": pixels,
        "aux": None if aux is None else torch.cat(aux),
        "label_rows": torch.tensor(label_rows),
        "label_cols": torch.tensor(label_cols),
        "targets": torch.tensor(targets),
        "firsts": torch.tensor(firsts),
    }


def training_answer(query) -> str:
    """The answer the model is trained to give: the chosen option written out for multiple
    choice ("B. red letter K"), the benchmark's answer otherwise."""
    if query.kind != "mc":
        return query.answer
    return f"{query.answer}. {query.extra['answer_text']}"


def _frame_index(time_s: float, fps: float) -> int:
    return int(round(time_s * fps))


def episode_sample(builder: SequenceBuilder, preprocessing, seed: int, scene: SceneConfig, captions: int = 0,
                   pointers: int = 0, drop: TokenDrop | None = None):
    """(packed sequence, pixels, queries, auxiliary cell labels) of one episode. `captions` adds
    that many caption and timeline questions at random frames, `pointers` that many option
    look-ups (training-only supervision; the benchmark questions come first in the sequence);
    `drop` decides which visual tokens the sample keeps (None: all)."""
    episode = generate_episode(seed, scene)
    queries = [(_frame_index(q.time, scene.fps), q.prompt, training_answer(q)) for q in episode.queries]
    rng = np.random.default_rng(seed)
    for frame in rng.integers(len(episode.frames), size=captions).tolist():
        queries.append((frame, CAPTION_PROMPT, caption(episode.states[frame])))
    for frame in rng.integers(len(episode.frames), size=captions).tolist():
        queries.append((frame, TIMELINE_PROMPT, timeline(episode.states[: frame + 1])))
    for frame in rng.integers(len(episode.frames), size=pointers).tolist():
        queries.append((frame, *option_lookup(rng)))
    grid = math.isqrt(builder.tokens_per_frame)
    labels = frames_labels(episode.states, scene.size, grid)
    sample = dropped_sample(builder, len(episode.frames), queries, drop, grid, episode.frames, labels)
    return sample, preprocessing(episode.frames), episode.queries, labels


def dropped_sample(builder: SequenceBuilder, frames: int, queries, drop: TokenDrop | None, grid: int,
                   images: np.ndarray, labels: torch.Tensor) -> dict:
    """`builder.build` with the visual tokens `drop` keeps (their flat row indices in "keep")."""
    keep = None if drop is None else drop(grid, images, (labels[:, 0] > 0).numpy())
    sample = builder.build(frames, queries, None if keep is None else len(keep) // frames)
    sample["keep"] = keep
    return sample


CAPTION_PROMPT = "Question: what objects are visible now?"
TIMELINE_PROMPT = "Question: what objects have appeared so far?"
OPTION_VALUES = (
    tuple(COLOURS),
    SHAPES,
    GLYPHS,
    QUADRANTS,
    tuple(f"{c} {n}" for c in COLOURS for n in (*SHAPES, *(noun(GLYPH, g) for g in GLYPHS))),
)


def option_lookup(rng) -> tuple[str, str]:
    """(prompt, answer) of a text-only multiple-choice look-up in the benchmark's format, e.g.
    "Question: which is red? Options: A. blue B. red ... Answer with the letter." -> "B. red". It
    trains the step every multiple-choice answer needs: from a value to its option. Descriptions
    in one list never share a colour, as in the benchmark."""
    values = OPTION_VALUES[int(rng.integers(len(OPTION_VALUES)))]
    def colour_of(value: str) -> str:  # a description's colour, else the value itself
        return value.split()[0] if value.split()[0] in COLOURS else value

    options: list[str] = []
    for i in rng.permutation(len(values)):
        if len(options) < len(OPTION_LETTERS) and colour_of(values[i]) not in map(colour_of, options):
            options.append(values[i])
    answer = int(rng.integers(len(options)))
    listed = " ".join(lettered_options(options, keep_lettered=False))
    prompt = f"Question: which is {options[answer]}? Options: {listed}. Answer with the letter."
    return prompt, f"{OPTION_LETTERS[answer]}. {options[answer]}"


def timeline(states) -> str:
    """Every object seen in these frames, in order of appearance, as it looked when it appeared
    (training only), e.g. "red circle and blue star ."."""
    seen: dict[int, str] = {}
    for objects in states:
        for o in objects:
            if o.visible and o.id not in seen:
                seen[o.id] = f"{o.colour} {o.noun}"
    return " and ".join(seen.values()) + " ."


def caption(objects) -> str:
    """The visible objects in reading order, e.g. "red circle and yellow letter L ." (training only)."""
    visible = sorted((o for o in objects if o.visible), key=lambda o: (o.y // 24, o.x))
    return " and ".join(f"{o.colour} {o.noun}" for o in visible) + " ."


def perception_sample(builder: SequenceBuilder, preprocessing, rng, scene: SceneConfig, drop: TokenDrop | None = None):
    """A single-frame sample: a random still (a fresh scene) with its real-time questions, written
    by the benchmark's own question writers, a caption of its objects and one option look-up
    (training-only supervision: captions tie words to what is seen, look-ups the value -> letter
    step of multiple choice). Fresh stills teach perception faster than episode frames, where 32
    frames show the same few objects (measured on the position task: see docs/testbed.md)."""
    image, objects = render_still(rng, scene)
    questions = [(0, CAPTION_PROMPT, caption(objects)), (0, *option_lookup(rng))]
    questions += [(0, q.prompt, training_answer(q)) for q in still_queries(rng, objects, scene)]
    grid = math.isqrt(builder.tokens_per_frame)
    labels = cell_labels(objects, scene.size, grid)
    return dropped_sample(builder, 1, questions, drop, grid, image[None], labels), preprocessing(image[None]), labels


__all__ = ["CAPTION_PROMPT", "OPTION_VALUES", "TIMELINE_PROMPT", "VALIDATION_FIRST_INDEX", "SequenceBuilder", "block_mask",
           "caption", "collate", "dropped_sample", "episode_sample", "option_lookup", "perception_sample", "timeline",
           "training_answer"]
