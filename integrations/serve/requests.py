"""What a client may ask for, checked: a new stream (`StreamRequest`) and a question
(`Question`). Every bad value is a BadRequest naming the field; nothing is trusted as given."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, fields

from stc.config import STCConfig
from stc.methods import CACHER_OPTIONS, METHODS, PRUNER_OPTIONS, method_config, options_used
from stc.peers import MethodConfig
from stc.validation import is_int

from stc.integrations.engine.options import DEFAULTS, NAMES, SessionOptions
from stc.integrations.serve.errors import BadRequest

STC_KNOBS = CACHER_OPTIONS + PRUNER_OPTIONS
SESSION_KNOBS = tuple(name for name in NAMES if name != "pipeline")  # a worker thread per stream: not over HTTP
CAPTURE_KNOBS = ("queue_size", "realtime")
STREAM_FIELDS = ("source", "name", "method", *STC_KNOBS, *SESSION_KNOBS, *CAPTURE_KNOBS)
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
MAX_QUEUE = 256
MAX_NEW_TOKENS = 512  # the longest answer a client may ask for
MAX_QUESTION_CHARS = 4000


@dataclass(frozen=True)
class ServerDefaults:
    """What a stream gets for what its request leaves out (the command's options)."""

    method: str = "stc"
    base: STCConfig = STCConfig()
    session: SessionOptions = DEFAULTS
    queue_size: int = 8
    realtime: bool = True


@dataclass(frozen=True)
class StreamRequest:
    source: int | str
    name: str | None
    config: STCConfig | MethodConfig | None
    session: SessionOptions
    queue_size: int
    realtime: bool


def stream_request(body, defaults: ServerDefaults) -> StreamRequest:
    body = _object(body)
    unknown = sorted(set(body) - set(STREAM_FIELDS))
    if unknown:
        raise BadRequest(f"unknown field {unknown[0]!r}; a stream takes {', '.join(STREAM_FIELDS)}")
    if "source" not in body:
        raise BadRequest("a stream needs a source: a camera index, 'synthetic', a stream URL or a video file")
    name = body.get("name")
    if name is not None and (not isinstance(name, str) or not NAME_PATTERN.fullmatch(name)):
        raise BadRequest("name must be 1-64 letters, digits, '_', '.' or '-', starting with a letter or digit")
    method = body.get("method", defaults.method)
    if method not in METHODS:
        raise BadRequest(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    knobs = {k: body[k] for k in STC_KNOBS if k in body}
    try:
        config = method_config(method, defaults.base.replace(**knobs))
        session = SessionOptions(**{**defaults.session.as_dict(), **{k: body[k] for k in SESSION_KNOBS if k in body}})
    except (TypeError, ValueError) as exc:
        raise BadRequest(str(exc).removeprefix("STCConfig.")) from exc
    unused = [k for k in knobs if k not in options_used(config)]
    if unused:
        raise BadRequest(f"{unused[0]} has no effect with method {method}")
    queue_size = body.get("queue_size", defaults.queue_size)
    if not is_int(queue_size) or not 1 <= queue_size <= MAX_QUEUE:
        raise BadRequest(f"queue_size must be an integer in [1, {MAX_QUEUE}], got {queue_size!r}")
    realtime = body.get("realtime", defaults.realtime)
    if not isinstance(realtime, bool):
        raise BadRequest(f"realtime must be true or false, got {realtime!r}")
    return StreamRequest(body["source"], name, config, session, queue_size, realtime)


@dataclass(frozen=True)
class Question:
    text: str
    max_new_tokens: int | None = None  # None: the stream's own
    since: float | None = None  # retrieve only frames from this stream time on


def question(body) -> Question:
    body = _object(body)
    unknown = sorted(set(body) - {f.name for f in fields(Question)} - {"question"})
    if unknown:
        raise BadRequest(f"unknown field {unknown[0]!r}; a question takes question, max_new_tokens, since")
    return checked_question(body.get("question"), body.get("max_new_tokens"), body.get("since"))


def checked_question(text, max_new_tokens=None, since=None, tokens_field: str = "max_new_tokens") -> Question:
    if not isinstance(text, str) or not text.strip():
        raise BadRequest("question must be a non-empty string")
    if len(text) > MAX_QUESTION_CHARS:
        raise BadRequest(f"question is longer than {MAX_QUESTION_CHARS} characters")
    if max_new_tokens is not None and (not is_int(max_new_tokens) or not 1 <= max_new_tokens <= MAX_NEW_TOKENS):
        raise BadRequest(f"{tokens_field} must be an integer in [1, {MAX_NEW_TOKENS}], got {max_new_tokens!r}")
    if since is not None and (isinstance(since, bool) or not isinstance(since, (int, float)) or not math.isfinite(since)):
        raise BadRequest(f"since must be a number of stream seconds, got {since!r}")
    return Question(text.strip(), max_new_tokens, None if since is None else float(since))


def _object(body) -> dict:
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    return body
