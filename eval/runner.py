"""The streaming evaluation runner: each video streamed once, every query answered at its time.

For every source video, frames are sampled at `fps` and appended to a `StreamingSession` in time
order; each query of the video is asked as soon as the frames it may see (timestamp <= its
visibility cut-off) are in, and its answer is appended to the answers file at once (one JSON
line, flushed). A run killed at any point and restarted with the same arguments skips every
answered query and recomputes none; a video with some answered queries is streamed again only
to answer the rest. A missing or unreadable video is reported and skipped. `run_resumable` is
the same for commands: it says what a resumed run found, and after Ctrl-C what is saved.

Sharding: with N processes (`accelerate launch -m stc.eval ...`, or --num-shards/--shard-index),
videos are split round-robin with `datasets.Dataset.shard`; each process writes its own
answers.shard-K-of-N.jsonl, and the main process merges them into answers.jsonl in query order.

Protocols:
- multiple choice / yes-no / count: ask the prompt once at the query time;
- `start` (StreamingBench 60-s context): retrieval only from frames at or after `start`;
- proactive (extra["poll_times"]): ask the poll prompt at each poll time until the reply starts
  with "yes", then ask extra["answer_prompt"]; the answer's time is that poll time.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from stc.eval.records import Answer, Query, read_answers
from stc.integrations.video import open_video, sample_times

ANSWERS = "answers.jsonl"


@dataclass
class RunSummary:
    answered: int = 0
    skipped_answered: int = 0
    videos: int = 0
    missing_videos: list[str] = field(default_factory=list)
    seconds: float = 0.0


def visible_until(query: Query) -> float:
    """Last second of video a query may see (OVO-Bench: up to ceil(realtime))."""
    return float(query.extra.get("visible_until", query.time))


def shard_videos(videos: list[str], num_shards: int, index: int) -> list[str]:
    """Round-robin split of the (sorted) videos, deterministic for a given shard count."""
    if num_shards == 1:
        return videos
    from datasets import Dataset  # on use: datasets takes seconds to load, and only sharding needs it

    return list(Dataset.from_dict({"video": videos}).shard(num_shards=num_shards, index=index, contiguous=False)["video"])


def shard_file(out_dir: Path, num_shards: int, index: int) -> Path:
    return out_dir / (ANSWERS if num_shards == 1 else f"answers.shard-{index}-of-{num_shards}.jsonl")


class FrameSource:
    """Frames of one video sampled at fps, decoded lazily in time order (decord)."""

    def __init__(self, path: Path, fps: float, chunk: int = 32):
        self.reader = open_video(path)
        self.source_fps = float(self.reader.get_avg_fps()) or 1.0
        self.duration = len(self.reader) / self.source_fps
        self.times = sample_times(self.duration, fps)
        self.next = 0
        self.chunk = chunk

    def until(self, seconds: float):
        """Frames (and timestamps) not yet returned with timestamp <= seconds, in chunks."""
        end = int(np.searchsorted(self.times, seconds + 1e-6, side="right"))
        while self.next < end:
            stop = min(end, self.next + self.chunk)
            times = self.times[self.next : stop]
            index = np.minimum(np.round(times * self.source_fps).astype(int), len(self.reader) - 1)
            frames = self.reader.get_batch(list(index)).asnumpy()
            self.next = stop
            yield frames, times


def _drop_torn_line(path: Path) -> None:
    """A writer killed mid-line leaves a partial last line: cut it so appends stay valid."""
    if not path.exists() or path.stat().st_size == 0:
        return
    with open(path, "rb+") as f:
        data = f.read()
        if not data.endswith(b"\n"):
            f.truncate(data.rfind(b"\n") + 1)


def _write(handle, answer: Answer) -> None:
    handle.write(json.dumps(answer.to_json()) + "\n")
    handle.flush()
    os.fsync(handle.fileno())


def _says_yes(text: str) -> bool:
    return text.strip().lower().startswith("yes")


def run_video(session, source: FrameSource, queries: list[Query], write: Callable[[Answer], None],
              max_new_tokens: int, on_answer: Callable[[], None], frame_filter: Callable | None = None) -> None:
    """Stream one video once and answer its pending queries in time order. `frame_filter`
    (frames -> frames) alters what the model sees, e.g. blanked frames for a blind run."""
    session.reset()
    events = []  # (cut-off time, order, query, poll index)
    for order, q in enumerate(queries):
        polls = q.extra.get("poll_times")
        events.append((float(polls[0]) if polls else visible_until(q), order, q, 0))
    events.sort(key=lambda e: (e[0], e[1]))
    while events:
        cutoff, order, query, poll = events.pop(0)
        for frames, times in source.until(cutoff):
            session.append_frames(frames if frame_filter is None else frame_filter(frames), timestamps=times)
        started = time.perf_counter()
        polls = query.extra.get("poll_times")
        if polls:
            reply = session.ask(query.prompt, max_new_tokens=max_new_tokens, since=query.start)
            if _says_yes(reply.text):
                final = session.ask(query.extra["answer_prompt"], max_new_tokens=max_new_tokens, since=query.start)
                write(_answer(query, final.text, cutoff, started, polled=poll + 1))
                on_answer()
            elif poll + 1 < len(polls) and polls[poll + 1] <= source.duration:
                events.append((float(polls[poll + 1]), order, query, poll + 1))
                events.sort(key=lambda e: (e[0], e[1]))
            else:
                write(_answer(query, "", None, started, polled=poll + 1))
                on_answer()
            continue
        reply = session.ask(query.prompt, max_new_tokens=max_new_tokens, since=query.start)
        write(_answer(query, reply.text, query.time, started, retrieved=len(reply.retrieved.get(0, []))))
        on_answer()


def _answer(query: Query, text: str, at: float | None, started: float, **info) -> Answer:
    return Answer(
        qid=query.qid,
        response=text,
        video=query.video,
        time=query.time if at is None else float(at),
        task=query.task,
        seconds=time.perf_counter() - started,
        info={k: v for k, v in info.items() if v is not None} | ({"no_reply": True} if at is None else {}),
    )


def run_queries(
    queries: list[Query],
    make_session: Callable[[], object],
    video_root: str | os.PathLike,
    out_dir: str | os.PathLike,
    fps: float = 1.0,
    max_new_tokens: int = 16,
    num_shards: int = 1,
    shard_index: int = 0,
    progress: bool = True,
    frame_filter: Callable | None = None,
) -> RunSummary:
    """Answer `queries` (resuming from out_dir) and return what was done."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = shard_file(out_dir, num_shards, shard_index)
    done = set(answered_qids(out_dir))
    by_video: dict[str, list[Query]] = {}
    for q in queries:
        by_video.setdefault(q.video, []).append(q)
    videos = sorted(by_video)
    mine = shard_videos(videos, num_shards, shard_index)
    pending = {v: [q for q in by_video[v] if q.qid not in done] for v in mine}
    summary = RunSummary(skipped_answered=sum(len(by_video[v]) - len(pending[v]) for v in mine))
    total = sum(len(p) for p in pending.values())
    bar = _progress(total, progress, f"shard {shard_index + 1}/{num_shards}" if num_shards > 1 else "answering")
    started = time.perf_counter()
    session = None
    _drop_torn_line(path)
    try:
        with open(path, "a") as handle:
            for video in mine:
                todo = pending[video]
                if not todo:
                    continue
                try:
                    source = FrameSource(Path(video_root) / video, fps)
                except Exception as exc:  # missing or unreadable: report, skip, go on
                    summary.missing_videos.append(video)
                    print(f"\nskipping {video}: {exc}", file=sys.stderr)
                    bar.update(len(todo))
                    continue
                session = session or make_session()

                def answered() -> None:
                    summary.answered += 1
                    bar.update(1)

                run_video(session, source, todo, lambda a: _write(handle, a), max_new_tokens, answered, frame_filter)
                summary.videos += 1
    finally:  # also on Ctrl-C: end the progress bar's line, free the session
        bar.close()
        if session is not None:
            session.close()
    summary.seconds = time.perf_counter() - started
    return summary


def run_resumable(queries: list[Query], make_session: Callable[[], object], video_root: str | os.PathLike,
                  out_dir: str | os.PathLike, **options) -> RunSummary | None:
    """`run_queries` for a command: says on stderr how many answers a resumed run found and, on
    Ctrl-C, how many are saved and that the same command resumes; then returns None."""
    found = saved_answers(queries, out_dir)
    if found:
        print(f"resuming: found {found} answers in {out_dir}, {len(queries) - found} left", file=sys.stderr)
    try:
        return run_queries(queries, make_session, video_root, out_dir, **options)
    except KeyboardInterrupt:
        print(f"interrupted: {saved_answers(queries, out_dir)} answers saved in {out_dir}; "
              "run the same command again to resume", file=sys.stderr)
        return None


def saved_answers(queries: list[Query], out_dir: str | os.PathLike) -> int:
    """How many of `queries` have an answer in out_dir (any shard)."""
    return len(answered_qids(out_dir).keys() & {q.qid for q in queries})


def _answer_files(out_dir: Path) -> list[Path]:
    return [p for p in [out_dir / ANSWERS, *sorted(out_dir.glob("answers.shard-*.jsonl"))] if p.exists()]


def answered_qids(out_dir: str | os.PathLike) -> dict[str, dict]:
    """Every answer already in out_dir (answers.jsonl and any shard files)."""
    answers: dict[str, dict] = {}
    for path in _answer_files(Path(out_dir)):
        answers.update(read_answers(path))
    return answers


def merge_shards(queries: list[Query], out_dir: str | os.PathLike) -> Path:
    """Merge shard answer files and answers.jsonl into answers.jsonl, in query order (so the
    result does not depend on which process answered what, or when)."""
    out_dir = Path(out_dir)
    answers = answered_qids(out_dir)
    merged = out_dir / (ANSWERS + ".tmp")
    with open(merged, "w") as f:
        for q in queries:
            if q.qid in answers:
                f.write(json.dumps(answers[q.qid]) + "\n")
    merged.replace(out_dir / ANSWERS)
    for path in out_dir.glob("answers.shard-*.jsonl"):
        path.unlink()
    return out_dir / ANSWERS


def _progress(total: int, enabled: bool, description: str):
    """A tqdm bar with ETA on stderr (disabled: same calls, no output)."""
    return tqdm(total=total, desc=description, unit="q", file=sys.stderr, dynamic_ncols=True, disable=not enabled)
