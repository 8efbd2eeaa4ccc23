"""Synthetic streaming video QA: a procedurally generated testbed that measures accuracy in minutes.

Each episode is a short video (default 32 frames of 96 x 96 RGB at 1 frame per second) drawn from an
integer seed: coloured shapes (circle, square, triangle, star, cross, diamond, ring) and characters
(capital letters and digits) in six colours (red, green, blue, yellow, white, purple) appear on a
drifting, low-contrast textured background, move slowly, often change colour or shape once, and
leave. At most four are on screen at once; about half are small (10-14 px, about one ViT patch),
the rest medium (20-28 px). Every answer is computed from the per-frame scene state, never from pixels.
Questions are asked at frame times, OVO-Bench style, about what could be seen up to that moment
(about 10 per episode, at least one in the last third of the video):

  task              question                                            share  chance
  Real-time perception ("rt", 42%), about the frame at the query time:
  rt_colour         colour of the <shape or character> now                8%    1/4
  rt_shape          shape of the <colour> object now                      9%    1/4
  rt_count          how many objects are visible now (0-4)                8%    1/5
  rt_position       quadrant of the <colour> <object> now                 8%    1/4
  rt_character      which <colour> character is shown now                 8%    1/4
  Backward tracing ("bt", 36%), about earlier frames:
  bt_first          which of four objects appeared first                  8%    1/4
  bt_colour_before  colour of <object> before it changed colour           8%    1/4
  bt_shape_before   shape of <object> before it changed shape             2%    1/4
  bt_previous       which object appeared just before <object>           10%    1/4
  bt_left           has <object> been shown earlier and already left      8%    1/2
  Forward probes ("fp", 22%), the same question asked as the video goes on:
  fp_appeared       has <object> appeared yet (before and after it does)  12%   1/2
  fp_count          how many objects (0-4), shapes (0-2), characters      10%   1/5 or 1/3
                    (0-2) have appeared, colour changes (0-2) happened, so far

Chance is the accuracy of a uniform guesser (`chance_accuracy`): 0.24 for rt, 0.30 for bt, 0.41
for fp, 0.30 overall (shares and chance measured on 2000 eval episodes). Multiple choice has four
options A-D with the correct letter uniform, Yes/No is balanced, counts are near uniform over their
range; distractors are of the answer's kind, and options naming objects absent from the video copy
the kind of a present one and never share a colour with another option, so the text alone gives
little away: a bag-of-words model trained on 6000 episodes without frames scores within about 3
points of chance on every task (highest on fp_count, whose count priors are not quite flat). About half of the questions about one object are about a small one.

Prompts use a closed vocabulary of 96 tokens (`VOCABULARY`, split by `tokenize`; v2 prompts use
the first 93); answers are single tokens (A-D, Yes/No, 0-4). Train and eval episodes come from disjoint seed ranges
(`episode_seed`); `write_benchmark` writes lossless FFV1 videos and a queries.jsonl of `Query`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from stc.eval.records import Query, write_queries
from stc.eval.synthetic.history import History
from stc.eval.synthetic.questions import (  # noqa: F401  (re-exported: the benchmark's public names)
    COUNT_QUESTIONS,
    NO,
    OPTION_LETTERS,
    QUADRANTS,
    QUESTIONS,
    REAL_TIME_TASKS,
    TASKS,
    VOCABULARY,
    YES,
    Draft,
    ask_questions,
    tokenize,
)
from stc.eval.synthetic.scene import ObjectState, SceneConfig, SceneStates, render_frames, simulate_scene

SPLITS = ("train", "eval")
EVAL_SEED_OFFSET = 10**9  # train seeds are [0, 1e9), eval seeds [1e9, 2e9)
VIDEO_DIR = "synthetic"
SHUFFLE_STREAM = 4  # seeds the frame order of shuffled videos apart from the episode's own three streams


@dataclass
class Episode:
    """One synthetic video with its ground truth and questions (frames None when not rendered)."""

    seed: int
    config: SceneConfig
    frames: np.ndarray | None  # [F, H, W, 3] uint8 RGB
    timestamps: np.ndarray  # [F] seconds
    states: SceneStates  # [frame][object id]
    queries: list[Query]

    @property
    def video(self) -> str:
        return video_name(self.seed)


def video_name(seed: int) -> str:
    """The episode's video file, relative to a benchmark directory (Query.video)."""
    return f"{VIDEO_DIR}/{seed}.avi"


def episode_seed(split: str, index: int) -> int:
    """Seed of the index-th episode of a split; train and eval seed ranges never overlap."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if not 0 <= index < EVAL_SEED_OFFSET:
        raise ValueError(f"episode index must be in [0, {EVAL_SEED_OFFSET}), got {index}")
    return index + (EVAL_SEED_OFFSET if split == "eval" else 0)


def generate_episode(seed: int, config: SceneConfig | None = None, render: bool = True) -> Episode:
    """The episode of a seed: same seed and config, same frames and questions, bit for bit.
    render=False skips drawing (the questions do not depend on it)."""
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    config = config or SceneConfig()
    scene_seed, background_seed, question_seed = np.random.SeedSequence(int(seed)).spawn(3)
    states = simulate_scene(_generator(scene_seed), config)
    frames = render_frames(_generator(background_seed), states, config) if render else None
    drafts = ask_questions(_generator(question_seed), History(states), config)
    queries = [to_query(int(seed), k, draft, config) for k, draft in enumerate(drafts)]
    timestamps = np.arange(config.frames) / config.fps
    return Episode(int(seed), config, frames, timestamps, states, queries)


def iter_episodes(
    split: str, n_episodes: int, first_index: int = 0, config: SceneConfig | None = None, render: bool = True
) -> Iterator[Episode]:
    for index in range(first_index, first_index + n_episodes):
        yield generate_episode(episode_seed(split, index), config, render)


def build_benchmark(
    split: str, n_episodes: int, first_index: int = 0, config: SceneConfig | None = None
) -> list[Query]:
    """The questions of n_episodes consecutive episodes of a split (videos not rendered)."""
    episodes = iter_episodes(split, n_episodes, first_index, config, render=False)
    return [q for episode in episodes for q in episode.queries]


def write_video(path: str | os.PathLike, frames: np.ndarray, fps: float) -> None:
    """Lossless FFV1 in AVI: decord reads back the exact RGB frames, frame count and fps."""
    import cv2  # only here: rendering the frames never touches OpenCV

    height, width = frames.shape[1:3]
    writer = cv2.VideoWriter(os.fspath(path), cv2.VideoWriter_fourcc(*"FFV1"), fps, (width, height))
    if not writer.isOpened():
        raise RuntimeError(f"cannot open an FFV1 video writer for {path}")
    for frame in frames:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()


def write_benchmark(
    out_dir: str | os.PathLike,
    split: str = "eval",
    n_episodes: int = 100,
    first_index: int = 0,
    config: SceneConfig | None = None,
    shuffle_frames: bool = False,
) -> Path:
    """Write out_dir/synthetic/<seed>.avi for each episode and out_dir/queries.jsonl (videos are
    relative to out_dir, the run's video root). Returns the queries file. shuffle_frames: each
    video shows its episode's frames in `shuffled_order` (the shuffled-frames floor: the same
    pictures, no order to read; the questions unchanged)."""
    out_dir = Path(out_dir)
    (out_dir / VIDEO_DIR).mkdir(parents=True, exist_ok=True)
    queries = []
    for episode in iter_episodes(split, n_episodes, first_index, config):
        frames = episode.frames[shuffled_order(episode.seed, len(episode.frames))] if shuffle_frames else episode.frames
        write_video(out_dir / episode.video, frames, episode.config.fps)
        queries.extend(episode.queries)
    path = out_dir / "queries.jsonl"
    write_queries(queries, path)
    return path


def shuffled_order(seed: int, frames: int) -> np.ndarray:
    """The order the shuffled-frames floor shows an episode's frames in: a permutation seeded by
    the episode's seed alone (the same on every run, different between episodes)."""
    return np.random.Generator(np.random.PCG64([int(seed), SHUFFLE_STREAM])).permutation(frames)


def chance_accuracy(queries: Iterable[Query]) -> dict[str, float]:
    """Expected accuracy of a uniform guesser over each query's possible answers, averaged per
    category ("rt", "bt", "fp"), per task and over all queries ("all")."""
    groups: dict[str, list[float]] = {}
    for q in queries:
        chance = 1.0 / len(q.extra["choices"])
        for key in ("all", q.extra["category"], q.task):
            groups.setdefault(key, []).append(chance)
    return {key: float(np.mean(values)) for key, values in groups.items()}


def _generator(seed_sequence: np.random.SeedSequence) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(seed_sequence))


def still_queries(rng: np.random.Generator, objects: Iterable[ObjectState], config: SceneConfig,
                  rounds: int = 2) -> list[Query]:
    """Real-time questions about one still (a one-frame scene, see `render_still`), written by the
    benchmark's own question writers: each real-time task asked up to `rounds` times (repeats
    dropped). Training data for the testbed, where fresh scenes teach perception faster than the
    32 frames of an episode. Query ids and video names are those of seed 0 (not a real episode)."""
    history = History((tuple(replace(o, id=k) for k, o in enumerate(objects)),))
    drafts: list[Draft] = []
    asked: set[str] = set()
    for _ in range(rounds):
        for task in REAL_TIME_TASKS:
            for _attempt in range(4 * (config.max_objects + 1)):  # a count question needs its count drawn
                new = [d for d in TASKS[task][0](rng, history, config, 1) if d.prompt not in asked]
                if new:
                    drafts += new
                    asked.update(d.prompt for d in new)
                    break
    return [to_query(0, k, draft, config) for k, draft in enumerate(drafts)]


def to_query(seed: int, k: int, draft: Draft, config: SceneConfig) -> Query:
    answer = OPTION_LETTERS[draft.options.index(draft.answer)] if draft.kind == "mc" else draft.answer
    target = draft.target
    small_limit = config.size_range(small=True)[1]
    extra = {
        "category": draft.task.split("_")[0],
        "seed": seed,
        "frame": draft.frame,
        "choices": list(draft.choices),
        "options": list(draft.options),
        "answer_text": draft.answer,
        "target_id": None if target is None else target.id,
        "target_size": None if target is None else ("small" if target.size <= small_limit else "medium"),
    }
    return Query(
        qid=f"syn-{seed}-{k}",
        video=video_name(seed),
        time=draft.frame / config.fps,
        prompt=draft.prompt,
        answer=answer,
        task=draft.task,
        kind=draft.kind,
        extra=extra,
    )
