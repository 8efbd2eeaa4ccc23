"""`stc eval synthetic`: the synthetic testbed through the streaming engine, with and without STC.

    stc eval synthetic [--model PATH] [--seed S] [--n N] [--frames F] [--generator 2|3] [STC options]
                       [--blind | --shuffle-frames] [--placement] [--floor FILE] [--json FILE]
    stc eval synthetic --evidence [--methods M,...] [--budgets K,...] [--draws D] [--json FILE] [--markdown FILE]
    stc eval synthetic --time-only [--train-episodes E]

Held-out episodes (eval seeds, never used in training) are written once as lossless videos plus
queries.jsonl under --out, then streamed through the same runner as OVO-Bench and StreamingBench:
first uncompressed, then with the chosen method. Prints per-task and per-category accuracy of
both and the accuracy retained (compressed / uncompressed). `--blind` blanks every frame (grey),
which should score near chance. `--placement` also reports where the method's kept tokens fall: their
share on object cells against the object cells' share of all cells (`kept_on_objects`).
`--shuffle-frames` shows each episode's frames in a seeded random order with the questions
unchanged: the floor a model reaches from the pictures without their order (report a method's
accuracy above it with `--floor FILE`, that run's `--json`: (acc - floor) / (dense - floor)).
`--frames` sets the episodes' length (default 32). `--method oracle` (here only: it reads the scene)
keeps the tokens on object cells first and fills the budget at random; `--method evidence-oracle`
(`stc.eval.synthetic.oracle`) keeps the cells of the episode's questions' evidence first (all
questions of an episode share one stream: the union of the evidence each frame holds), then
changed object cells, then random, as in the `--evidence` run: the ceiling for any selector.
`--generator` defaults to the one the model was trained on (its `training.json`; 2 without one).

Model-free runs of their own: `--evidence` (`stc.eval.synthetic.retention`) measures, for
`--methods` x `--budgets`, the share of questions whose evidence the engine's kept tokens still
hold, with nothing decoded; `--time-only` (`stc.eval.synthetic.priors`) scores the guesser that
knows only each question's task and frame, against chance.

Scoring: a response is correct when its first word (letters or digits) equals the answer (a
letter A-D, Yes/No or a number). Category and overall accuracy are over all their questions.
"""

from __future__ import annotations

import dataclasses
import json
import re
import sys
from contextlib import ExitStack, nullcontext
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from stc.errors import InputError
from stc.integrations.video import sample_video
from stc.peers import MethodConfig, ground_truth

from stc.eval.presets import weights_fingerprint
from stc.eval.records import Query, read_answers, read_queries
from stc.eval.reporting import Report, accuracy_report
from stc.eval.runner import merge_shards, run_resumable
from stc.eval.settings import check_settings, memory_setting, model_setting
from stc.eval.synthetic.episodes import episode_seed, generate_episode, write_benchmark
from stc.eval.synthetic.oracle import EpisodePriorities, StreamedPriorities, cell_priorities
from stc.eval.synthetic.scene import GENERATORS, SceneConfig
from stc.eval.synthetic.truth import EpisodeTruth, StreamedTruth, on_objects, square_grid
from stc.eval.testbed import TESTBED_DIR

CATEGORIES = {
    "rt": ("rt_colour", "rt_shape", "rt_count", "rt_position", "rt_character"),
    "bt": ("bt_first", "bt_colour_before", "bt_shape_before", "bt_previous", "bt_left"),
    "fp": ("fp_appeared", "fp_count"),
}
TITLES = {"rt": "real-time perception", "bt": "backward tracing", "fp": "forward probes"}
DEFAULT_OUT = Path("runs") / "synthetic"


def first_word(text: str) -> str:
    match = re.search(r"[A-Za-z]+|[0-9]+", text or "")
    return match.group(0) if match else ""


def is_correct(query: Query, response: str) -> bool:
    return first_word(response) == query.answer


def score_synthetic(queries: list[Query], answers: dict[str, dict], source: str = "") -> Report:
    """Accuracy of the answered queries, with each question's outcome and episode (its seed: the
    cluster that the confidence intervals resample)."""
    outcomes = [(q.task, is_correct(q, answers[q.qid]["response"]), q.qid, q.extra.get("seed", q.video))
                for q in queries if q.qid in answers]
    return accuracy_report("synthetic", outcomes, CATEGORIES, average="micro", titles=TITLES, source=source,
                           cluster_unit="episode")


def prepare_benchmark(out: Path, seed: int, n: int, scene: SceneConfig | None = None,
                      shuffle_frames: bool = False) -> tuple[Path, list[Query]]:
    """Videos + queries of eval episodes [seed, seed + n), written once under out/data (the
    shuffled-frames videos in a folder of their own)."""
    data = out / f"data-seed{seed}-n{n}{frames_tag(scene)}{'-shuffled' if shuffle_frames else ''}"
    queries_file = data / "queries.jsonl"
    if not queries_file.exists():
        print(f"writing {n} held-out episodes to {data} ...", file=sys.stderr)
        write_benchmark(data, split="eval", n_episodes=n, first_index=seed, config=scene, shuffle_frames=shuffle_frames)
    return data, read_queries(queries_file)


def frames_tag(scene: SceneConfig | None) -> str:
    """What folder names add for episodes of another length than the default ("-frames300") or
    of another generator ("-v3")."""
    scene = SceneConfig() if scene is None else scene
    tag = "" if scene.frames == SceneConfig().frames else f"-frames{scene.frames}"
    return tag + ("" if scene.version == SceneConfig().version else f"-v{scene.version}")


def scene_config(frames: int, version: int = 2) -> SceneConfig:
    """The episodes' SceneConfig for --frames and --generator; ValueError (naming --frames) for a
    bad length."""
    shortest = 2 * SceneConfig().min_lifetime
    if frames < shortest:
        raise ValueError(f"--frames must be >= {shortest} (twice an object's shortest stay on screen), got {frames}")
    return SceneConfig(frames=frames, version=version)


def trained_generator(model) -> int | None:
    """The question generator a testbed model folder was trained on: its training record's
    "generator" (`stc.eval.testbed.train.write_training_record`, training.json); None for a folder
    without one (the shipped model, trained on generator 2 before the record existed) or a preset
    name. InputError for a record that is not the trainer's."""
    from stc.eval.testbed.train import TRAINING_RECORD  # on use: the trainer imports this module

    record = Path(model) / TRAINING_RECORD
    if not record.is_file():
        return None
    try:
        generator = json.loads(record.read_text()).get("generator")
    except (OSError, ValueError, AttributeError):
        generator = None
    if generator not in GENERATORS:
        raise InputError(f"{record}: no training record of the testbed trainer (its \"generator\" must be one of "
                         f"{', '.join(map(str, GENERATORS))})")
    return generator


def ground_truth_run(config, video_root: Path, seed: int, n: int, scene: SceneConfig, frame_filter=None):
    """(context, frame filter) of a method's run: the oracles (`--method oracle`, `evidence-oracle`)
    get the ground truth and the questions' evidence of the episodes as the runner streams them
    (`StreamedTruth`, `oracle.StreamedPriorities`: per frame, the evidence of every question of
    the episode, as in the ER run); other methods run as is."""
    if not (isinstance(config, MethodConfig) and config.selector.needs_ground_truth):
        return nullcontext(), frame_filter
    truth = StreamedTruth(video_root, seed, n, scene, then=frame_filter)
    hooks = ExitStack()
    hooks.enter_context(ground_truth(truth.cells))
    hooks.enter_context(cell_priorities(StreamedPriorities(truth)))
    return hooks, truth


def blank(frames: np.ndarray) -> np.ndarray:
    return np.full_like(frames, 128)


SYNTHETIC_SETTINGS = ("model", "weights", "n_local", "topk", "memory", "max_new_tokens", "stc", "dtype")


def evaluate(model, processor, queries, video_root: Path, out: Path, config, args, frame_filter=None) -> Report | None:
    """Answer the queries in `out` (resuming what is there, if made with the same settings and
    weights) and score them; None after Ctrl-C (the answers so far are kept)."""
    from stc.integrations.engine.session import StreamingSession  # on use: it imports transformers

    name = args.model or TESTBED_DIR
    check_settings(out, {"model": model_setting(name), "weights": weights_fingerprint(name), "n_local": args.n_local,
                         "topk": args.topk, "memory": memory_setting(args.stream), "max_new_tokens": args.max_new_tokens, "dtype": args.dtype,
                         "stc": None if config is None else dict(config.__dict__)}, SYNTHETIC_SETTINGS)

    def make():
        return StreamingSession(model, processor, config=config, **args.stream,
                                sample_fps=1.0, max_new_tokens=args.max_new_tokens)

    if run_resumable(queries, make, video_root, out, fps=1.0, max_new_tokens=args.max_new_tokens,
                     progress=not args.no_progress, frame_filter=frame_filter) is None:
        return None
    answers = merge_shards(queries, out)
    return score_synthetic(queries, read_answers(answers), source=str(answers))


def kept_on_objects(model, processor, config, seed: int, n: int, progress: bool = True,
                    scene: SceneConfig | None = None) -> dict:
    """Where a method keeps its visual tokens on eval episodes [seed, seed + n): the share of kept
    tokens that lie on object cells (cells an object covers, `synthetic_truth.on_objects`) and the
    object cells' share of all cells. Frames stream one at a time through the engine, as in the
    benchmark run (the oracle gets each episode's ground truth); a selector that finds the objects
    keeps well above the base share, one drawn to the background keeps below it. Reads each
    frame's tokens as a square grid in row-major order, as LLaVA-OneVision lays them out; raises
    ValueError when a frame's token count is no square."""
    from stc.integrations.engine.session import StreamingSession  # on use: it imports transformers

    kept = kept_on = cells = object_cells = frames = 0
    with StreamingSession(model, processor, config=config, sample_fps=1.0) as session:
        for index in tqdm(range(seed, seed + n), desc="token placement", unit="episode", file=sys.stderr,
                          disable=not progress):
            episode = generate_episode(episode_seed("eval", index), scene)
            session.reset()
            with ground_truth(EpisodeTruth(episode)), cell_priorities(EpisodePriorities(episode)):  # the oracles read them
                for frame, objects in zip(episode.frames, episode.states):
                    report = session.append_frames(frame[None])
                    grid = square_grid(report.tokens_in, "--placement")
                    on_object = on_objects(objects, episode.config.size, grid)
                    selected = report.kept  # None when no selector ran: every token kept
                    positions = selected[-1].cpu() if selected else torch.arange(report.tokens_in)
                    kept += len(positions)
                    kept_on += int(on_object[positions].sum())
                    cells += grid * grid
                    object_cells += int(on_object.sum())
                    frames += 1
    return {"kept_share": 100.0 * kept_on / kept, "object_cells_share": 100.0 * object_cells / cells,
            "kept_tokens": kept, "frames": frames}


def tokens_per_frame(model, processor, video: Path) -> float:
    """The LLM visual tokens one frame becomes (uncompressed), measured by streaming the first
    frame (a temporal block's frames for Qwen2-VL) of `video` through the engine; a whole number
    for LLaVA-OneVision (16 for the shipped testbed model's 4 x 4 grid)."""
    from stc.integrations.engine.session import StreamingSession  # on use: it imports transformers

    with StreamingSession(model, processor, config=None, sample_fps=1.0) as session:
        frames = sample_video(video, fps=1.0, max_frames=session.frames_per_block).frames
        report = session.append_frames(frames)
    per_frame = report.tokens_in / report.frames
    return int(per_frame) if per_frame == int(per_frame) else per_frame


def config_tag(config) -> str:
    if isinstance(config, MethodConfig):  # the method name leads the folder name already
        return f"k{config.keep_ratio:g}" + "".join(f"-{key}{value}" for key, value in config.options.items())
    tag = (f"N{config.cache_interval}-r{config.update_ratio:g}-k{config.keep_ratio:g}"
           f"-c{int(config.cacher)}p{int(config.pruner)}-{config.pruner_scoring}")
    defaults = type(config)()  # non-default anchor settings get their own folder, not a refusal
    if config.alpha != defaults.alpha:
        tag += f"-a{config.alpha:g}"
    if config.history_window != defaults.history_window:
        tag += f"-w{config.history_window}"
    if config.cut_threshold != defaults.cut_threshold:
        tag += f"-cut{config.cut_threshold if config.cut_threshold is None else format(config.cut_threshold, 'g')}"
    named = {"cache_interval", "update_ratio", "keep_ratio", "cacher", "pruner", "pruner_scoring", "alpha",
             "history_window", "cut_threshold"}
    for field in dataclasses.fields(config):  # every other knob (adaptive Cacher, scorers): its own folder too
        value = getattr(config, field.name)
        if field.name not in named and value != getattr(defaults, field.name):
            tag += f"-{field.name}{format(value, 'g') if isinstance(value, float) else value}"
    return tag
