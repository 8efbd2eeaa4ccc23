"""The record format every benchmark is converted to, and the answers file the runner writes.

A `Query` is one question asked at one moment of one video. Loaders turn official annotation
files (OVO-Bench, StreamingBench) and the synthetic testbed into queries; the streaming runner
groups them by video, streams each video once in time order and answers every query at its time;
scorers read the answers back. Answers are JSON lines, one per query, appended as soon as they
exist, so a killed run loses nothing and resumes where it stopped.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

QUERY_KINDS = ("mc", "yesno", "count", "open")


@dataclass
class Query:
    """One question at one moment of one video.

    qid:     unique within its benchmark (stable across runs: resume relies on it).
    video:   video file, relative to the run's video root (or absolute).
    time:    seconds from the start of the video at which the question is asked; the model may
             only see frames at or before this time.
    prompt:  the question exactly as the model gets it (the benchmark's official prompt).
    answer:  ground truth as written in the annotation file.
    task:    the benchmark's task name (per-task scores are keyed by it).
    kind:    "mc" (option letter), "yesno", "count" or "open".
    start:   earliest second the model may use (StreamingBench 60-s context), or None.
    extra:   benchmark-specific fields needed to score or to write official formats.
    """

    qid: str
    video: str
    time: float
    prompt: str
    answer: str
    task: str
    kind: str = "mc"
    start: float | None = None
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in QUERY_KINDS:
            raise ValueError(f"Query.kind must be one of {QUERY_KINDS}, got {self.kind!r}")
        if self.time < 0:
            raise ValueError(f"Query.time must be >= 0, got {self.time!r} (qid {self.qid})")

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> Query:
        return cls(**data)


@dataclass
class Answer:
    """What the runner writes for one query (one JSON line)."""

    qid: str
    response: str
    video: str
    time: float
    task: str
    seconds: float = 0.0  # time to answer
    info: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return asdict(self)


def write_queries(queries: Iterable[Query], path: str | os.PathLike) -> None:
    with open(path, "w") as f:
        for q in queries:
            f.write(json.dumps(q.to_json()) + "\n")


def read_queries(path: str | os.PathLike) -> list[Query]:
    with open(path) as f:
        return [Query.from_json(json.loads(line)) for line in f if line.strip()]


def read_answers(path: str | os.PathLike) -> dict[str, dict]:
    """qid -> answer record of an answers file; a torn last line (killed writer) is ignored."""
    answers: dict[str, dict] = {}
    path = Path(path)
    if not path.exists():
        return answers
    with open(path) as f:
        for line in f:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            answers[record["qid"]] = record
    return answers


def iter_answer_files(paths: Iterable[str | os.PathLike]) -> Iterator[Path]:
    for p in paths:
        p = Path(p)
        if p.is_dir():
            yield from sorted(p.glob("*.jsonl"))
        else:
            yield p
