"""Where annotated frames go: an mp4 file (`VideoFileSink`) or an OpenCV window that also takes
typed questions (`WindowSink`). Each has `show(image) -> keep going?` and `close()`.

cv2 is imported inside functions: importing the demo package (the synthetic eval does, for
`token_grid`) does not load OpenCV.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from stc.integrations.demo.errors import DemoError


class VideoFileSink:
    """Writes annotated BGR frames to an mp4 (mp4v codec) at `fps`; opened on the first frame."""

    def __init__(self, path: str | os.PathLike, fps: float):
        self.path, self.fps = Path(path), float(fps)
        self.frames_written = 0
        self._writer = None
        check_writable(self.path)

    def show(self, image: np.ndarray) -> bool:
        import cv2

        if self._writer is None:
            height, width = image.shape[:2]
            self._writer = cv2.VideoWriter(str(self.path), cv2.VideoWriter_fourcc(*"mp4v"), self.fps, (width, height))
            if not self._writer.isOpened():
                raise DemoError(f"cannot write video {self.path} (OpenCV has no mp4v writer for it)")
        self._writer.write(image)
        self.frames_written += 1
        return True

    def close(self) -> None:
        if self._writer is not None:
            self._writer.release()
            self._writer = None


def check_writable(path: Path) -> None:
    """Create the folder of `path` and open the file for writing once (then remove it if it was not
    there), so that a path that cannot be written is named now, with the system's reason, rather
    than after the model loads as a writer OpenCV could not open (which reads as a codec problem)."""
    if path.parent.exists() and not path.parent.is_dir():
        raise DemoError(f"cannot write video {path}: {path.parent} is a file, not a folder")
    existed = path.exists()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("ab"):
            pass
    except OSError as exc:
        raise DemoError(f"cannot write video {path}: {exc.strerror or exc}") from exc
    if not existed:
        path.unlink()


class WindowSink:
    """An OpenCV window. Keys: q or Esc quit; / or Enter starts typing a question in the window,
    Enter asks it, Esc cancels, Backspace deletes. Closing the window quits too. OpenCV keeps only
    the last key pressed since the previous `poll`, so `run_demo` polls every few ms, also while
    the model works."""

    def __init__(self, title: str, on_question: Callable[[str], None]):
        import cv2

        self.title, self.on_question = title, on_question
        self.typing: str | None = None
        self._shown = False  # the window is checked for being closed once it has shown a frame
        cv2.namedWindow(title, cv2.WINDOW_AUTOSIZE | cv2.WINDOW_GUI_NORMAL)

    def show(self, image: np.ndarray) -> bool:
        import cv2

        cv2.imshow(self.title, image)
        self._shown = True
        return self.poll()

    def poll(self) -> bool:
        """Handle pending keys; False when the user asked to quit."""
        import cv2

        while (key := cv2.waitKey(1)) != -1:
            if not self._handle_key(key & 0xFF):
                return False
        return not (self._shown and cv2.getWindowProperty(self.title, cv2.WND_PROP_VISIBLE) < 1)

    def _handle_key(self, key: int) -> bool:
        """Apply one key press; False for quit."""
        if self.typing is None:
            if key in (ord("q"), 27):
                return False
            if key in (ord("/"), 13, 10):
                self.typing = ""
        elif key in (13, 10):
            self.on_question(self.typing)
            self.typing = None
        elif key == 27:
            self.typing = None
        elif key in (8, 127):
            self.typing = self.typing[:-1]
        elif 32 <= key < 127:
            self.typing += chr(key)
        return True

    def close(self) -> None:
        import cv2

        cv2.destroyWindow(self.title)
        cv2.waitKey(1)
