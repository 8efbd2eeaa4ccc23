"""The testbed VideoLLM: a small LLaVA-OneVision trained on the synthetic streaming benchmark.

A real `LlavaOnevisionForConditionalGeneration` (SigLIP vision + Qwen2 LLM, small widths for a
CPU) with its own word-level tokenizer, saved in Hugging Face format under `TESTBED_DIR`
(eval/testbed/assets/testbed-llava-ov), so that `from_pretrained` / `load_processor` load it
through the same code as any checkpoint and `stc.patch` applies unchanged. It answers the synthetic
benchmark's questions from the frames, which makes accuracy retention under compression a number
anyone can reproduce in minutes.

Training (`stc testbed train --out DIR`): seeded, fixed step counts, CPU. Each
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

This module is the training loop; the model's build is `model`, the visual tokens' auxiliary
teaching `vision`, the packed training sequences `samples`, the dropped tokens `token_drop`, a
run's state and checkpoint `checkpoint` (every name of those modules is importable from here
too); named starting points of the flags are `recipes`.
"""

from __future__ import annotations

import json
import math
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from stc.eval.synthetic.benchmark import score_synthetic
from stc.eval.synthetic.episodes import episode_seed, generate_episode
from stc.eval.synthetic.scene import SceneConfig
from stc.eval.testbed import TESTBED_DIR
from stc.eval.testbed.checkpoint import CHECKPOINT, PHASES, TrainingPaused, TrainingRun, adamw
from stc.eval.testbed.model import (OPTION_TOKENS, RESERVED_IDS, TEXT_WORDS, VOCAB_SIZE, TestbedArchitecture, save,
                                    testbed_config, testbed_tokenizer)
from stc.eval.testbed.samples import (CAPTION_PROMPT, OPTION_VALUES, TIMELINE_PROMPT, VALIDATION_FIRST_INDEX,
                                      SequenceBuilder, block_mask, caption, collate, dropped_sample, episode_sample,
                                      option_lookup, perception_sample, timeline, training_answer)
from stc.eval.testbed.token_drop import PATTERNS, TokenDrop, check_patterns
from stc.eval.testbed.vision import AUX_CLASSES, AuxiliaryHeads, cell_labels, frames_labels, still_batch, visual_features
from stc.integrations.processing import FramePreprocessing

SCHEDULES = ("cosine", "wsd")


@dataclass(frozen=True)
class TrainConfig:
    """Phases: vision pretraining on random stills (auxiliary heads only), text-only option
    look-ups, perception (random stills with their real-time questions), short episodes
    (`short_frames` frames), then full-length episodes as in the benchmark; the episode phases'
    step counts include their interleaved perception steps (`perception_every`). Training episodes
    carry more questions than benchmark ones (`questions`), which adds supervision at little
    extra cost: the frames are encoded once per episode."""

    seed: int = 0
    generator: int = 2  # the episodes' question generator, SceneConfig(version=...): 2 (today's benchmark) or 3
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
    min_lr_share: float = 0.05  # the last step's learning rate, as a share of lr
    warmup_steps: int = 50
    schedule: str = "cosine"  # per optimiser phase (vision, main): "cosine" or "wsd" (see learning_rate)
    decay_share: float = 0.2  # wsd: the last share of a phase's steps, where lr falls linearly to min_lr_share
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    aux_weight: float = 1.0
    freeze_vision: bool = False  # after the vision phase the ViT stays as pretrained (no gradient through it)
    validate_every: int = 400
    validation_episodes: int = 24
    dense_share: float = 0.25  # share of training samples that keep every visual token
    min_keep: float = 0.1  # the others keep a share uniform in [min_keep, 1) (see token_drop)
    drop_patterns: tuple[str, ...] = PATTERNS  # which tokens those keep, one pattern a sample (token_drop)
    checkpoint_every: int = 100  # steps between checkpoints (train --resume)
    threads: int = 2
    bf16: bool = True

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown learning-rate schedule {self.schedule!r}; one of {', '.join(SCHEDULES)}")
        if not 0 < self.decay_share <= 1:
            raise ValueError(f"decay share must be in (0, 1], got {self.decay_share}")
        object.__setattr__(self, "drop_patterns", check_patterns(self.drop_patterns))  # a list (JSON, CLI) -> tuple
        if not 0 <= self.dense_share <= 1:
            raise ValueError(f"dense share must be in [0, 1], got {self.dense_share}")


@torch.no_grad()
def validate_vision(model, heads: AuxiliaryHeads, preprocessing, scene: SceneConfig, grid: int, episodes: int) -> dict:
    """Auxiliary-head accuracy on every frame of held-out train-split episodes: what the visual
    tokens tell about the objects in their cells."""
    model.eval()
    totals: dict[str, list[int]] = {}
    for i in range(episodes):
        episode = generate_episode(episode_seed("train", VALIDATION_FIRST_INDEX + i), scene)
        labels = frames_labels(episode.states, scene.size, grid).to(model.device)
        pixels = preprocessing(episode.frames).to(model.device)
        for name, (right, asked) in heads.accuracy(visual_features(model, pixels).float(), labels).items():
            total = totals.setdefault(name, [0, 0])
            total[0] += right
            total[1] += asked
    model.train()
    return {name: right / max(asked, 1) for name, (right, asked) in totals.items()}


def update(optimizer, parameters: list, loss: torch.Tensor, config: TrainConfig) -> None:
    """One optimiser step on `loss`, gradients clipped to `config.grad_clip`."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(parameters, config.grad_clip)
    optimizer.step()


class PhaseClock:
    """Seconds of training steps per phase in this process (validation and checkpoints not
    counted), wall-clock and CPU (all threads), logged when a phase ends or the process stops:
    what each phase's steps cost, to size a longer run. On a shared CPU the wall-clock figure
    grows with the other jobs; the CPU figure much less."""

    def __init__(self, say):
        self.say, self.phase, self.steps, self.seconds, self.cpu_seconds = say, None, 0, 0.0, 0.0

    def start(self) -> tuple[float, float]:
        return time.perf_counter(), time.process_time()

    def add(self, phase: str, started: tuple[float, float]) -> None:
        if phase != self.phase:
            self.report()
            self.phase, self.steps, self.seconds, self.cpu_seconds = phase, 0, 0.0, 0.0
        self.steps += 1
        self.seconds += time.perf_counter() - started[0]
        self.cpu_seconds += time.process_time() - started[1]

    def report(self) -> None:
        if self.steps:
            self.say(f"{self.phase} phase: {self.steps} steps in {self.seconds:.0f} s, {self.seconds / self.steps:.2f} s "
                     f"a step ({self.cpu_seconds / self.steps:.2f} CPU s a step)")
        self.steps = 0


def main_phase(step: int, config: TrainConfig) -> str:
    """The phase a step of the main optimiser phase belongs to: lookup, perception, short or long
    (the episode phases' interleaved perception steps count as theirs)."""
    ends = np.cumsum([config.lookup_steps, config.perception_steps, config.short_steps])
    return ("lookup", "perception", "short", "long")[int(np.searchsorted(ends, step, side="right"))]


def pretrain_vision(run: TrainingRun, preprocessing, scene: SceneConfig, grid: int, say, clock: PhaseClock) -> None:
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
        step_started = clock.start()
        pixels, labels = still_batch(run.rngs["vision"], preprocessing, scene, grid, config.vision_batch)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, config.vision_steps, config)
        with torch.autocast(model.device.type, dtype=torch.bfloat16, enabled=config.bf16):
            loss = heads.loss(visual_features(model, pixels.to(model.device)), labels.to(model.device))
        update(optimizer, parameters, loss, config)
        clock.add("vision", step_started)
        if step % 100 == 0 or step == config.vision_steps - 1:
            say(f"vision step {step:5d}  loss {loss.item():.4f}  lr {group['lr']:.2e}  {time.perf_counter() - started:7.0f} s")
        run.step_done("vision", step, optimizer)
    clock.report()
    validation_started = time.perf_counter()
    scores = validate_vision(model, heads, preprocessing, scene, grid, config.validation_episodes)
    say("vision validation " + "  ".join(f"{k} {v:.3f}" for k, v in scores.items())
        + f"  ({time.perf_counter() - validation_started:.0f} s for validation)")


def forward_loss(model, batch: dict, preprocessing, heads: AuxiliaryHeads | None = None, aux_weight: float = 0.0):
    """Cross-entropy of the labelled tokens (+ the auxiliary loss) and the argmax predictions."""
    batch = on_device(batch, model.device)
    embeds = model.get_input_embeddings()(batch["ids"]).clone()
    features = None
    if batch["pixels"]:  # text-only batches (option look-ups) have no frames
        features = visual_features(model, torch.cat(batch["pixels"]).to(model.device))  # the batch's frames in one call
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
    return loss, logits.argmax(-1).cpu()  # beside the batch's CPU labels


def on_device(batch: dict, device: torch.device) -> dict:
    """`collate`'s batch with its tensors on `device` (the pixels are moved once concatenated)."""
    moved = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    moved["keep"] = [None if k is None else torch.as_tensor(k).to(device) for k in batch["keep"]]
    return moved


def training_device(name: str) -> torch.device:
    """The device `--device` names: the CPU or a CUDA device torch can see, else a one-line error."""
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ValueError(f"--device must be cpu, cuda or cuda:N, got {name!r}") from None
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"--device must be cpu, cuda or cuda:N, got {name!r}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {name}: torch {torch.__version__} sees no CUDA device here")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"--device {name}: torch sees {torch.cuda.device_count()} CUDA device(s)")
    return device


def perception_turn(step: int, config: TrainConfig) -> bool:
    """Whether this step of the episode phases is a perception step: single-frame perception,
    learned first, is kept up while the model learns episodes."""
    episode_step = step - config.lookup_steps - config.perception_steps
    return config.perception_every > 0 and episode_step >= 0 and episode_step % config.perception_every == config.perception_every - 1


def learning_rate(step: int, total: int, config: TrainConfig) -> float:
    """The learning rate of `step` of a phase of `total` steps: a linear warmup over
    `warmup_steps`, then either one cosine down to `min_lr_share` (v1, v2) or warmup-stable-decay
    ("wsd"): the peak held until the last `decay_share` of the phase, then a linear fall that
    reaches `min_lr_share` at its last step. Under the cosine the main phase's highest rates go to
    the cheap text-only look-ups at its start and the episodes get a falling rate; under wsd every
    episode phase trains at the peak until the decay."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    if config.schedule == "cosine":
        progress = (step - config.warmup_steps) / max(1, total - config.warmup_steps)
        return config.lr * (config.min_lr_share + (1 - config.min_lr_share) * 0.5 * (1 + math.cos(math.pi * progress)))
    decay_steps = max(1, round(config.decay_share * total))
    decayed = (step - (total - decay_steps) + 1) / decay_steps  # 1 at the phase's last step
    return config.lr * (1 - (1 - config.min_lr_share) * min(1.0, max(0.0, decayed)))


@torch.no_grad()
def validate(model, builder, preprocessing, scene: SceneConfig, episodes: int, keep_ratio: float | None = None) -> dict:
    """Answer accuracy per category and overall ("all") on held-out train-split episodes of
    `scene`'s generator, scored as the benchmark scores: the first answer token the model
    predicts (teacher-forced: what the engine writes first, see the layout tests) decoded and
    judged by `benchmark.score_synthetic`, whose letter rule reads the first word ("B. blue" is
    right when the answer is B, whatever option text the token carries). "token" is the share
    whose predicted token is exactly the trained one (the option token). With every visual token,
    or (`keep_ratio`) that share of each frame's tokens kept at random (seeded)."""
    model.eval()
    drop = None if keep_ratio is None else TokenDrop(np.random.default_rng(0), 0.0, keep_ratio, keep_ratio, ("random",))
    queries, answers, exact = [], {}, 0
    for i in range(episodes):
        seed = episode_seed("train", VALIDATION_FIRST_INDEX + i)
        sample, pixels, episode_queries, _ = episode_sample(builder, preprocessing, seed, scene, drop=drop)
        batch = collate([sample], [pixels])
        _, predicted = forward_loss(model, batch, preprocessing)
        for q, token in zip(episode_queries, predicted[batch["firsts"]].tolist()):
            answers[q.qid] = {"response": builder.tokenizer.decode([token], skip_special_tokens=True)}
            exact += token == builder.answer_ids(training_answer(q))[0]
        queries += episode_queries
    model.train()
    report = score_synthetic(queries, answers)
    out = {c: report.categories[c] / 100 for c in sorted(report.categories)}
    out["all"] = report.overall / 100
    out["token"] = exact / len(queries)
    return out


def training_scenes(config: TrainConfig) -> tuple[SceneConfig, SceneConfig, SceneConfig]:
    """The episodes of a run, all of `config.generator`: the benchmark's (validation, stills),
    the short phase's and the full-length phase's (these two with more questions)."""
    questions = (config.questions_min, config.questions_max)
    return (SceneConfig(version=config.generator),
            SceneConfig(frames=config.short_frames, queries=questions, version=config.generator),
            SceneConfig(queries=questions, version=config.generator))


TRAINING_RECORD = "training.json"


def write_training_record(out_dir: Path, config: TrainConfig, arch: TestbedArchitecture, tokens_per_frame: int) -> None:
    """`out_dir/training.json`: what the saved model was trained on (the generator first), its
    training config and architecture, so a model folder says which benchmark it belongs to."""
    record = {"generator": config.generator, "tokens_per_frame": tokens_per_frame, "config": asdict(config),
              "architecture": asdict(arch)}
    (Path(out_dir) / TRAINING_RECORD).write_text(json.dumps(record, indent=1) + "\n")


def train(out_dir: Path, config: TrainConfig = TrainConfig(), arch: TestbedArchitecture = TestbedArchitecture(),
          resume: bool = False, stop_after_minutes: float | None = None, device: str = "cpu") -> Path:
    """Train the testbed model and save it (with its processor and log) to `out_dir`. `resume`
    continues the run whose checkpoint is in `out_dir` (with that run's config and architecture);
    `stop_after_minutes` ends this process with a checkpoint once that much time has passed.
    `device`: where the steps run ("cpu", "cuda", "cuda:N"); not a setting of the run, so a run
    paused on one device may resume on another (the numbers then differ in rounding only)."""
    from transformers import LlavaOnevisionForConditionalGeneration  # on use: transformers takes seconds to load

    out_dir = Path(out_dir)
    target = training_device(device)
    saved = None
    if resume:
        if not (out_dir / CHECKPOINT).exists():
            raise ValueError(f"no training checkpoint {out_dir / CHECKPOINT} to resume")
        saved = torch.load(out_dir / CHECKPOINT, weights_only=False, map_location="cpu")
        config, arch = TrainConfig(**saved["config"]), TestbedArchitecture(**saved["arch"])
    scene, short_scene, long_scene = training_scenes(config)  # refuses an unknown generator before writing anything
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
    tokens_per_frame = arch.tokens_per_frame
    builder = SequenceBuilder(tokenizer, tokens_per_frame)
    heads = AuxiliaryHeads(arch.text_hidden)
    model.to(target)
    heads.to(target)
    deadline = None if stop_after_minutes is None else time.perf_counter() + 60 * stop_after_minutes
    run = TrainingRun(out_dir, config, arch, model, heads, saved, deadline)
    if saved is None:
        params = sum(p.numel() for p in model.parameters())
        say(f"testbed training on generator {config.generator} episodes: {params / 1e6:.2f} M parameters, "
            f"{tokens_per_frame} visual tokens per frame, config {json.dumps(asdict(config))}")
        say(f"architecture {json.dumps(asdict(arch))}; torch {torch.__version__}, {platform.processor() or platform.machine()}, "
            f"device {target}")
    else:
        say(f"resumed from {out_dir / CHECKPOINT}: {saved['phase']} phase, step {saved['step']}, "
            f"{saved['trained_s'] / 60:.1f} minutes trained before (config and architecture of that run: "
            f"generator {config.generator}); device {target}")
    grid = arch.grid

    def save_model() -> None:
        save(model, tokenizer, preprocessing, out_dir)
        write_training_record(out_dir, config, arch, tokens_per_frame)

    drop = TokenDrop(run.rngs["drop"], config.dense_share, config.min_keep, patterns=config.drop_patterns)
    clock = PhaseClock(say)
    try:
        pretrain_vision(run, preprocessing, scene, grid, say, clock)
        if config.freeze_vision:  # the backward pass then stops at the projector: cheaper steps
            model.model.vision_tower.requires_grad_(False)
        parameters = [p for p in [*model.parameters(), *heads.parameters()] if p.requires_grad]
        optimizer = run.optimizer("main", parameters)
        total_steps = config.lookup_steps + config.perception_steps + config.short_steps + config.long_steps
        started = time.perf_counter()
        for step in range(run.first_step("main"), total_steps):
            step_started = clock.start()
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
            with torch.autocast(model.device.type, dtype=torch.bfloat16, enabled=config.bf16):
                loss, predicted = forward_loss(model, batch, preprocessing, heads, config.aux_weight)
            update(optimizer, parameters, loss, config)
            clock.add(main_phase(step, config), step_started)
            if step % 50 == 0 or step == total_steps - 1:
                firsts = batch["firsts"]
                accuracy = (predicted[firsts] == batch["targets"][firsts]).float().mean().item()
                say(f"step {step:5d}  loss {loss.item():.4f}  answer acc {accuracy:.3f}  lr {group['lr']:.2e}  "
                    f"episodes {run.next_episode}  {time.perf_counter() - started:7.0f} s")
            if step == total_steps - 1:
                clock.report()  # the last phase's cost before the last validation, in the log's order
            if (step + 1) % config.validate_every == 0 or step == total_steps - 1:
                validation_started = time.perf_counter()
                for label, keep in (("", None), (" keep 0.3 random", 0.3)):  # the benchmark's letter rule
                    scores = validate(model, builder, preprocessing, scene, config.validation_episodes, keep)
                    say(f"validation{label} " + "  ".join(f"{k} {v:.3f}" for k, v in scores.items()))
                scores = validate_vision(model, heads, preprocessing, scene, grid, config.validation_episodes)
                say("vision validation " + "  ".join(f"{k} {v:.3f}" for k, v in scores.items())
                    + f"  ({time.perf_counter() - validation_started:.0f} s for validation)")
                save_model()
            if step < total_steps - 1:  # after the last step there is nothing left to resume
                run.step_done("main", step, optimizer)
    except TrainingPaused as paused:
        clock.report()
        say(f"paused after {run.elapsed() / 60:.1f} minutes of training, at the {paused}; resume with: "
            f"stc testbed train --out {out_dir} --resume")
        log.close()
        return out_dir
    clock.report()
    say(f"done: {config.vision_steps} vision steps + {total_steps} steps, {run.next_episode} training episodes, "
        f"{run.elapsed():.0f} s")
    log.close()
    save_model()
    (out_dir / CHECKPOINT).unlink(missing_ok=True)
    return out_dir


# The trainer's names, and those of the modules it is built from (importable from here as before).
__all__ = ["AUX_CLASSES", "AuxiliaryHeads", "CAPTION_PROMPT", "CHECKPOINT", "OPTION_TOKENS", "OPTION_VALUES",
           "PHASES", "PhaseClock", "RESERVED_IDS", "SCHEDULES", "SequenceBuilder", "TESTBED_DIR", "TEXT_WORDS",
           "TIMELINE_PROMPT", "TRAINING_RECORD", "TestbedArchitecture", "TrainConfig", "TrainingPaused",
           "TrainingRun", "VALIDATION_FIRST_INDEX", "VOCAB_SIZE", "adamw", "block_mask", "caption", "cell_labels",
           "collate", "dropped_sample", "episode_sample", "forward_loss", "frames_labels", "learning_rate",
           "main_phase", "on_device", "option_lookup", "perception_sample", "perception_turn", "pretrain_vision", "save",
           "still_batch", "testbed_config", "testbed_tokenizer", "timeline", "train", "training_answer",
           "training_device", "training_scenes", "update", "validate", "validate_vision", "visual_features", "write_training_record"]
