"""Prompt files: every format, and every problem reported before any long work, with its line."""
import errno
import logging
import os

import pytest

from adadiff.trainer.config import TrainerInputError
from adadiff.trainer.prompts import read_prompts


def write(tmp_path, name, data):
    path = tmp_path / name
    path.write_bytes(data if isinstance(data, bytes) else data.encode("utf-8"))
    return path


def test_txt_one_prompt_per_line_trimmed(tmp_path):
    path = write(tmp_path, "p.txt", "a red cube\n  two blue balls  \nun chat noir ☕\n\n")
    assert read_prompts(path).prompts == ("a red cube", "two blue balls", "un chat noir ☕")


def test_jsonl_reads_prompt_field_and_skips_blank_lines(tmp_path):
    path = write(tmp_path, "p.jsonl", '{"prompt": "a red cube", "id": 1}\n\n{"prompt": "a cat"}\n')
    assert read_prompts(path).prompts == ("a red cube", "a cat")


def test_csv_reads_prompt_column_with_quotes_and_bom(tmp_path):
    path = write(tmp_path, "p.csv", b"\xef\xbb\xbfid,Prompt\n1,\"a red cube, small\"\n2,a cat\n")
    assert read_prompts(path).prompts == ("a red cube, small", "a cat")


def test_duplicates_are_dropped_with_a_warning_naming_the_lines(tmp_path, caplog):
    path = write(tmp_path, "p.txt", "a\nb\na\nb\nc\n")
    with caplog.at_level(logging.WARNING):
        prompts = read_prompts(path)
    assert prompts.prompts == ("a", "b", "c") and prompts.duplicates_dropped == 2
    assert "line 3 repeats line 1" in caplog.text and "line 4 repeats line 2" in caplog.text


@pytest.mark.parametrize("name, data, expected", [
    ("p.txt", b"good\nbad \xff byte\nok\nalso \xfe\n", r"line\(s\) 2, 4 are not UTF-8.*line 2: byte 0xff at column 5"),
    ("p.txt", "a\n\n   \nb\n", r"empty prompt on line\(s\) 2, 3"),
    ("p.txt", "", "holds no prompts"),
    ("p.txt", "\n\n", "holds no prompts"),
    ("p.jsonl", '{"prompt": "a"}\nnot json\n{"text": "b"}\n', r"line 2: is not valid JSON.*line 3 has no text 'prompt' field"),
    ("p.jsonl", '{"prompt": ""}\n', r"empty prompt on line\(s\) 1"),
    ("p.csv", "id,text\n1,a\n", r"'prompt' column; found columns \['id', 'text'\]"),
    ("p.csv", "prompt,id\n,1\na,2\n", r"empty prompt on line\(s\) 2"),
    ("p.md", "a\n", "must end in .txt, .jsonl, .csv"),
])
def test_bad_files_are_refused_with_the_line_and_the_fix(tmp_path, name, data, expected):
    path = write(tmp_path, name, data)
    with pytest.raises(TrainerInputError, match=expected) as error:
        read_prompts(path)
    assert str(path) in str(error.value)


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(TrainerInputError, match="no such prompt file"):
        read_prompts(tmp_path / "nope.txt")
    (tmp_path / "dir.txt").mkdir()
    with pytest.raises(TrainerInputError, match="is a folder"):
        read_prompts(tmp_path / "dir.txt")


def test_a_file_this_user_may_not_read_is_refused_naming_it(tmp_path, monkeypatch):
    """Runs as root too (CI does): root may read a mode-000 file, so there the kernel's refusal is stood in for at
    the one call that opens the file."""
    locked = write(tmp_path, "locked.txt", "a\n")
    locked.chmod(0)
    real_open = os.open

    def open_as_another_user(path, flags, *args, **kwargs):
        if os.fspath(path) == str(locked):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, flags, *args, **kwargs)

    if os.geteuid() == 0:
        monkeypatch.setattr(os, "open", open_as_another_user)
    with pytest.raises(TrainerInputError) as error:
        read_prompts(locked)
    assert str(error.value) == f"{locked}: cannot be opened (Permission denied); check the path and its permissions"


def test_a_file_whose_reading_fails_is_refused_naming_it(tmp_path):
    """A regular file that opens but whose read fails (process memory at address 0: EIO, for root too)."""
    broken = tmp_path / "p.txt"
    broken.symlink_to("/proc/self/mem")
    with pytest.raises(TrainerInputError) as error:
        read_prompts(broken)
    assert str(error.value) == f"{broken}: cannot be read (Input/output error); check the path and its permissions"
