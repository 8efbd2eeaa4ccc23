"""Which sources a client may name, and opening them.

A source is a camera index, `synthetic` (when the server was given a synthetic stream), an
RTSP/HTTP(S)/... URL, or a video file under the media root given at start-up: a file path is
resolved (symbolic links followed) and refused unless it lies inside that folder, so the API
cannot read arbitrary server files; without a media root every file source is refused.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

from stc.integrations.demo import STREAM_SCHEMES, SYNTHETIC, SourceError, open_source

from stc.integrations.serve.errors import BadRequest, Forbidden

MAX_CAMERA_INDEX = 63


class SourceOpener:
    """`resolve(spec)` checks a client's source and returns what to open; `open(resolved)` opens
    it (first frame read) or raises BadRequest with OpenCV's reason."""

    def __init__(self, media_root: str | os.PathLike | None = None, synthetic: Callable[[], object] | None = None,
                 opener: Callable = open_source):
        self.media_root = None if media_root is None else Path(media_root).resolve()
        if self.media_root is not None and not self.media_root.is_dir():
            raise SourceError(f"--media-root {media_root}: not a folder")
        self.synthetic, self._open = synthetic, opener

    def resolve(self, spec) -> int | str:
        if isinstance(spec, bool) or not isinstance(spec, (int, str)):
            raise BadRequest("source must be a camera index, 'synthetic', a stream URL or a video file under the media root")
        if isinstance(spec, int) or re.fullmatch(r"\s*\d+\s*", spec):
            index = int(spec)
            if not 0 <= index <= MAX_CAMERA_INDEX:
                raise BadRequest(f"camera index must be in [0, {MAX_CAMERA_INDEX}], got {index}")
            return index
        spec = spec.strip()
        if not spec:
            raise BadRequest("source is empty")
        if spec == SYNTHETIC:
            if self.synthetic is None:
                raise BadRequest("this server has no synthetic stream")
            return spec
        if "://" in spec:
            scheme = spec.split("://", 1)[0].lower()
            if scheme not in STREAM_SCHEMES:
                raise BadRequest(f"unsupported URL scheme {scheme!r}: use one of {', '.join(STREAM_SCHEMES)}")
            return spec
        return str(self._file(spec))

    def _file(self, spec: str) -> Path:
        if self.media_root is None:
            raise Forbidden("file sources are off: start stc serve with --media-root FOLDER to allow videos in it")
        path = (self.media_root / spec).resolve()  # an absolute spec replaces the root, then must lie in it
        if not path.is_relative_to(self.media_root):
            raise Forbidden(f"{spec!r} is outside the media root")
        if not path.is_file():
            raise BadRequest(f"no video file {spec!r} under the media root")
        return path

    def open(self, resolved: int | str):
        try:
            return self._open(resolved, synthetic=self.synthetic)
        except SourceError as exc:
            raise BadRequest(str(exc).replace(str(self.media_root or "\0") + os.sep, "")) from exc
