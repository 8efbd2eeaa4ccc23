"""The testbed's endless synthetic stream as a live-demo source (`stc demo --source synthetic`)."""

from __future__ import annotations

import numpy as np

from stc.eval.synthetic.episodes import episode_seed, generate_episode
from stc.eval.synthetic.scene import SceneConfig


class SyntheticSource:
    """The synthetic benchmark's episodes one after another, endlessly (each a new eval seed: 32
    frames of 96 x 96 at 1 fps with the default SceneConfig), so the demo runs with no camera or file.

    The demo (`stc.integrations.demo`) receives it as an argument of `open_source`: this source does
    not import the demo, nor the demo this source.
    """

    NAME = "synthetic"  # the stream's name in the demo's overlay, before its episode number
    live = False
    end_message = "synthetic stream ended"

    def __init__(self, first_episode: int = 0):
        self.config = SceneConfig()
        self.fps = float(self.config.fps)
        self.episode = first_episode
        self.name = self.NAME
        self._frames: np.ndarray | None = None
        self._frame_in_episode = 0
        self._episodes_played = 0

    def read(self) -> tuple[np.ndarray, float] | None:
        if self._frames is None or self._frame_in_episode == len(self._frames):
            if self._frames is not None:
                self.episode += 1
                self._episodes_played += 1
            self._frames = generate_episode(episode_seed("eval", self.episode), self.config).frames
            self._frame_in_episode = 0
            self.name = f"{self.NAME} episode {self.episode}"
        index = self._episodes_played * len(self._frames) + self._frame_in_episode
        frame = self._frames[self._frame_in_episode]
        self._frame_in_episode += 1
        return frame, index / self.fps

    def close(self) -> None:
        self._frames = None
