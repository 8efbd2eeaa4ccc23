"""Multi-round requests (lmms-eval's `generate_until_multi_round`, e.g. OVO-Bench forward) as a
real stream: one `StreamingSession` per document, fed only the frames each round's clip adds.

OVO-Bench's forward rounds give pre-cut clips [0, t_i] with growing t_i. Frames are sampled on a
fixed grid k / stream_fps (a uniform k-frame sampling of each clip would pick different frames
every round, which no stream can reuse). A round's clip extends the stream when its frame at the
stream's last time matches the frame ingested there (mean absolute difference <= MATCH_TOLERANCE
of 255, re-encoding noise); then only its later frames are appended. A clip that does not extend
the stream (another video, a clip that starts elsewhere or is shorter) restarts the session on the
whole clip, and is counted in `restarts` and logged. A trailing incomplete block (Qwen-VL folds 2
frames into one slice) waits for the next round, so every frame is encoded exactly once.
"""

from __future__ import annotations

import logging

import numpy as np

from stc.integrations import StreamingSession
from stc.integrations.video import sample_video

MATCH_TOLERANCE = 12.0
log = logging.getLogger(__name__)


class DocumentStream:
    """The stream of one document's rounds: `answer(clip, question)` per round."""

    def __init__(self, make_session, stream_fps: float):
        self.make_session, self.stream_fps = make_session, stream_fps
        self.session: StreamingSession | None = None
        self.restarts = 0
        self._last: np.ndarray | None = None  # the last frame sampled (ingested or held back)
        self._last_time: float | None = None
        self._held: list[tuple[np.ndarray, float]] = []  # frames of an incomplete block

    def _new_frames(self, clip: str) -> tuple[np.ndarray, np.ndarray]:
        """Frames of `clip` after the stream's last time; restarts the stream if it does not extend it."""
        if self.session is not None:
            tail = sample_video(clip, fps=self.stream_fps, start=self._last_time)
            if len(tail.timestamps) and abs(tail.timestamps[0] - self._last_time) < 1e-6 and \
                    np.abs(tail.frames[0].astype(np.float32) - self._last).mean() <= MATCH_TOLERANCE:
                return tail.frames[1:], tail.timestamps[1:]
            self.restarts += 1
            log.warning("stc: %s does not extend the stream of its document's earlier rounds; restarting it on the whole clip", clip)
            self.close()
        self.session = self.make_session()
        whole = sample_video(clip, fps=self.stream_fps)
        return whole.frames, whole.timestamps

    def answer(self, clip: str, question: str, max_new_tokens: int) -> str:
        frames, times = self._new_frames(clip)
        if len(frames):
            self._last, self._last_time = frames[-1], float(times[-1])
        pending = self._held + list(zip(frames, times))
        whole = len(pending) - len(pending) % self.session.frames_per_block
        if whole:
            self.session.append_frames(np.stack([f for f, _ in pending[:whole]]), timestamps=[t for _, t in pending[:whole]])
        self._held = pending[whole:]
        return self.session.ask(question, max_new_tokens=max_new_tokens).text

    def close(self) -> None:
        if self.session is not None:
            self.session.close()
        self.session, self._last, self._last_time, self._held = None, None, None, []
