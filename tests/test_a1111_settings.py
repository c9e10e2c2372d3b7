"""The extension's host-independent parts: settings from untyped control values, the infotext round trip, and the
policy folders with their reload-on-change cache."""
import errno
import os
import subprocess
import sys

import pytest

from adadiff.a1111_script.policy_store import PolicyStore
from adadiff.a1111_script.settings import (INFOTEXT_KEY, StepSettings, pasted_settings, requested_steps,
                                           restore_requested_steps)
from adadiff.policy import PolicyConfig, PolicyFileError, init_policy, save_policy


@pytest.mark.parametrize("controls, expected", [
    (("p.safetensors", 0.25, 5, 40), StepSettings("p.safetensors", 0.25, 5, 40)),
    ((" p.safetensors ", "-1", "1", "150.0"), StepSettings("p.safetensors", -1.0, 1, 150)),
    (("p.safetensors", 0, 7.0, 7), StepSettings("p.safetensors", 0.0, 7, 7)),
])
def test_settings_accept_what_the_ui_and_the_api_send(controls, expected):
    assert StepSettings.from_controls(*controls) == expected


@pytest.mark.parametrize("controls, message", [
    ((None, 0, 1, 150), "no policy selected"),
    (("p.safetensors", "fast", 1, 150), "knob must be a number, got 'fast'"),
    (("p.safetensors", 1.5, 1, 150), "knob must be between -1 and 1"),
    (("p.safetensors", 0, 2.5, 150), "min steps must be a whole number"),
    (("p.safetensors", 0, 0, 150), "min steps must be between 1 and 150"),
    (("p.safetensors", 0, 1, None), "max steps must be a number"),
    (("p.safetensors", 0, 50, 20), "min steps (50) is larger than max steps (20)"),
])
def test_unusable_settings_say_what_is_wrong(controls, message):
    with pytest.raises(ValueError) as error:
        StepSettings.from_controls(*controls)
    assert message in str(error.value)


@pytest.mark.parametrize("settings", [
    StepSettings("sd15.safetensors"),
    StepSettings("my, odd: name.safetensors", -0.35, 12, 12),
    StepSettings("x.safetensors", 0.123456789, 1, 150),
])
def test_infotext_round_trip(settings):
    text = settings.infotext()
    parsed = StepSettings.from_infotext(text)
    assert parsed.policy == settings.policy and (parsed.min_steps, parsed.max_steps) == (settings.min_steps,
                                                                                         settings.max_steps)
    assert parsed.knob == pytest.approx(settings.knob, abs=1e-5)
    assert pasted_settings({INFOTEXT_KEY: text}) == parsed


@pytest.mark.parametrize("text", ["", "sd15.safetensors", "p, knob fast, min 1, max 2", "p, knob 0, min 9, max 2"])
def test_foreign_infotext_values_are_ignored(text):
    assert StepSettings.from_infotext(text) is None
    assert pasted_settings({INFOTEXT_KEY: text}) is None
    assert pasted_settings({}) is None


def _write_policy(path, seed):
    return save_policy(init_policy(PolicyConfig(options=(1, 2), width=16, depth=1, heads=2), seed=seed), path)


def test_store_lists_both_folders_first_folder_wins(tmp_path):
    models, extension = tmp_path / "models", tmp_path / "extension"
    _write_policy(models / "a.safetensors", 0)
    _write_policy(extension / "a.safetensors", 1)
    _write_policy(extension / "b.safetensors", 2)
    (extension / "notes.txt").write_text("not a policy")
    store = PolicyStore({"models/adadiff": models, "extensions/x/policies": extension, "absent": tmp_path / "absent"})
    assert store.names() == ["a.safetensors", "b.safetensors"]
    assert store.path("a.safetensors") == models / "a.safetensors"
    with pytest.raises(PolicyFileError, match="'c.safetensors' was not found in models/adadiff or extensions/x/p"):
        store.path("c.safetensors")


def _damaged(folder, monkeypatch):
    (folder / "broken.safetensors").write_bytes(b"not a policy")


def _unreadable(folder, monkeypatch):
    """A policy the webui's user may not read: the reader's message shortens a path over 80 characters."""
    path = str(_write_policy(folder / "broken.safetensors", 0))
    real_open = os.open

    def no_permission(name, *args, **kwargs):
        if str(name) == path:
            raise PermissionError(errno.EACCES, "Permission denied", path)
        return real_open(name, *args, **kwargs)

    monkeypatch.setattr(os, "open", no_permission)


@pytest.mark.parametrize("folder_name, problem", [
    ("adadiff", _damaged),
    ("home/alice-the-artist/stable-diffusion-webui/models/adadiff", _unreadable),
])
def test_store_errors_name_the_file_never_its_folder(tmp_path, monkeypatch, folder_name, problem):
    """Messages reach every image's infotext: they name the file, never a piece of its folder, even shortened."""
    folder = tmp_path / folder_name
    folder.mkdir(parents=True)
    problem(folder, monkeypatch)
    store = PolicyStore({"models/adadiff": folder})
    for read in (store.load, store.describe, store.token_width):
        with pytest.raises(PolicyFileError) as error:
            read("broken.safetensors")
        assert str(error.value).startswith("broken.safetensors: ") and str(folder)[:20] not in str(error.value)


def test_requested_steps_round_trip_and_restore_the_pasted_steps():
    text = StepSettings("p.safetensors", 0.5, 2, 40).infotext(requested_steps=25)
    assert text == "p.safetensors, knob 0.5, min 2, max 40, requested 25"
    assert StepSettings.from_infotext(text) == StepSettings("p.safetensors", 0.5, 2, 40)
    params = {"Steps": "9", INFOTEXT_KEY: text}
    assert requested_steps(params) == 25
    restore_requested_steps(params)
    assert params["Steps"] == "25"
    for params in ({"Steps": "9"}, {"Steps": "9", INFOTEXT_KEY: "p.safetensors, knob 0, min 1, max 150"}):
        restore_requested_steps(params)
        assert params["Steps"] == "9"


def test_store_reads_a_file_again_only_when_it_changed(tmp_path):
    path = _write_policy(tmp_path / "p.safetensors", 0)
    store = PolicyStore({"models/adadiff": tmp_path})
    first = store.load("p.safetensors")
    assert store.load("p.safetensors") is first
    _write_policy(path, 5)
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    second = store.load("p.safetensors")
    assert second is not first
    assert not all((a == b).all() for a, b in zip(first.state_dict().values(), second.state_dict().values()))


def test_the_host_independent_modules_import_no_webui_module():
    code = ("import sys, adadiff.a1111_script.settings, adadiff.a1111_script.job, adadiff.a1111_script.policy_store\n"
            "print(','.join(m for m in sys.modules if m.split('.')[0] in ('modules', 'gradio', 'launch')))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""
