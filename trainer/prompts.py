"""Prompt files (.txt, .jsonl, .csv) read and checked before any long work starts.

Every problem a user can fix in the file is reported with its line number, all at once, so a reward table that
takes hours never dies on line 9,000. Duplicates are not an error: they are dropped (keeping the first) with a
warning, because a prompt counted twice would only weigh twice in training.
"""
from __future__ import annotations

import csv
import io
import logging
from dataclasses import dataclass
from pathlib import Path

from ..policy.bounded import parse_json, read_regular_file
from ..policy.errors import BadInputError
from .config import TrainerInputError

logger = logging.getLogger(__name__)

PROMPT_FILE_KINDS = (".txt", ".jsonl", ".csv")
PROMPT_FIELD = "prompt"
MAX_PROMPT_FILE_BYTES = 256 * 2**20  # ~1 million prompts; a larger file is something else
# Counted before the file is split: each line costs a few hundred bytes as text, so 256 MB of two-letter lines would
# take ~20 GB, while a million prompts is far beyond any reward table (each one is sampled at every option and seed).
MAX_PROMPT_LINES = 1_000_000
_MAX_LISTED_PROBLEMS = 5


@dataclass(frozen=True)
class PromptSet:
    """The usable prompts of a file, in file order, and what was dropped from it."""

    prompts: tuple[str, ...]
    source: str
    duplicates_dropped: int = 0

    def __len__(self) -> int:
        return len(self.prompts)


def read_prompts(path: str | Path) -> PromptSet:
    """Read and check a prompt file; raises :class:`TrainerInputError` naming the file, the lines and the fix."""
    path = Path(path)
    if path.suffix.lower() not in PROMPT_FILE_KINDS:
        raise TrainerInputError(f"{path}: prompt files must end in {', '.join(PROMPT_FILE_KINDS)}, got "
                                f"'{path.suffix or 'no extension'}'")
    try:
        data = read_regular_file(path, MAX_PROMPT_FILE_BYTES)
    except BadInputError as error:
        remedy = {"missing": f"{path}: no such prompt file; check the path",
                  "folder": f"{path}: is a folder; point --prompts to a {'/'.join(PROMPT_FILE_KINDS)} file",
                  "unreadable": f"{error}; check the path and its permissions"}
        raise TrainerInputError(remedy.get(error.kind, f"{error}; write the prompts to a regular file")) from None
    line_count = data.count(b"\n") + data.count(b"\r") - data.count(b"\r\n")  # line breaks, as splitlines finds them
    if line_count > MAX_PROMPT_LINES:
        raise TrainerInputError(f"{path}: holds more than {MAX_PROMPT_LINES} lines ({line_count}); a reward table "
                                f"needs far fewer prompts: split the file or pick a subset")
    lines = _decode_lines(path, data)
    reader = {".txt": _from_txt, ".jsonl": _from_jsonl, ".csv": _from_csv}[path.suffix.lower()]
    numbered = reader(path, lines)
    empty = [number for number, prompt in numbered if not prompt.strip()]
    if empty:
        raise TrainerInputError(f"{path}: empty prompt on line(s) {_list(empty)}; remove those lines or write a prompt")
    if not numbered:
        raise TrainerInputError(f"{path}: holds no prompts; write one prompt per line ('{PROMPT_FIELD}' field for "
                                f".jsonl, '{PROMPT_FIELD}' column for .csv)")
    return _drop_duplicates(path, numbered)


def _decode_lines(path: Path, data: bytes) -> list[str]:
    """Split into lines and decode each, so a bad byte is reported by its line number, not its offset."""
    if data.startswith(b"\xef\xbb\xbf"):  # a BOM that spreadsheet exports add
        data = data[3:]
    lines, bad = [], []
    for number, raw in enumerate(data.splitlines(), start=1):
        try:
            lines.append(raw.decode("utf-8"))
        except UnicodeDecodeError as error:
            bad.append(number)
            lines.append("")
            if len(bad) == 1:
                first_problem = f"byte 0x{raw[error.start]:02x} at column {error.start + 1}"
    if bad:
        raise TrainerInputError(f"{path}: line(s) {_list(bad)} are not UTF-8 text (line {bad[0]}: {first_problem}); "
                                "save the file as UTF-8")
    return lines


def _from_txt(path: Path, lines: list[str]) -> list[tuple[int, str]]:
    while lines and not lines[-1].strip():  # blank lines at the very end are an editor's, not an empty prompt
        lines = lines[:-1]
    return [(number, line.strip()) for number, line in enumerate(lines, start=1)]


def _from_jsonl(path: Path, lines: list[str]) -> list[tuple[int, str]]:
    numbered, problems = [], []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue  # blank lines between JSON records are allowed by the format
        try:
            record = parse_json(line, f"line {number}")
        except BadInputError as error:
            problems.append(str(error))
            continue
        if not isinstance(record, dict) or not isinstance(record.get(PROMPT_FIELD), str):
            problems.append(f"line {number} has no text '{PROMPT_FIELD}' field")
            continue
        numbered.append((number, record[PROMPT_FIELD].strip()))
    if problems:
        more = len(problems) - _MAX_LISTED_PROBLEMS
        raise TrainerInputError(f"{path}: {'; '.join(problems[:_MAX_LISTED_PROBLEMS])}"
                                + (f" (and {more} more)" if more > 0 else "")
                                + f"; each line must be a JSON object like {{\"{PROMPT_FIELD}\": \"a red cube\"}}")
    return numbered


def _from_csv(path: Path, lines: list[str]) -> list[tuple[int, str]]:
    """Rows of the 'prompt' column. Strict quoting: an unclosed quote would otherwise swallow every following line
    into one prompt, so a row that spans lines, or a quote out of place, is an error naming the line."""
    reader = csv.reader(io.StringIO("\n".join(lines)), strict=True)
    numbered = []
    try:
        header = next(reader, None)
        if header is None:
            return []
        columns = [name.strip().lower() for name in header]
        if PROMPT_FIELD not in columns:
            raise TrainerInputError(f"{path}: the first line must name a '{PROMPT_FIELD}' column; found columns "
                                    f"{header[:10]}")
        column = columns.index(PROMPT_FIELD)
        first_line = reader.line_num + 1
        for row in reader:
            if reader.line_num > first_line:
                raise TrainerInputError(f"{path}: the row starting on line {first_line} runs on to line "
                                        f"{reader.line_num}: a quote is not closed (or a prompt holds a line break); "
                                        "close the quote or write the prompt on one line")
            if row:
                numbered.append((first_line, row[column].strip() if column < len(row) else ""))
            first_line = reader.line_num + 1
    except csv.Error as error:
        raise TrainerInputError(f"{path}: line {reader.line_num} is not valid CSV ({error}); check its quotes "
                                "(a quote inside a prompt is written twice: \"\")") from None
    return numbered


def _drop_duplicates(path: Path, numbered: list[tuple[int, str]]) -> PromptSet:
    first_line: dict[str, int] = {}
    repeats = []
    for number, prompt in numbered:
        if prompt in first_line:
            repeats.append((number, first_line[prompt]))
        else:
            first_line[prompt] = number
    if repeats:
        shown = ", ".join(f"line {n} repeats line {f}" for n, f in repeats[:_MAX_LISTED_PROBLEMS])
        logger.warning("%s: dropped %d duplicate prompt(s), keeping the first of each (%s%s)", path, len(repeats),
                       shown, ", ..." if len(repeats) > _MAX_LISTED_PROBLEMS else "")
    return PromptSet(tuple(first_line), str(path), len(repeats))


def _list(numbers: list[int]) -> str:
    shown = ", ".join(str(n) for n in numbers[:_MAX_LISTED_PROBLEMS])
    return shown + (f" and {len(numbers) - _MAX_LISTED_PROBLEMS} more" if len(numbers) > _MAX_LISTED_PROBLEMS else "")
