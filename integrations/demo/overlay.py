"""What the demo draws on each frame: the stream's numbers (`StreamStatus`), an optional heat map
of the tokens the Pruner kept, and the last question and answer.

cv2 is imported inside functions: importing the demo package (the synthetic eval does, for
`token_grid`) does not load OpenCV.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass
class DemoAnswer:
    question: str
    asked_at: float  # stream seconds: the question's time, or when it was answered if asked "now"
    frames_seen: int
    text: str
    seconds: float  # time to answer
    late: bool = False  # its time was after the end of the stream: answered from all of it


@dataclass
class StreamStatus:
    """What the overlay shows, updated after every ingested frame."""

    source: str
    sample_fps: float
    timestamp: float = 0.0
    frames: int = 0
    ingest_fps: float = 0.0
    vit_ms_per_frame: float = 0.0  # the vision tower alone, as `stc bench`'s "ViT ms/frame"
    encode_ms_per_frame: float = 0.0  # resize + ViT + projector + selection (IngestReport.encode_s)
    resize_ms_per_frame: float = 0.0  # the processor's resizing and normalising, within encoding
    vit_reuse: float = 0.0  # share of ViT tokens reused by the Cacher so far
    tokens_in_per_frame: float = 0.0
    tokens_kept_per_frame: float = 0.0
    memory_bytes: int = 0
    memory_budget: int | None = None  # bytes (StreamingSession's memory_budget), None: unbounded
    evicted: int = 0  # blocks evicted to stay within the budget
    dropped: int = 0
    kept_grid: np.ndarray | None = None  # bool [rows, cols] for the last frame; None: all kept
    answer: DemoAnswer | None = None
    typing: str | None = None  # a question being typed in the window

    def lines(self) -> list[str]:
        return [
            f"{self.source}   t={self.timestamp:.1f}s   frame {self.frames}",
            f"ingestion {self.ingest_fps:.1f} fps (sampling {self.sample_fps:g} fps)",
            f"ViT {self.vit_ms_per_frame:.1f} ms/frame, {self.vit_reuse:.0%} of tokens reused",
            f"encoding {self.encode_ms_per_frame:.1f} ms/frame (resize {self.resize_ms_per_frame:.1f} + ViT + selection)",
            f"LLM tokens kept {self.tokens_kept_per_frame:.0f} of {self.tokens_in_per_frame:.0f} per frame",
            self._memory_line(),
            f"dropped frames {self.dropped}",
        ]

    def _memory_line(self) -> str:
        line = f"stream memory {_format_bytes(self.memory_bytes)}"
        if self.memory_budget is None:
            return line
        return (f"{line} of {_format_bytes(self.memory_budget)} budget ({self.memory_bytes / self.memory_budget:.0%}), "
                f"{self.evicted} blocks evicted")


def _format_bytes(count: int) -> str:
    return f"{count / 2**20:.2f} MiB" if count >= 2**20 else f"{count / 2**10:.1f} KiB"


def token_grid(tokens: int, aspect: float) -> tuple[int, int]:
    """(rows, cols) with rows * cols = tokens whose shape is closest to width / height = aspect:
    sqrt(n) x sqrt(n) for LLaVA-OneVision's square pooled grid, h x w for Qwen-VL's merged grid."""
    if tokens < 1:
        raise ValueError(f"tokens must be >= 1, got {tokens}")
    pairs = [(rows, tokens // rows) for rows in range(1, tokens + 1) if tokens % rows == 0]
    return min(pairs, key=lambda rc: (abs(math.log(rc[1] / rc[0]) - math.log(aspect)), rc[0]))


def kept_grid(kept_positions, tokens: int, aspect: float) -> np.ndarray:
    """bool [rows, cols]: which of a frame's `tokens` grid cells the Pruner kept."""
    rows, cols = token_grid(tokens, aspect)
    grid = np.zeros(rows * cols, dtype=bool)
    grid[np.asarray(kept_positions, dtype=np.int64)] = True
    return grid.reshape(rows, cols)


_FONT_SCALE = 0.5
_LINE_HEIGHT = 20
_MARGIN = 8
_WHITE, _YELLOW, _GREEN, _CYAN, _RED = (255, 255, 255), (0, 230, 255), (120, 255, 120), (255, 230, 0), (80, 80, 255)  # BGR


def wrap_text(text: str, width_px: int) -> list[str]:
    """Greedy word wrap of `text` to lines at most `width_px` wide in the overlay font."""
    import cv2

    lines: list[str] = []
    for paragraph in text.splitlines() or [""]:
        line = ""
        for word in paragraph.split():
            candidate = f"{line} {word}".strip()
            if line and cv2.getTextSize(candidate, cv2.FONT_HERSHEY_SIMPLEX, _FONT_SCALE, 1)[0][0] > width_px:
                lines.append(line)
                line = word
            else:
                line = candidate
        lines.append(line)
    return lines


def _first_lines(lines: list[str], count: int) -> list[str]:
    """At most `count` lines, the last ending in "..." when some were cut."""
    return lines if len(lines) <= count else lines[: count - 1] + [lines[count - 1] + " ..."]


def _panel(image: np.ndarray, top: int, bottom: int, lines: list[tuple[str, tuple]], fit_width: bool = False,
           opacity: float = 0.6) -> None:
    """Text lines (text, BGR colour) on a translucent dark band between rows top and bottom, as
    wide as the image or (fit_width) as the longest line."""
    import cv2

    top, bottom = max(0, top), min(image.shape[0], bottom)
    right = image.shape[1]
    if fit_width:
        text_width = max(cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, _FONT_SCALE, 1)[0][0] for text, _ in lines)
        right = min(right, text_width + 2 * _MARGIN)
    band = image[top:bottom, :right]
    band[:] = (band * (1 - opacity)).astype(np.uint8)
    for i, (text, colour) in enumerate(lines):
        y = top + _MARGIN + 12 + i * _LINE_HEIGHT
        cv2.putText(image, text, (_MARGIN, y), cv2.FONT_HERSHEY_SIMPLEX, _FONT_SCALE, colour, 1, cv2.LINE_AA)


def _draw_heatmap(image: np.ndarray, grid: np.ndarray) -> None:
    """Kept cells tinted green, pruned cells darkened, thin cell borders."""
    import cv2

    rows, cols = grid.shape
    height, width = image.shape[:2]
    ys = np.linspace(0, height, rows + 1).round().astype(int)
    xs = np.linspace(0, width, cols + 1).round().astype(int)
    tint = image.copy()
    for r in range(rows):
        for c in range(cols):
            cell = tint[ys[r] : ys[r + 1], xs[c] : xs[c + 1]]
            cell[:] = (0, 200, 0) if grid[r, c] else (0, 0, 0)
    cv2.addWeighted(tint, 0.35, image, 0.65, 0, dst=image)
    for y in ys[1:-1]:
        cv2.line(image, (0, int(y)), (width - 1, int(y)), (90, 90, 90), 1)
    for x in xs[1:-1]:
        cv2.line(image, (int(x), 0), (int(x), height - 1), (90, 90, 90), 1)


def display_size(height: int, width: int, display_height: int) -> tuple[int, int]:
    """(height, width) of the shown picture: `display_height` tall, aspect kept, even sizes."""
    scale = display_height / height
    return 2 * round(display_height / 2), max(2, 2 * round(width * scale / 2))


def draw_overlay(frame: np.ndarray, status: StreamStatus, heatmap: bool = False, display_height: int = 480) -> np.ndarray:
    """The RGB frame scaled to `display_height` with the overlay, as a BGR image (OpenCV's order)."""
    import cv2

    height, width = display_size(frame.shape[0], frame.shape[1], display_height)
    upscale = height >= 2 * frame.shape[0]
    image = cv2.resize(np.ascontiguousarray(frame[..., ::-1]), (width, height), interpolation=cv2.INTER_NEAREST if upscale else cv2.INTER_AREA)
    if heatmap and status.kept_grid is not None:
        _draw_heatmap(image, status.kept_grid)
    stats = [(line, _WHITE) for line in status.lines()]
    if status.dropped:
        stats[-1] = (stats[-1][0], _RED)
    if heatmap:
        stats.append(("heat map: green = kept for the LLM" if status.kept_grid is not None else "heat map: every token kept", _GREEN))
    _panel(image, 0, 2 * _MARGIN + _LINE_HEIGHT * len(stats), stats, fit_width=True)
    qa: list[tuple[str, tuple]] = []
    text_width = width - 2 * _MARGIN
    if status.answer is not None:
        answer = status.answer
        when = "end of stream" if answer.late else f"t={answer.asked_at:.1f}s"
        question = wrap_text(f"Q ({when}): {answer.question}", text_width)
        reply = wrap_text(f"A: {answer.text or '(empty answer)'}  [{1000 * answer.seconds:.0f} ms]", text_width)
        qa += [(line, _YELLOW) for line in _first_lines(question, 3)] + [(line, _GREEN) for line in _first_lines(reply, 3)]
    if status.typing is not None:
        qa.append((f"ask> {status.typing}_", _CYAN))
    if qa:
        _panel(image, height - 2 * _MARGIN - _LINE_HEIGHT * len(qa), height, qa)
    return image
