"""Questions asked while the stream runs: `t=SECONDS:QUESTION` specs, question files, and the
schedule that hands each question out once the stream reaches its time."""

from __future__ import annotations

import heapq
import itertools
import math
import os
import re
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from stc.integrations.demo.errors import DemoError

_TIMED_QUESTION = re.compile(r"^\s*t\s*=\s*(\d+(?:\.\d*)?|\.\d+)\s*s?\s*:\s*(.*\S)\s*$")


@dataclass(frozen=True)
class TimedQuestion:
    """A question asked once the stream reaches `time`: by the demo, and by `stc run` (which also
    knows the answer of the synthetic stream's questions)."""

    time: float  # stream seconds from which it is due (-inf: at once)
    text: str
    truth: str | None = None  # the expected answer, when known


def parse_timed_question(spec: str) -> TimedQuestion:
    """`t=5:What colour is the car?` -> TimedQuestion(5.0, "What colour is the car?")."""
    match = _TIMED_QUESTION.match(spec)
    if match is None:
        raise DemoError(f"cannot read question {spec!r}: write it as t=SECONDS:QUESTION, e.g. \"t=5:What is in the video?\"")
    return TimedQuestion(float(match.group(1)), match.group(2))


def read_question_file(path: str | os.PathLike) -> list[TimedQuestion]:
    """One `t=SECONDS:QUESTION` per line; blank lines and lines starting with # are skipped."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise DemoError(f"cannot read question file {path}: {exc.strerror or exc}") from exc
    questions = []
    for number, line in enumerate(lines, 1):
        if line.strip() and not line.lstrip().startswith("#"):
            try:
                questions.append(parse_timed_question(line))
            except DemoError as exc:
                raise DemoError(f"{path}:{number}: {exc}") from exc
    return questions


class QuestionSchedule:
    """Questions waiting for their stream time, handed out in time order (then in the order they
    were added). Thread-safe: questions typed in a terminal or window arrive from other threads."""

    def __init__(self, questions: Iterable[TimedQuestion] = ()):
        self._heap: list[tuple[float, int, TimedQuestion]] = []
        self._order = itertools.count()
        self._lock = threading.Lock()
        for question in questions:
            self.add(question)

    def add(self, question: TimedQuestion) -> None:
        with self._lock:
            heapq.heappush(self._heap, (question.time, next(self._order), question))

    def ask_now(self, text: str) -> None:
        """A question due at once (answered after the next ingested frame)."""
        if text.strip():
            self.add(TimedQuestion(-math.inf, text.strip()))

    def due(self, stream_time: float, inclusive: bool = True) -> list[TimedQuestion]:
        """Remove and return the questions whose time is <= stream_time (< if not inclusive)."""
        with self._lock:
            out = []
            while self._heap and (self._heap[0][0] <= stream_time if inclusive else self._heap[0][0] < stream_time):
                out.append(heapq.heappop(self._heap)[2])
            return out

    def remaining(self) -> list[TimedQuestion]:
        """Remove and return every question left."""
        return self.due(math.inf)

    def __len__(self) -> int:
        with self._lock:
            return len(self._heap)
