"""Reading the files the benchmark scorers take (benchmark JSON, answers JSONL) with errors that
name the file (`EvalDataError`, one line at the command line), and a model response as text."""

from __future__ import annotations

import json
import os
from pathlib import Path

from stc.errors import InputError

from stc.eval.records import read_answers


class EvalDataError(InputError):
    """A benchmark, results or answers file is missing, unreadable or not in the expected format."""


def read_json(path: str | os.PathLike) -> object:
    """The parsed JSON of a file; any failure becomes an EvalDataError naming the file."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise EvalDataError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise EvalDataError(f"{path}: is a directory, expected a JSON file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise EvalDataError(f"{path}: not valid JSON ({exc})") from None
    except OSError as exc:
        raise EvalDataError(f"{path}: cannot read ({exc.strerror})") from None


def read_answer_file(path: str | os.PathLike) -> dict[str, dict]:
    """qid -> answer record of one answers JSONL file (see records.Answer).

    Unlike `records.read_answers` (made for resuming, where no file means no answers yet), a
    missing file, a file with no answer records or records without a response are errors.
    """
    path = Path(path)
    if not path.is_file():
        raise EvalDataError(f"{path}: no such answers file")
    try:
        answers = read_answers(path)
    except (KeyError, TypeError):
        raise EvalDataError(f"{path}: a line is not an answer record (no 'qid')") from None
    except (UnicodeDecodeError, OSError) as exc:
        raise EvalDataError(f"{path}: cannot read ({exc})") from None
    if not answers:
        raise EvalDataError(f"{path}: no answer records (expected JSON lines with qid and response)")
    if any("response" not in record for record in answers.values()):
        raise EvalDataError(f"{path}: records without 'response'; is this a queries file, not answers?")
    return answers


def response_text(response: object) -> str | None:
    """A model response as text: None stays None; a list (e.g. Qwen2-VL's batch-decoded
    outputs, one string per sequence) becomes its items joined; anything else becomes str."""
    if response is None:
        return None
    if isinstance(response, str):
        return response
    if isinstance(response, (list, tuple)):
        return "".join(str(item) for item in response if item is not None)
    return str(response)
