"""Fake sources and a small server for the serve tests: no camera, no network."""

from __future__ import annotations

import time

import cv2
import numpy as np

from stc.integrations.demo import CaptureSource, SourceError
from stc.integrations.serve.requests import ServerDefaults
from stc.integrations.serve.shared_model import SharedModel
from stc.integrations.serve.sources import SourceOpener
from stc.integrations.serve.streams import StreamManager
from stc.integrations.engine.options import SessionOptions

HEIGHT, WIDTH = 32, 48


class FakeCapture:
    """cv2.VideoCapture-like: `count` BGR frames (a square that moves, its colour from `seed`),
    then failed reads; `delay_s` between reads; with `resizing`, every other frame is 8 px narrower."""

    def __init__(self, count: int, seed: int = 0, delay_s: float = 0.0, resizing: bool = False):
        self.count, self.delay_s, self.reads, self.resizing = count, delay_s, 0, resizing
        self.colour = np.random.default_rng(seed).integers(60, 255, 3)

    def read(self):
        if self.delay_s:
            time.sleep(self.delay_s)
        if self.reads >= self.count:
            return False, None
        image = np.full((HEIGHT, WIDTH - 8 * (self.resizing and self.reads % 2), 3), 30, np.uint8)
        x = (4 * self.reads) % (WIDTH - 12)
        image[10:22, x : x + 12] = self.colour
        self.reads += 1
        return True, image

    def release(self):
        pass


def fake_opener(spec, synthetic=None):
    """Opens `rtsp://fake/<kind>/<frames>[/<seed>]`: kind `file` (ends), `resizing` (a file whose
    frames change size), `live` (delivers `frames` frames at 100 per second, then disconnects;
    sampled at the stream's `sample_fps`) or `dead` (no frame at all)."""
    parts = str(spec).split("/")
    kind, count = parts[3], int(parts[4])
    seed = int(parts[5]) if len(parts) > 5 else 0
    if kind == "dead":
        raise SourceError(f"cannot open stream {spec}")
    live = kind == "live"
    capture = FakeCapture(count, seed, delay_s=0.01 if live else 0.0, resizing=kind == "resizing")
    source = CaptureSource(capture, f"fake {kind} {seed}", live=live,
                           fps=100.0 if live else 4.0, retry_s=0.2)
    source.prime()
    return source


def write_video(path, frames: int = 8, fps: float = 2.0, seed: int = 0) -> None:
    """A short MJPG AVI that OpenCV reads back."""
    capture = FakeCapture(frames, seed)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (WIDTH, HEIGHT))
    for _ in range(frames):
        writer.write(capture.read()[1])
    writer.release()


def manager(model, processor, media_root=None, max_streams: int = 4, memory_budget=None, stream_budget=None,
            realtime: bool = False, batch_streams: bool = True) -> StreamManager:
    defaults = ServerDefaults(session=SessionOptions(max_new_tokens=3, memory_budget=stream_budget, sample_fps=4.0),
                              realtime=realtime)
    sources = SourceOpener(media_root, opener=lambda spec, synthetic=None: (
        fake_opener(spec) if str(spec).startswith("rtsp://fake/") else _real_open(spec)))
    return StreamManager(SharedModel(model, processor), sources, defaults, max_streams, memory_budget, batch_streams)


def _real_open(spec):
    from stc.integrations.demo import open_source

    return open_source(spec)


def wait_for(condition, timeout: float = 60.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


class RunningServer:
    """`create_app(manager, token)` served by uvicorn on a free loopback port, on a thread."""

    def __init__(self, manager, token=None):
        import socket
        import threading

        import uvicorn

        from stc.integrations.serve.app import create_app

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(create_app(manager, token), host="127.0.0.1", port=self.port,
                                                    log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        wait_for(lambda: self.server.started, timeout=30, what="the server to start")
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(10)
