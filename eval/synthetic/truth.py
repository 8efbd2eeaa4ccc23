"""The synthetic scene's ground truth on the model's token grid: which visual tokens lie on objects.

`stc eval synthetic --placement` counts the kept tokens on those cells; `--method oracle` keeps
them first (`stc.peers.OracleSelector`, which reads them through the `stc.peers.ground_truth`
hook). A cell is on an object by `cell_labels`' rule (the testbed's training labels): an object's
box covers at least 30% of the cell or of the object.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

from stc.integrations.demo.overlay import token_grid

from stc.eval.runner import FrameSource
from stc.eval.synthetic.episodes import Episode, episode_seed, generate_episode
from stc.eval.synthetic.scene import SceneConfig
from stc.eval.testbed.vision import cell_labels


def square_grid(tokens: int, what: str) -> int:
    """The side of a frame's square token grid (row-major, as LLaVA-OneVision lays it out: the
    demo's `token_grid` for a square frame); ValueError naming `what` needs it when `tokens` is no
    square."""
    if tokens < 1 or (grid := token_grid(tokens, 1.0))[0] != grid[1]:
        raise ValueError(f"{what} needs a square grid of visual tokens per frame; this model gave {tokens} for one frame")
    return grid[0]


def on_objects(objects, frame_size: int, grid: int) -> torch.Tensor:
    """[grid * grid] bool: the cells an object covers in one frame (objects: its ObjectStates)."""
    return cell_labels(objects, frame_size, grid)[:, 0] > 0


class EpisodeTruth:
    """The object cells of one episode's frames, as the oracle asks for them: (stream, t, n) ->
    [n] bool for frame t on an n-token grid."""

    def __init__(self, episode: Episode):
        self.episode = episode

    def __call__(self, stream: int, t: int, tokens: int) -> torch.Tensor:
        states = self.episode.states
        if not 0 <= t < len(states):
            raise ValueError(f"the oracle asked for frame {t} of an episode of {len(states)} frames")
        return on_objects(states[t], self.episode.config.size, square_grid(tokens, "--method oracle"))


class StreamedTruth:
    """The ground truth of the benchmark's episodes [seed, seed + n) while the runner streams their
    videos. Given as the run's frame filter, it sees each chunk of frames before the engine does
    and recognises an episode by its first frame (the runner streams every video from its start
    after a reset); `cells` then answers the oracle for that episode. `then` is the filter the
    frames go through afterwards (e.g. blanking for --blind)."""

    def __init__(self, video_root: Path, seed: int, n: int, config: SceneConfig | None = None, then=None):
        self.then = then
        self.current: EpisodeTruth | None = None
        self.by_first_frame: dict[str, EpisodeTruth] = {}
        for index in range(seed, seed + n):
            episode = generate_episode(episode_seed("eval", index), config, render=False)
            first, _ = next(FrameSource(Path(video_root) / episode.video, episode.config.fps).until(0.0))
            self.by_first_frame[_digest(first[0])] = EpisodeTruth(episode)
        if len(self.by_first_frame) != n:
            raise RuntimeError("two episodes begin with the same frame: the oracle cannot tell them apart")

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        self.current = self.by_first_frame.get(_digest(frames[0]), self.current)
        if self.current is None:
            raise RuntimeError("the oracle got a stream that starts with no episode's first frame")
        return frames if self.then is None else self.then(frames)

    def cells(self, stream: int, t: int, tokens: int) -> torch.Tensor:
        if self.current is None:
            raise RuntimeError("the oracle got a frame before any episode started")
        return self.current(stream, t, tokens)


def _digest(frame: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(frame).tobytes()).hexdigest()
