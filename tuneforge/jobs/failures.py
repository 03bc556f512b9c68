"""How a failed job reports: an OpenAI-shaped `error` a client can act on, nothing more.

A job's `error` and events go to the client, so they carry a clear message, a `code` and the
request `param` it concerns, and never a traceback or a server path (the data directory, the
model store, the Python installation). The full traceback goes to the job's log file
(`jobs/<id>/logs/attempt-N.log`) and the worker's log, for the operator.

`describe(err, overrides)` is called by the training subprocess on the exception that ended
it; `public_message(text)` cleans any other message (an older runner's, a stand-in's) before
it is stored.

Example:
    >>> public_message("FileNotFoundError: /srv/tuneforge/files/file-abc.jsonl missing")
    'FileNotFoundError: file-abc.jsonl missing'
"""

from __future__ import annotations

import re
import traceback
from typing import Any

MAX_MESSAGE_CHARS = 500
# An absolute path of at least two parts (not inside a URL, not a relative path), e.g.
# /srv/data/files/file-x.jsonl or C:\models\tiny: replaced by its last part.
_PATH = re.compile(r"(?<![\w:/\\.])(?:[A-Za-z]:)?(?:[/\\][^\s'\"(),;:/\\]+){2,}[/\\]?")
# Where a data problem is raised: reading and tokenizing examples (not the model or loop).
_DATA_MODULES = ("tuneforge/data/", "tuneforge/tokenize/", "tuneforge/training/data.py")
_DATA_FUNCTIONS = {"_tokenize", "read_examples", "_mix_in_replay"}


def public_message(text: str) -> str:
    """`text` without server paths and tracebacks: its first line, paths cut to their last
    part, at most MAX_MESSAGE_CHARS characters."""
    lines = [line for line in str(text).strip().splitlines() if line.strip()]
    if lines and lines[0].startswith("Traceback (most recent call last)"):
        lines = lines[-1:]  # the exception line itself
    first = lines[0] if lines else "unknown error"
    first = _PATH.sub(
        lambda m: m.group(0).rstrip("/\\").replace("\\", "/").rsplit("/", 1)[-1], first
    )
    if len(first) > MAX_MESSAGE_CHARS:
        first = first[: MAX_MESSAGE_CHARS - 3] + "..."
    return first


def error(code: str, message: str, param: str | None = None) -> dict[str, Any]:
    """A job's `error` object, as OpenAI's jobs carry it."""
    return {"code": code, "message": public_message(message), "param": param}


def describe(err: BaseException, overrides: dict[str, Any]) -> dict[str, Any]:
    """The `error` object for the exception that ended a training run.

    Data that passed upload validation can still be untrainable (every example longer than
    data.max_length and dropped, a chat template that cannot render the messages): those
    are the client's to fix, so they say what to change, with `param: training_file`.
    """
    train = overrides.get("data.train")
    valid = overrides.get("data.valid")
    ext = (
        "method.dpo.tuneforge" if overrides.get("task") == "dpo" else "method.supervised.tuneforge"
    )

    def named(text: str) -> str:
        # The store names files by id (files/<file-id>.<ext>): show the id, not the path.
        for path, what in ((train, "the training file"), (valid, "the validation file")):
            if path:
                text = text.replace(str(path), what)
        return text

    mismatch = _format_mismatch(err, named(str(err)))
    if mismatch is not None:
        return mismatch
    problems = getattr(err, "problems", None)
    if problems:  # a ConfigError: every problem of the settings
        return error(
            "invalid_training_config",
            "Invalid training settings: " + named("; ".join(problems)),
            ext,
        )
    message = named(str(err))
    if "no trainable example left" in message:
        max_length = overrides.get("data.max_length", 2048)
        return error(
            "invalid_training_file",
            "No example of the training file can be trained: every one was dropped (longer "
            f"than data.max_length = {max_length} tokens, or with no trainable tokens). Raise "
            f"{ext} data.max_length, set data.too_long to 'truncate', "
            "or shorten the examples.",
            "training_file",
        )
    if _is_out_of_memory(err):
        return error(
            "out_of_memory",
            "Training ran out of memory. Lower batch_size or data.max_length, or turn on "
            "model.gradient_checkpointing.",
        )
    if _raised_in_data(err):
        return error(
            "invalid_training_file",
            f"The training data could not be tokenized: {message}",
            "training_file",
        )
    return error("training_failed", f"{type(err).__name__}: {message}")


def _format_mismatch(err: BaseException, message: str) -> dict[str, Any] | None:
    """The `error` of a job whose data is not what its method trains: preference examples in a
    supervised job, or chat (or other) examples in a DPO job. None for any other error."""
    from tuneforge.tokenize.encode import FormatMismatch

    if not isinstance(err, FormatMismatch):
        return None
    param = "validation_file" if message.startswith("the validation file") else "training_file"
    what = "validation file" if param == "validation_file" else "training file"
    line = message.split(": ", 1)[0].rpartition(":")[2]  # "the training file:3" -> "3"
    at = f"from line {line}" if line.isdigit() else "at least one"
    if err.wanted == "supervised":
        text = (
            f"The {what} holds preference examples ({at}: input, preferred_output and "
            "non_preferred_output), but the job is method.type 'supervised', which trains "
            "chat or prompt-completion examples. Create the job with method.type 'dpo' to "
            "train on preferences."
        )
    else:
        text = (
            f"The {what} holds {err.found} examples ({at}), but the job is method.type "
            "'dpo', which trains preference examples (input, preferred_output and "
            "non_preferred_output). Upload preference data, or create the job with "
            "method.type 'supervised'."
        )
    code = "invalid_validation_file" if param == "validation_file" else "invalid_training_file"
    return error(code, text, param)


def _is_out_of_memory(err: BaseException) -> bool:
    return isinstance(err, MemoryError) or type(err).__name__ == "OutOfMemoryError"


def _raised_in_data(err: BaseException) -> bool:
    for frame in traceback.extract_tb(err.__traceback__):
        path = frame.filename.replace("\\", "/")
        if frame.name in _DATA_FUNCTIONS or any(m in path for m in _DATA_MODULES):
            return True
    return False
