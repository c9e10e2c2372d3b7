"""Reading files and JSON that someone else made, with limits: nothing a file holds can hang or exhaust the reader.

A path may name a FIFO (opening it waits for a writer), a link to ``/dev/zero`` (reading never ends), a 50 GB file
or JSON nested a million levels deep. Every reader of user files (policy files, prompt files, reward tables,
settings) goes through :func:`read_regular_file` and :func:`parse_json`, which refuse these at once with
:class:`BadInputError`, a message naming the file and the problem; callers add what the user should do.
"""
from __future__ import annotations

import errno
import json
import math
import os
import re
import stat
from itertools import accumulate
from pathlib import Path

from .errors import BadInputError

MAX_JSON_DEPTH = 64  # AdaDiff's own JSON is at most 4 levels deep
MAX_JSON_NUMBER_DIGITS = 100  # far beyond any count or seed; Python refuses to parse > 4300 digits anyway
# the closing quote is optional so an unterminated string ends the scan at once: with it required, a string of escaped
# quotes that never closes is retried from every quote (quadratic: a 1 MB header would take hours)
_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"?', re.DOTALL)
_NOT_A_BRACKET = re.compile(r"[^\[\]{}]+")
_READ_CHUNK = 1 << 20


def read_regular_file(path: str | Path, max_bytes: int) -> bytes:
    """The bytes of ``path`` if it is a regular file (or a link to one) of at most ``max_bytes``.

    Raises :class:`BadInputError` with ``kind`` ``missing``, ``folder``, ``special``, ``too_large`` or
    ``unreadable``. The file is opened without blocking and checked on the opened descriptor, so a FIFO or device
    is refused before anything is read, and a file that grows while being read stops at the limit.
    """
    try:
        descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except (OSError, ValueError) as error:
        raise _unopenable(path, error) from None
    try:
        status = os.fstat(descriptor)
        _check_kind(path, status)
        if status.st_size > max_bytes:
            raise BadInputError(f"{path}: {_megabytes(status.st_size)} is larger than the {_megabytes(max_bytes)} "
                                "this file may have", "too_large")
        chunks, total = [], 0
        while chunk := os.read(descriptor, min(_READ_CHUNK, max_bytes + 1 - total)):
            chunks.append(chunk)
            total += len(chunk)
            if total > max_bytes:
                raise BadInputError(f"{path}: grew past {_megabytes(max_bytes)} while being read", "too_large")
        return b"".join(chunks)
    except OSError as error:
        raise BadInputError(f"{path}: cannot be read ({error.strerror})", "unreadable") from None
    finally:
        os.close(descriptor)


def check_regular_file(path: str | Path) -> None:
    """Refuse ``path`` as :func:`read_regular_file` would unless it is a regular file (or a link to one), for readers
    that open the file themselves (``safetensors.load_file`` maps it): opening a FIFO there would block forever."""
    try:
        status = os.stat(path)
    except (OSError, ValueError) as error:
        raise _unopenable(path, error) from None
    _check_kind(path, status)


def _unopenable(path, error: OSError | ValueError) -> BadInputError:
    """Why opening (or looking up) ``path`` failed, in the refusal's words."""
    if isinstance(error, FileNotFoundError):
        return BadInputError(f"{path}: no such file", "missing")
    if os.path.isdir(path):  # Windows refuses to open a folder (Permission denied); POSIX opens it, see _check_kind
        return _folder(path)
    if isinstance(error, ValueError):  # e.g. a NUL character in the path
        return BadInputError(f"{short_text(path)}: is not a usable path ({error})", "unreadable")
    problem = "a part of the path is a file, not a folder" if error.errno == errno.ENOTDIR else error.strerror
    return BadInputError(f"{short_text(path)}: cannot be opened ({problem})", "unreadable")


def _folder(path) -> BadInputError:
    return BadInputError(f"{path}: is a folder, not a file", "folder")


def _check_kind(path, status: os.stat_result) -> None:
    if stat.S_ISDIR(status.st_mode):
        raise _folder(path)
    if not stat.S_ISREG(status.st_mode):
        raise BadInputError(f"{path}: is a {_special_kind(status.st_mode)}, not a regular file; AdaDiff reads "
                            "only regular files", "special")


def parse_json(text: str | bytes, source: str, max_depth: int = MAX_JSON_DEPTH):
    """Standard JSON from ``source`` (named in errors): at most ``max_depth`` levels, no NaN/Infinity, no number
    beyond float range or :data:`MAX_JSON_NUMBER_DIGITS` digits."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as error:
            raise BadInputError(f"{source}: is not UTF-8 text (byte {error.start})", "invalid") from None
    depth = _nesting_depth(text)
    if depth > max_depth:
        raise BadInputError(f"{source}: JSON nested {depth} levels deep; at most {max_depth} are read", "invalid")
    try:
        return json.loads(text, parse_constant=lambda name: _refuse_number(source, name),
                          parse_int=lambda digits: _whole_number(source, digits),
                          parse_float=lambda digits: _real_number(source, digits))
    except json.JSONDecodeError as error:
        raise BadInputError(f"{source}: is not valid JSON ({error.msg} at line {error.lineno} column {error.colno})",
                            "invalid") from None


def _nesting_depth(text: str) -> int:
    """How deep brackets nest outside strings (a loose scan: malformed JSON is left to the parser)."""
    brackets = _NOT_A_BRACKET.sub("", _JSON_STRING.sub("", text))
    return max(accumulate(1 if c in "[{" else -1 for c in brackets), default=0)


def _whole_number(source: str, digits: str) -> int:
    if len(digits.lstrip("-")) > MAX_JSON_NUMBER_DIGITS:
        raise BadInputError(f"{source}: holds a {len(digits)}-digit number; no AdaDiff setting needs more than "
                            f"{MAX_JSON_NUMBER_DIGITS} digits", "invalid")
    return int(digits)


def _real_number(source: str, digits: str) -> float:
    value = float(digits)
    if not math.isfinite(value):
        raise BadInputError(f"{source}: holds the number {short_text(digits)}, beyond the range of a float", "invalid")
    return value


def _refuse_number(source: str, name: str):
    raise BadInputError(f"{source}: holds {name}, which is not a JSON number; write a finite number", "invalid")


def _special_kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "FIFO (named pipe)"), (stat.S_ISCHR, "character device"),
                       (stat.S_ISBLK, "block device"), (stat.S_ISSOCK, "socket")):
        if test(mode):
            return name
    return "special file"


def _megabytes(size: int) -> str:
    return f"{size / 2**20:.1f} MB" if size >= 2**20 else f"{size} bytes"


def short_text(value, limit: int = 80) -> str:
    """A value shortened for a message (a 300-character file name or a 5000-digit number helps no one)."""
    text = str(value)
    return text if len(text) <= limit else f"{text[:limit // 2]}...{text[-limit // 4:]} ({len(text)} characters)"
