"""The testbed VideoLLM: a small LLaVA-OneVision trained on the synthetic streaming benchmark.

A real `LlavaOnevisionForConditionalGeneration` (SigLIP vision + Qwen2 LLM, small widths for a
CPU) with its own word-level tokenizer, saved in Hugging Face format under
`stc/assets/testbed-llava-ov`, so that `from_pretrained` / `load_processor` load it through the
same code as any checkpoint and `stc.patch` applies unchanged. It answers the synthetic
benchmark's questions from the frames, which makes accuracy retention under compression a number
anyone can reproduce in minutes.

Training (`python -m stc.eval.testbed.train train --out DIR`): seeded, fixed step counts, CPU. Each
training sample is one synthetic episode (train seeds only) laid out exactly as the streaming
engine feeds it at answer time: [header][frame tokens ...][prompt][answer]. All of an episode's
questions share one sequence: a block mask lets question i see the header, the frames up to its
time and itself, and its position ids continue right after its last visible frame, as in the
engine. Five phases: the vision tower alone on random stills (auxiliary heads only, see
`pretrain_vision`), text-only option look-ups (the answer format, learned alone), perception on
random stills with their real-time questions (cheap: one frame per sample; see
`perception_sample`), then short episodes, then episodes of the benchmark's length, where every
`perception_every`-th step is still a perception step. Training episodes carry more questions than
benchmark ones. Multiple choice is answered by writing the chosen option out ("B. red"; its first
word is the letter the scorer reads), each option being one token of the tokenizer (see
`OPTION_TOKENS`). Loss: the answer tokens and the end-of-turn token, plus an auxiliary loss that
only exists during training: small linear heads read each visual token (after projector and
pooling) and classify the object covering its cell (colour, kind, character, or background) and the
cell's quadrant. It teaches the vision tower what is where much faster than answers alone; the
heads are thrown away and the saved model is a plain LLaVA-OneVision.

Training with missing tokens (`token_drop`): most samples keep only part of each frame's visual
tokens, laid out as the engine lays out a pruned frame, so that accuracy under compression
measures what a selector threw away, not how confused a model is by gaps it never saw. Runs are
resumable (`--stop-after-minutes`, `--resume`: see `TrainingRun`).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from stc.eval.synthetic.episodes import OPTION_LETTERS, QUADRANTS, VOCABULARY, episode_seed, generate_episode, still_queries
from stc.eval.synthetic.scene import COLOURS, GLYPH, GLYPHS, SHAPES, SceneConfig, noun, render_still
from stc.eval.testbed import TESTBED_DIR
from stc.eval.testbed.token_drop import TokenDrop
from stc.integrations.engine.prompt import lettered_options

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
VALIDATION_FIRST_INDEX = 900_000_000  # train-split episodes never used for training


@dataclass(frozen=True)
class TestbedArchitecture:
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


@dataclass(frozen=True)
class TrainConfig:
    """Phases: vision pretraining on random stills (auxiliary heads only), text-only option
    look-ups, perception (random stills with their real-time questions), short episodes
    (`short_frames` frames), then full-length episodes as in the benchmark; the episode phases'
    step counts include their interleaved perception steps (`perception_every`). Training episodes
    carry more questions than benchmark ones (`questions`), which adds supervision at little
    extra cost: the frames are encoded once per episode."""

    seed: int = 0
    vision_steps: int = 2000  # the vision tower alone first, on random stills (auxiliary heads only)
    vision_batch: int = 48
    lookup_steps: int = 300  # text-only option look-ups first: the answer format, learned in isolation
    lookup_batch: int = 64
    perception_steps: int = 300
    perception_batch: int = 32
    perception_every: int = 5  # in the episode phases every 5th step is a perception step (0: never)
    short_steps: int = 600
    short_frames: int = 16
    long_steps: int = 800
    video_batch: int = 4
    questions_min: int = 24
    questions_max: int = 32
    captions: int = 2  # caption + timeline questions added per training episode
    pointers: int = 4  # text-only option look-ups added per video episode (perception frames always get one)
    lr: float = 1e-3
    min_lr_share: float = 0.05
    warmup_steps: int = 50
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    aux_weight: float = 1.0
    validate_every: int = 400
    validation_episodes: int = 24
    dense_share: float = 0.25  # share of training samples that keep every visual token
    min_keep: float = 0.1  # the others keep a share uniform in [min_keep, 1) (see token_drop)
    checkpoint_every: int = 100  # steps between checkpoints (train --resume)
    threads: int = 2
    bf16: bool = True


def testbed_tokenizer():
    from tokenizers import AddedToken

    from stc.eval.presets import build_word_tokenizer

    tokenizer = build_word_tokenizer(TEXT_WORDS, VOCAB_SIZE, RESERVED_IDS)
    tokenizer.add_tokens([AddedToken(token, normalized=False) for token in OPTION_TOKENS])
    return tokenizer


def testbed_config(arch: TestbedArchitecture = TestbedArchitecture()):
    from transformers import LlavaOnevisionConfig

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


AUX_CLASSES = (1 + len(COLOURS), 2 + len(SHAPES), 1 + len(GLYPHS), len(QUADRANTS))  # colour, kind, character (0 = none), quadrant


def cell_labels(objects, frame_size: int, grid: int) -> torch.Tensor:
    """[grid*grid, 4] labels of each token cell: colour, kind and character of the object
    covering it (a cell takes an object whose box covers at least 30% of the cell or of the
    object; larger objects win), and the cell's quadrant (index into QUADRANTS)."""
    labels = torch.zeros(grid * grid, 4, dtype=torch.long)
    rows, cols = torch.arange(grid * grid) // grid, torch.arange(grid * grid) % grid
    labels[:, 3] = 2 * (rows >= grid / 2) + (cols >= grid / 2)  # QUADRANTS order: top/bottom x left/right
    colours = list(COLOURS)
    cell = frame_size / grid
    for obj in sorted((o for o in objects if o.visible), key=lambda o: o.size):
        half = obj.size / 2
        kind = len(SHAPES) + 1 if obj.shape == GLYPH else SHAPES.index(obj.shape) + 1
        glyph = GLYPHS.index(obj.glyph) + 1 if obj.shape == GLYPH else 0
        target = torch.tensor([colours.index(obj.colour) + 1, kind, glyph])
        for row in range(grid):
            for col in range(grid):
                dy = min(obj.y + half, (row + 1) * cell) - max(obj.y - half, row * cell)
                dx = min(obj.x + half, (col + 1) * cell) - max(obj.x - half, col * cell)
                if dx > 0 and dy > 0 and dx * dy >= 0.3 * min(cell * cell, obj.size * obj.size):
                    labels[row * grid + col, :3] = target
    return labels


def frames_labels(states, frame_size: int, grid: int) -> torch.Tensor:
    """`cell_labels` of several frames, stacked in the order of their visual tokens."""
    return torch.cat([cell_labels(objects, frame_size, grid) for objects in states])


class AuxiliaryHeads(torch.nn.Module):
    """Training-only linear readouts of visual tokens (not part of the saved model)."""

    def __init__(self, width: int):
        super().__init__()
        self.heads = torch.nn.ModuleList(torch.nn.Linear(width, classes) for classes in AUX_CLASSES)

    def loss(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Colour (or background) and quadrant on every cell; kind on object cells; character on
        character cells."""
        colour, kind, character, quadrant = self.heads
        objects, characters = labels[:, 0] > 0, labels[:, 2] > 0
        loss = F.cross_entropy(colour(features).float(), labels[:, 0])
        loss = loss + F.cross_entropy(quadrant(features).float(), labels[:, 3])
        if objects.any():
            loss = loss + F.cross_entropy(kind(features[objects]).float(), labels[objects, 1])
        if characters.any():
            loss = loss + F.cross_entropy(character(features[characters]).float(), labels[characters, 2])
        return loss / 4

    @torch.no_grad()
    def accuracy(self, features: torch.Tensor, labels: torch.Tensor) -> dict[str, tuple[int, int]]:
        """(right, asked) per head, on the cells each head is trained on."""
        everywhere, objects, characters = torch.ones_like(labels[:, 0], dtype=torch.bool), labels[:, 0] > 0, labels[:, 2] > 0
        out = {}
        for name, head, column, cells in zip(("colour", "kind", "character", "quadrant"), self.heads, (0, 1, 2, 3),
                                             (everywhere, objects, characters, everywhere)):
            right = head(features[cells]).argmax(-1) == labels[cells, column]
            out[name] = (int(right.sum()), int(cells.sum()))
        return out


class SequenceBuilder:
    """Packs an episode's frames and questions into one training sequence, laid out as the
    streaming engine lays them out at answer time."""

    def __init__(self, tokenizer, tokens_per_frame: int):
        from stc.integrations.engine.session import PromptTemplate

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


def visual_features(model, pixels: torch.Tensor) -> torch.Tensor:
    """[frames * tokens_per_frame, width]: the LLM-side visual tokens of these frames, as the
    model builds them for a video (vision tower, projector, 2x2 pooling; no newline token)."""
    return model.model.get_video_features(pixels[None], return_dict=True).pooler_output[0, :-1]


def still_batch(rng, preprocessing, scene: SceneConfig, grid: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(pixels, cell labels) of `size` random stills."""
    stills = [render_still(rng, scene) for _ in range(size)]
    pixels = preprocessing(np.stack([image for image, _ in stills]))
    return pixels, frames_labels([objects for _, objects in stills], scene.size, grid)


@torch.no_grad()
def validate_vision(model, heads: AuxiliaryHeads, preprocessing, scene: SceneConfig, grid: int, episodes: int) -> dict:
    """Auxiliary-head accuracy on every frame of held-out train-split episodes: what the visual
    tokens tell about the objects in their cells."""
    model.eval()
    totals: dict[str, list[int]] = {}
    for i in range(episodes):
        episode = generate_episode(episode_seed("train", VALIDATION_FIRST_INDEX + i), scene)
        labels = frames_labels(episode.states, scene.size, grid)
        for name, (right, asked) in heads.accuracy(visual_features(model, preprocessing(episode.frames)).float(), labels).items():
            total = totals.setdefault(name, [0, 0])
            total[0] += right
            total[1] += asked
    model.train()
    return {name: right / max(asked, 1) for name, (right, asked) in totals.items()}


def adamw(parameters: list, config: TrainConfig) -> torch.optim.AdamW:
    return torch.optim.AdamW(parameters, lr=config.lr, betas=(0.9, 0.98), weight_decay=config.weight_decay)


def update(optimizer, parameters: list, loss: torch.Tensor, config: TrainConfig) -> None:
    """One optimiser step on `loss`, gradients clipped to `config.grad_clip`."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(parameters, config.grad_clip)
    optimizer.step()


PHASES = ("vision", "main")  # the vision tower alone, then everything (look-ups, perception, episodes)
CHECKPOINT = "checkpoint.pt"


class TrainingPaused(Exception):
    """The run's time budget ran out; its checkpoint holds everything needed to resume."""


class TrainingRun:
    """What a training run carries from step to step, and its checkpoint (`out_dir/checkpoint.pt`):
    the model, the auxiliary heads, the current phase's optimiser, every random generator and the
    counters. It is written every `checkpoint_every` steps (atomically: a killed run leaves the
    previous one) and when the time budget runs out, so `train --resume` goes on exactly where the
    run stopped, in the same session or a later one; it is deleted when training completes."""

    def __init__(self, out_dir: Path, config: TrainConfig, arch: TestbedArchitecture, model, heads,
                 resume: dict | None = None, deadline: float | None = None):
        self.path = Path(out_dir) / CHECKPOINT
        self.config, self.arch, self.model, self.heads = config, arch, model, heads
        self.rngs = {name: np.random.default_rng([config.seed, index]) for index, name in
                     enumerate(("lookup", "vision", "perception", "drop"))}
        self.next_episode, self.trained_before = 0, 0.0
        self.started, self.deadline, self.resume = time.perf_counter(), deadline, resume
        if resume is not None:
            model.load_state_dict(resume["model"])
            heads.load_state_dict(resume["heads"])
            for name, state in resume["rngs"].items():
                self.rngs[name].bit_generator.state = state
            torch.set_rng_state(resume["torch_rng"])
            self.next_episode, self.trained_before = resume["next_episode"], resume["trained_s"]

    def first_step(self, phase: str) -> int | None:
        """The step this process starts `phase` at: 0, where the resumed run stopped, or None
        when the resumed run had finished the phase."""
        if self.resume is None:
            return 0
        done, here = PHASES.index(self.resume["phase"]), PHASES.index(phase)
        return None if here < done else self.resume["step"] if here == done else 0

    def optimizer(self, phase: str, parameters: list) -> torch.optim.AdamW:
        optimizer = adamw(parameters, self.config)
        if self.resume is not None and self.resume["phase"] == phase:
            optimizer.load_state_dict(self.resume["optimizer"])
        return optimizer

    def step_done(self, phase: str, step: int, optimizer) -> None:
        """Checkpoint when due; raise TrainingPaused (after checkpointing) when out of time."""
        out_of_time = self.deadline is not None and time.perf_counter() >= self.deadline
        if (step + 1) % self.config.checkpoint_every == 0 or out_of_time:
            self.save(phase, step + 1, optimizer)
        if out_of_time:
            raise TrainingPaused(f"{phase} phase, step {step + 1}")

    def save(self, phase: str, step: int, optimizer) -> None:
        state = {"phase": phase, "step": step, "model": self.model.state_dict(), "heads": self.heads.state_dict(),
                 "optimizer": optimizer.state_dict(), "rngs": {n: r.bit_generator.state for n, r in self.rngs.items()},
                 "torch_rng": torch.get_rng_state(), "next_episode": self.next_episode, "trained_s": self.elapsed(),
                 "config": asdict(self.config), "arch": asdict(self.arch)}
        partial = self.path.with_suffix(".partial")
        torch.save(state, partial)
        os.replace(partial, self.path)

    def elapsed(self) -> float:
        """Seconds trained, over every process of this run."""
        return self.trained_before + time.perf_counter() - self.started


def pretrain_vision(run: TrainingRun, preprocessing, scene: SceneConfig, grid: int, say) -> None:
    """The vision tower and projector alone, on random stills, with the auxiliary heads as the only
    loss. A 4-layer ViT trained through the answers (or on episode frames, where 32 frames show the
    same few objects) does not learn to tell the 16 characters apart at this size: a linear probe of
    the earlier shipped model's visual tokens read characters at chance. On fresh stills it does,
    within a few thousand cheap steps (no language model in the loop)."""
    config, model, heads = run.config, run.model, run.heads
    first = run.first_step("vision")
    if first is None or config.vision_steps <= 0:
        return
    parameters = [*model.model.vision_tower.parameters(), *model.model.multi_modal_projector.parameters(), *heads.parameters()]
    optimizer = run.optimizer("vision", parameters)
    started = time.perf_counter()
    for step in range(first, config.vision_steps):
        pixels, labels = still_batch(run.rngs["vision"], preprocessing, scene, grid, config.vision_batch)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, config.vision_steps, config)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=config.bf16):
            loss = heads.loss(visual_features(model, pixels), labels)
        update(optimizer, parameters, loss, config)
        if step % 100 == 0 or step == config.vision_steps - 1:
            say(f"vision step {step:5d}  loss {loss.item():.4f}  lr {group['lr']:.2e}  {time.perf_counter() - started:7.0f} s")
        run.step_done("vision", step, optimizer)
    scores = validate_vision(model, heads, preprocessing, scene, grid, config.validation_episodes)
    say("vision validation " + "  ".join(f"{k} {v:.3f}" for k, v in scores.items()))


def forward_loss(model, batch: dict, preprocessing, heads: AuxiliaryHeads | None = None, aux_weight: float = 0.0):
    """Cross-entropy of the labelled tokens (+ the auxiliary loss) and the argmax predictions."""
    embeds = model.get_input_embeddings()(batch["ids"]).clone()
    features = None
    if batch["pixels"]:  # text-only batches (option look-ups) have no frames
        features = visual_features(model, torch.cat(batch["pixels"]))  # the batch's frames in one call
        per_frame = features.shape[0] // sum(len(p) for p in batch["pixels"])
        offset = 0
        for b, (start, count) in enumerate(batch["video"]):
            rows = features[offset : offset + len(batch["pixels"][b]) * per_frame]
            offset += len(rows)
            if batch["keep"][b] is not None:
                rows = rows[batch["keep"][b]]
            embeds[b, start : start + count] = rows.to(embeds.dtype)
    hidden = model.model.language_model(
        inputs_embeds=embeds, attention_mask=batch["mask"], position_ids=batch["positions"]
    ).last_hidden_state
    logits = model.lm_head(hidden[batch["label_rows"], batch["label_cols"]]).float()
    loss = F.cross_entropy(logits, batch["targets"])
    if heads is not None and batch["aux"] is not None and aux_weight > 0:
        loss = loss + aux_weight * heads.loss(features, batch["aux"])
    return loss, logits.argmax(-1)


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


def perception_turn(step: int, config: TrainConfig) -> bool:
    """Whether this step of the episode phases is a perception step: single-frame perception,
    learned first, is kept up while the model learns episodes."""
    episode_step = step - config.lookup_steps - config.perception_steps
    return config.perception_every > 0 and episode_step >= 0 and episode_step % config.perception_every == config.perception_every - 1


def learning_rate(step: int, total: int, config: TrainConfig) -> float:
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, total - config.warmup_steps)
    return config.lr * (config.min_lr_share + (1 - config.min_lr_share) * 0.5 * (1 + math.cos(math.pi * progress)))


@torch.no_grad()
def validate(model, builder, preprocessing, scene: SceneConfig, episodes: int, keep_ratio: float | None = None) -> dict:
    """Teacher-forced answer accuracy per category on held-out train-split episodes, with every
    visual token or (`keep_ratio`) with that share of them kept at random (seeded)."""
    model.eval()
    right, total = {}, {}
    drop = None if keep_ratio is None else TokenDrop(np.random.default_rng(0), 0.0, keep_ratio, keep_ratio, ("random",))
    for i in range(episodes):
        seed = episode_seed("train", VALIDATION_FIRST_INDEX + i)
        sample, pixels, queries, _ = episode_sample(builder, preprocessing, seed, scene, drop=drop)
        batch = collate([sample], [pixels])
        _, predicted = forward_loss(model, batch, preprocessing)
        answers = predicted[batch["firsts"]].tolist()
        for q, got in zip(queries, answers):
            category = q.extra["category"]
            total[category] = total.get(category, 0) + 1
            right[category] = right.get(category, 0) + int(got == builder.answer_ids(training_answer(q))[0])
    model.train()
    out = {c: right[c] / total[c] for c in sorted(total)}
    out["all"] = sum(right.values()) / sum(total.values())
    return out


def train(out_dir: Path, config: TrainConfig = TrainConfig(), arch: TestbedArchitecture = TestbedArchitecture(),
          resume: bool = False, stop_after_minutes: float | None = None) -> Path:
    """Train the testbed model and save it (with its processor and log) to `out_dir`. `resume`
    continues the run whose checkpoint is in `out_dir` (with that run's config and architecture);
    `stop_after_minutes` ends this process with a checkpoint once that much time has passed."""
    from transformers import LlavaOnevisionForConditionalGeneration

    from stc.integrations.processing import FramePreprocessing

    out_dir = Path(out_dir)
    saved = None
    if resume:
        if not (out_dir / CHECKPOINT).exists():
            raise ValueError(f"no training checkpoint {out_dir / CHECKPOINT} to resume")
        saved = torch.load(out_dir / CHECKPOINT, weights_only=False)
        config, arch = TrainConfig(**saved["config"]), TestbedArchitecture(**saved["arch"])
    torch.manual_seed(config.seed)
    torch.set_num_threads(config.threads)
    out_dir.mkdir(parents=True, exist_ok=True)
    log = open(out_dir / "training_log.txt", "a" if resume else "w")

    def say(message: str) -> None:
        print(message, flush=True)
        log.write(message + "\n")
        log.flush()

    tokenizer = testbed_tokenizer()
    model = LlavaOnevisionForConditionalGeneration(testbed_config(arch)).train()
    preprocessing = FramePreprocessing(arch.image_size, arch.image_size, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    tokens_per_frame = math.ceil(arch.image_size // arch.patch_size / 2) ** 2
    builder = SequenceBuilder(tokenizer, tokens_per_frame)
    scene = SceneConfig()  # the benchmark's episodes (validation)
    questions = (config.questions_min, config.questions_max)
    long_scene = SceneConfig(queries=questions)
    short_scene = SceneConfig(frames=config.short_frames, queries=questions)
    heads = AuxiliaryHeads(arch.text_hidden)
    deadline = None if stop_after_minutes is None else time.perf_counter() + 60 * stop_after_minutes
    run = TrainingRun(out_dir, config, arch, model, heads, saved, deadline)
    if saved is None:
        params = sum(p.numel() for p in model.parameters())
        say(f"testbed training: {params / 1e6:.2f} M parameters, {tokens_per_frame} visual tokens per frame, "
            f"config {json.dumps(asdict(config))}")
        say(f"architecture {json.dumps(asdict(arch))}; torch {torch.__version__}, {platform.processor() or platform.machine()}")
    else:
        say(f"resumed from {out_dir / CHECKPOINT}: {saved['phase']} phase, step {saved['step']}, "
            f"{saved['trained_s'] / 60:.1f} minutes trained before (config and architecture of that run)")
    grid = math.isqrt(tokens_per_frame)
    drop = TokenDrop(run.rngs["drop"], config.dense_share, config.min_keep)
    try:
        pretrain_vision(run, preprocessing, scene, grid, say)
        parameters = [*model.parameters(), *heads.parameters()]
        optimizer = run.optimizer("main", parameters)
        total_steps = config.lookup_steps + config.perception_steps + config.short_steps + config.long_steps
        started = time.perf_counter()
        for step in range(run.first_step("main"), total_steps):
            if step < config.lookup_steps:
                chosen = [builder.build(0, [(-1, *option_lookup(run.rngs["lookup"]))]) for _ in range(config.lookup_batch)]
                batch = collate(chosen, [])
            elif step < config.lookup_steps + config.perception_steps or perception_turn(step, config):
                chosen = [perception_sample(builder, preprocessing, run.rngs["perception"], scene, drop)
                          for _ in range(config.perception_batch)]
                batch = collate([s for s, _, _ in chosen], [p for _, p, _ in chosen], [a for _, _, a in chosen])
            else:
                short_end = config.lookup_steps + config.perception_steps + config.short_steps
                episode_scene = short_scene if step < short_end else long_scene
                samples = [episode_sample(builder, preprocessing, episode_seed("train", run.next_episode + i), episode_scene,
                                          config.captions, config.pointers, drop) for i in range(config.video_batch)]
                run.next_episode += config.video_batch
                batch = collate([s for s, _, _, _ in samples], [p for _, p, _, _ in samples], [a for _, _, _, a in samples])
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(step, total_steps, config)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=config.bf16):
                loss, predicted = forward_loss(model, batch, preprocessing, heads, config.aux_weight)
            update(optimizer, parameters, loss, config)
            if step % 50 == 0 or step == total_steps - 1:
                firsts = batch["firsts"]
                accuracy = (predicted[firsts] == batch["targets"][firsts]).float().mean().item()
                say(f"step {step:5d}  loss {loss.item():.4f}  answer acc {accuracy:.3f}  lr {group['lr']:.2e}  "
                    f"episodes {run.next_episode}  {time.perf_counter() - started:7.0f} s")
            if (step + 1) % config.validate_every == 0 or step == total_steps - 1:
                for label, keep in (("", None), (" keep 0.3 random", 0.3)):
                    scores = validate(model, builder, preprocessing, scene, config.validation_episodes, keep)
                    say(f"validation{label} " + "  ".join(f"{k} {v:.3f}" for k, v in scores.items()))
                scores = validate_vision(model, heads, preprocessing, scene, grid, config.validation_episodes)
                say("vision validation " + "  ".join(f"{k} {v:.3f}" for k, v in scores.items()))
                save(model, tokenizer, preprocessing, out_dir)
            if step < total_steps - 1:  # after the last step there is nothing left to resume
                run.step_done("main", step, optimizer)
    except TrainingPaused as paused:
        say(f"paused after {run.elapsed() / 60:.1f} minutes of training, at the {paused}; resume with: "
            f"python -m stc.eval.testbed.train train --out {out_dir} --resume")
        log.close()
        return out_dir
    say(f"done: {config.vision_steps} vision steps + {total_steps} steps, {run.next_episode} training episodes, "
        f"{run.elapsed():.0f} s")
    log.close()
    save(model, tokenizer, preprocessing, out_dir)
    (out_dir / CHECKPOINT).unlink(missing_ok=True)
    return out_dir


def save(model, tokenizer, preprocessing, out_dir: Path) -> None:
    from stc.integrations.processing import VideoLLMProcessor

    model.eval()
    model.save_pretrained(out_dir)
    VideoLLMProcessor(tokenizer, preprocessing).save_pretrained(out_dir)
    model.train()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stc.eval.testbed.train", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("train", help="train the testbed model")
    run.add_argument("--out", default=str(TESTBED_DIR), help=f"output folder (default {TESTBED_DIR})")
    for name, default in asdict(TrainConfig()).items():
        kind = type(default)
        if kind is bool:
            run.add_argument(f"--{name.replace('_', '-')}", type=lambda v: v.lower() in ("1", "true", "yes"), default=default)
        else:
            run.add_argument(f"--{name.replace('_', '-')}", type=kind, default=default)
    run.add_argument("--resume", action="store_true", help="continue the run whose checkpoint is in --out")
    run.add_argument("--stop-after-minutes", type=float, default=None, metavar="M",
                     help="end this process with a checkpoint after M minutes (resume later with --resume)")
    args = parser.parse_args(argv)
    config = TrainConfig(**{k: getattr(args, k) for k in asdict(TrainConfig())})
    try:
        train(Path(args.out), config, resume=args.resume, stop_after_minutes=args.stop_after_minutes)
    except ValueError as exc:
        print(f"python -m stc.eval.testbed.train train: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
