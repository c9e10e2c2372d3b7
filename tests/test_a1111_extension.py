"""The AUTOMATIC1111/Forge extension against stand-ins of the webui (names and signatures of A1111 v1.10.1, see
tests/a1111_standins.py), with real policy files and real ``adadiff.policy`` decisions on real tensors.

The extension is loaded the way the webui loads it: ``scripts/adadiff_steps.py`` imported by file path with the
extension folder first on ``sys.path``, its Script subclasses picked from the module's namespace. The policies are
small networks trained here for a few steps so that each test prompt's choice is known in advance.
"""
from __future__ import annotations

import logging
import os
import shutil
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import a1111_standins as webui
from adadiff.a1111_script.settings import ERROR_KEY, INFOTEXT_KEY
from adadiff.policy import PolicyConfig, choose_steps, init_policy, load_policy, save_policy
from policy_helpers import quality_policy_with_losses, write_crafted_policy

REPO = Path(__file__).resolve().parent.parent
LOADER = REPO / "scripts" / "adadiff_steps.py"
PACKAGE_NAME = "adadiff_webui_extension"

OPTIONS = (4, 8, 12, 16)
# Prompt -> the step count the trained policy picks for it at knob 0 with no limits.
TARGETS = {"a red cube": 4, "a cat": 8, "a busy market at dusk, many people": 12,
           "an intricate cathedral interior, volumetric light, crowds, reflections": 16}
SIMPLE, CAT, MARKET, CATHEDRAL = TARGETS
USER_STEPS = 20


def trained_policy(path: Path, targets: dict[str, int], options=OPTIONS, token_dim=768) -> Path:
    """A real policy fitted to pick ``targets[prompt]`` for each prompt's stand-in conditioning."""
    config = PolicyConfig(options=options, token_dim=token_dim, width=32, depth=1, heads=2, dropout=0.0)
    policy = init_policy(config, seed=0, info={"model_family": "sd15"})
    states = torch.stack([webui.prompt_states(prompt, width=token_dim) for prompt in targets])
    mask = torch.ones(states.shape[:2], dtype=torch.bool)
    labels = torch.tensor([options.index(steps) for steps in targets.values()])
    optimizer = torch.optim.Adam(policy.parameters(), lr=1e-2)
    policy.train()
    for _ in range(80):
        # Smoothed labels keep the policy about 5:1 sure, so the quality/speed knob can still move it.
        loss = F.cross_entropy(policy(states, mask), labels, label_smoothing=0.5)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    policy.eval()
    assert choose_steps(policy, states).per_prompt == tuple(targets.values())
    return save_policy(policy, path)


@pytest.fixture(scope="module")
def policy_bytes(tmp_path_factory) -> bytes:
    return trained_policy(tmp_path_factory.mktemp("policy") / "p.safetensors", TARGETS).read_bytes()


class Webui:
    """One txt2img (or img2img) tab of a stand-in webui with the extension loaded, and a way to run jobs through it."""

    def __init__(self, models: Path, is_img2img: bool = False):
        self.models = models
        self.policies = models / "adadiff"
        self.is_img2img = is_img2img
        self.script_classes = webui.load_scripts(str(LOADER))
        self.runner = webui.ScriptRunner()
        self.runner.initialize_scripts(self.script_classes, is_img2img=is_img2img)
        self.runner.setup_ui()
        self.accordion = self.runner.script("AdaDiff")
        self.dropdown = self.runner.script("AdaDiff per-prompt steps")

    def job(self, prompt, *, accordion=None, dropdown=None, model=None, **fields) -> webui.StableDiffusionProcessing:
        """A job as the API builds it: default control values, then ``alwayson_scripts``/``script_args`` applied."""
        args = self.runner.default_args(self.dropdown if dropdown is not None else None)
        for script, values in ((self.accordion, accordion), (self.dropdown, dropdown)):
            for offset, value in enumerate(values or []):
                args[script.args_from + offset] = value
        fields = {"steps": USER_STEPS, **fields}
        kind = webui.StableDiffusionProcessingImg2Img if self.is_img2img else webui.StableDiffusionProcessingTxt2Img
        return kind(sd_model=model or webui.StandInModel(), prompt=prompt, scripts=self.runner, script_args=args,
                    **fields)

    def generate(self, p) -> webui.Processed:
        """What txt2img does: the selected dropdown script's run(), else process_images."""
        return self.runner.run(p, *p.script_args) or webui.process_images(p)


@pytest.fixture
def models(tmp_path, monkeypatch) -> Path:
    """The stand-in webui's models folder; the extension is unloaded afterwards, as if the webui stopped."""
    for name, module in webui.standin_modules(str(tmp_path / "models")).items():
        monkeypatch.setitem(sys.modules, name, module)
    yield tmp_path / "models"
    _unload_extension()


@pytest.fixture
def host(models, policy_bytes) -> Webui:
    (models / "adadiff").mkdir(parents=True)
    (models / "adadiff" / "known.safetensors").write_bytes(policy_bytes)
    return Webui(models)


def _unload_extension():
    for name in [name for name in sys.modules if name.split(".")[0] == PACKAGE_NAME]:
        del sys.modules[name]


def enabled(policy="known.safetensors", knob=0.0, min_steps=1, max_steps=150):
    return [True, policy, knob, min_steps, max_steps]


def steps_of(processed) -> list[int]:
    return [image.steps for image in processed.images]


def infotext_params(processed) -> list[dict]:
    return [webui.parse_generation_parameters(text) for text in processed.infotexts]


# --- loading -----------------------------------------------------------------------------------------------------


def test_loader_registers_the_two_scripts_under_a_package_name_of_its_own(host):
    assert {cls.__name__ for cls in host.script_classes} == {"AdaDiffAccordion", "AdaDiffPerPromptScript"}
    assert host.runner.alwayson_scripts == [host.accordion]
    assert host.runner.selectable_scripts == [host.dropdown]
    assert type(host.accordion).__module__ == f"{PACKAGE_NAME}.a1111_script.script"
    generic = {"policy", "a1111_script", "trainer", "nodes", "settings", "job", "ui", "script"}
    assert not generic & set(sys.modules), "the extension must not leave generic top-level module names"


def test_loader_works_whatever_the_extension_folder_is_called(host, tmp_path):
    for name in [name for name in sys.modules if name.split(".")[0] == PACKAGE_NAME]:
        del sys.modules[name]
    folder = tmp_path / "extensions" / "sd-webui-adadiff"
    folder.mkdir(parents=True)
    shutil.copy(REPO / "__init__.py", folder)
    shutil.copy(REPO / "adadiff_policy.py", folder)  # the root command-line tool must not disturb the loader
    for part in ("policy", "a1111_script", "scripts"):
        shutil.copytree(REPO / part, folder / part, ignore=shutil.ignore_patterns("__pycache__"))
    classes = webui.load_scripts(str(folder / "scripts" / "adadiff_steps.py"))
    assert {cls().title() for cls in classes} == {"AdaDiff", "AdaDiff per-prompt steps"}
    assert Path(sys.modules[f"{PACKAGE_NAME}.a1111_script.script"].__file__).is_relative_to(folder)


# --- the controls ------------------------------------------------------------------------------------------------


def test_controls_come_in_api_order_with_defaults_that_leave_jobs_alone(host):
    enabled_box, policy, knob, min_steps, max_steps = host.accordion.controls
    assert isinstance(enabled_box, webui.Checkbox) and enabled_box.value is False
    assert isinstance(policy, webui.Dropdown) and policy.choices == ["known.safetensors"]
    assert policy.value == "known.safetensors"
    assert (knob.minimum, knob.maximum, knob.value) == (-1.0, 1.0, 0.0)
    assert (min_steps.value, max_steps.value) == (1, 150)
    assert [type(c) for c in host.dropdown.controls] == [webui.Dropdown, webui.Slider, webui.Slider, webui.Slider,
                                                         webui.Textbox]
    ids = [c.elem_id for c in host.runner.inputs[1:]]
    assert len(set(ids)) == len(ids)


def test_the_accordion_holds_the_enable_checkbox_and_every_control(host):
    (accordion,) = [a for a in webui._Layout.created if isinstance(a, webui._Accordion) and a.label == "AdaDiff"]
    assert accordion.open is False
    assert all(control in accordion.children for control in host.accordion.controls)


def test_the_refresh_button_sits_on_the_policy_lists_row(host):
    for script in (host.accordion, host.dropdown):
        policy = next(c for c in script.controls if isinstance(c, webui.Dropdown))
        (button,) = [b for b in webui.refresh_buttons if b.listeners["click"][0][2] == [policy]]
        (row,) = [r for r in webui._Layout.created if isinstance(r, webui.Row) and policy in r.children]
        assert button in row.children


def test_refresh_button_lists_new_policy_files_and_the_description_names_problems(host):
    (host.policies / "new.safetensors").write_bytes((host.policies / "known.safetensors").read_bytes())
    (host.policies / "broken.safetensors").write_bytes(b"not a policy at all")
    policy = host.accordion.controls[1]
    (button,) = [b for b in webui.refresh_buttons if b.listeners["click"][0][2] == [policy]]
    refresh = button.listeners["click"][0][0]
    assert refresh()["choices"] == ["broken.safetensors", "known.safetensors", "new.safetensors"]
    describe, inputs, (about,) = policy.listeners["change"][0]
    assert inputs == [policy] and isinstance(about, webui.Textbox)
    assert "step options:   4, 8, 12, 16" in describe("known.safetensors")
    broken = describe("broken.safetensors")
    assert "cannot be used" in broken and "broken.safetensors" in broken and str(host.policies) not in broken
    assert "No policy found" in describe(None) and "models/adadiff" in describe(None)
    assert (describe, [policy], [about]) in button.listeners["click"], "refresh must describe the policy again"


def _about_box(script):
    policy = next(c for c in script.controls if isinstance(c, webui.Dropdown))
    _, _, (about,) = policy.listeners["change"][0]
    return about


def test_about_box_after_a_restart_describes_the_restored_policy(models, policy_bytes):
    """The webui saves every text box in ui-config.json; a description saved when no policy existed (or of another
    policy) must not come back at the next start."""
    policies = models / "adadiff"
    first_start = Webui(models)
    assert "No policy found" in _about_box(first_start.accordion).value
    saved = webui.save_ui_config()
    policies.mkdir(parents=True, exist_ok=True)
    (policies / "a.safetensors").write_bytes(policy_bytes)
    (policies / "b.safetensors").write_bytes(policy_bytes)
    saved["Step policy"] = "b.safetensors"  # the user picked b before the restart
    _unload_extension()
    restarted = Webui(models)
    webui.restore_ui_config(saved)
    for script in (restarted.accordion, restarted.dropdown):
        assert script.controls[1 if script is restarted.accordion else 0].value == "b.safetensors"
        about = _about_box(script).value
        assert about.startswith("AdaDiff policy b.safetensors"), about


def test_with_no_policy_the_policy_control_still_holds_text(models):
    """The webui's API converts a pasted infotext's values to the types of the controls' values as built, and drops
    a value whose control holds None: a webui started before the first policy was copied in would ignore the policy
    of a pasted AdaDiff infotext (``"infotext"`` in a txt2img request)."""
    started_empty = Webui(models)
    for policy in (started_empty.accordion.controls[1], started_empty.dropdown.controls[0]):
        assert policy.choices == [] and policy.value == ""


def test_refresh_after_adding_the_first_policy_selects_it(models, policy_bytes):
    started_empty = Webui(models)
    policy = started_empty.accordion.controls[1]
    assert not policy.value
    (models / "adadiff" / "new.safetensors").write_bytes(policy_bytes)
    (button,) = [b for b in webui.refresh_buttons if b.listeners["click"][0][2] == [policy]]
    refresh = button.listeners["click"][0][0]
    assert refresh() == {"__type__": "update", "choices": ["new.safetensors"], "value": "new.safetensors"}
    assert refresh() == {"__type__": "update", "choices": ["new.safetensors"]}, "a selection is kept"


@pytest.mark.parametrize("token_dim, made_for, loaded, other", [(768, "SD1.x", "SDXL", "sdxl"),
                                                                (2048, "SDXL", "SD1.x", "sd15")])
def test_about_box_warns_when_the_policy_is_for_another_model_family(host, token_dim, made_for, loaded, other):
    """A policy made for one family on a checkpoint of the other is announced first; on its own family, or with no
    checkpoint loaded, the box just describes it."""
    config = PolicyConfig(options=OPTIONS, token_dim=token_dim, width=16, depth=1, heads=2)
    save_policy(init_policy(config), host.policies / "p.safetensors")
    describe = host.accordion.controls[1].listeners["change"][0][0]
    webui.shared.sd_model = webui.StandInModel(other)
    warning = describe("p.safetensors")
    assert warning.startswith(f"Warning: this policy was made for {made_for} checkpoints"), warning
    assert f"the loaded checkpoint is {loaded}" in warning and "step options:   4, 8, 12, 16" in warning
    webui.shared.sd_model = webui.StandInModel({"sdxl": "sd15", "sd15": "sdxl"}[other])
    assert describe("p.safetensors").startswith("AdaDiff policy p.safetensors")
    webui.shared.sd_model = None
    assert describe("p.safetensors").startswith("AdaDiff policy p.safetensors")


def test_the_about_box_loads_no_checkpoint(host):
    """Asking which checkpoint is loaded, while the UI is built and on a change, loads none: the webui's
    ``shared.sd_model`` would (minutes, and against ``--skip-load-model-at-start``)."""
    describe = host.accordion.controls[1].listeners["change"][0][0]
    assert describe("known.safetensors").startswith("AdaDiff policy known.safetensors")
    assert _about_box(host.dropdown).value.startswith("AdaDiff policy known.safetensors")
    assert webui.sd_models.model_data.loads == 0 and webui.sd_models.model_data.sd_model is None


# --- the accordion in jobs ---------------------------------------------------------------------------------------


def test_disabled_accordion_leaves_the_job_untouched(host):
    model = webui.StandInModel()
    processed = host.generate(host.job(CATHEDRAL, model=model, n_iter=2))
    assert steps_of(processed) == [USER_STEPS, USER_STEPS]
    assert model.encoded == [], "a disabled accordion must not even read the prompts"
    assert all(INFOTEXT_KEY not in params and ERROR_KEY not in params for params in infotext_params(processed))
    assert processed.comments == ""


def test_each_batch_runs_at_the_steps_of_its_most_demanding_prompt(host, capsys):
    model = webui.StandInModel()
    p = host.job([SIMPLE, CATHEDRAL, CAT, CAT, MARKET, SIMPLE], accordion=enabled(), model=model,
                 batch_size=2, n_iter=3)
    processed = host.generate(p)
    assert steps_of(processed) == [16, 16, 8, 8, 12, 12]
    assert model.encoded == [[SIMPLE, CATHEDRAL], [CAT, CAT], [MARKET, SIMPLE]], "one encoding per batch"
    for params, steps in zip(infotext_params(processed), [16, 16, 8, 8, 12, 12]):
        assert params["Steps"] == str(steps)
        assert params[INFOTEXT_KEY] == "known.safetensors, knob 0, min 1, max 150, requested 20"
        assert ERROR_KEY not in params
    assert host.runner.errors == []
    # Said where a user looks at the default log level: the console and the note under the result.
    said = [f"AdaDiff: known.safetensors chose {steps} steps (Sampling steps 20 is used only when AdaDiff cannot "
            "choose)" for steps in (16, 8, 12)]
    assert capsys.readouterr().out.splitlines() == said
    assert processed.comments.splitlines() == said


def test_the_knob_and_the_limits_move_the_choice(host):
    low = host.generate(host.job(CAT, accordion=enabled(knob=-1.0)))
    high = host.generate(host.job(CAT, accordion=enabled(knob=1.0)))
    assert steps_of(low)[0] <= 8 < steps_of(high)[0]
    assert steps_of(host.generate(host.job(CATHEDRAL, accordion=enabled(max_steps=10)))) == [10]
    assert steps_of(host.generate(host.job(SIMPLE, accordion=enabled(min_steps=6)))) == [6]
    params = infotext_params(host.generate(host.job(CAT, accordion=enabled(knob=0.35, min_steps=5, max_steps=9))))
    assert params[0][INFOTEXT_KEY] == "known.safetensors, knob 0.35, min 5, max 9, requested 20"


def test_a_quality_policy_takes_the_fewest_steps_within_its_tolerance(host):
    config = PolicyConfig(options=OPTIONS, width=32, depth=1, heads=2, objective="quality")
    # predicted IQS loss against 16 steps: 5% at 4, 0.6% at 8, 0.05% at 12; the knob sets the tolerance to 1% / 10**knob
    save_policy(quality_policy_with_losses([5.0, 0.6, 0.05, 0.0], config), host.policies / "quality.safetensors")
    for knob, expected in ((0.0, 8), (1.0, 12), (-1.0, 4)):
        processed = host.generate(host.job(CAT, accordion=enabled("quality.safetensors", knob=knob)))
        assert steps_of(processed) == [expected], knob
        assert infotext_params(processed)[0][INFOTEXT_KEY].startswith(f"quality.safetensors, knob {knob:g}")
    describe = host.accordion.controls[1].listeners["change"][0][0]
    assert "decides by:     predicted quality (the fewest steps whose IQS is predicted within 1% of 16 steps" in \
        describe("quality.safetensors")
    assert "decides by:     REINFORCE" in describe("known.safetensors")


def test_unipc_never_gets_fewer_steps_than_its_order_and_says_so(host, capsys):
    processed = host.generate(host.job(SIMPLE, accordion=enabled(max_steps=2), sampler_name="UniPC"))
    assert steps_of(processed) == [3]
    said = ("AdaDiff: known.safetensors chose 2 steps, but UniPC (Settings: UniPC order 3) needs at least 3: ran 3 "
            "steps, above Max steps 2")
    assert capsys.readouterr().out.splitlines() == [said] and processed.comments.splitlines() == [said]
    assert steps_of(host.generate(host.job(SIMPLE, accordion=enabled(max_steps=2), sampler_name="Euler"))) == [2]


def test_a_policy_added_after_the_ui_was_built_is_used_over_the_api(host, policy_bytes):
    """The API's script-info shows the choices of when the UI was built; a request names any policy on disk now."""
    assert host.accordion.controls[1].choices == ["known.safetensors"]
    (host.policies / "added later.safetensors").write_bytes(policy_bytes)
    processed = host.generate(host.job(MARKET, accordion=enabled(policy="added later.safetensors")))
    assert steps_of(processed) == [12]
    assert infotext_params(processed)[0][INFOTEXT_KEY].startswith("added later.safetensors, knob 0")
    processed = host.generate(host.job(CAT, dropdown=["added later.safetensors", 0.0, 1, 150, ""]))
    assert steps_of(processed) == [8]


def test_api_values_arrive_untyped_and_are_accepted(host):
    processed = host.generate(host.job(MARKET, accordion=[True, "known.safetensors", "0", "1", 150.0]))
    assert steps_of(processed) == [12]


def test_pasting_an_infotext_restores_the_accordion(host):
    processed = host.generate(host.job(CAT, accordion=enabled(knob=-0.25, min_steps=3, max_steps=40)))
    params = infotext_params(processed)[0]
    pasted = [paste(params) for _, paste in host.runner.infotext_fields]
    assert [component for component, _ in host.runner.infotext_fields] == host.accordion.controls
    assert pasted == [True, "known.safetensors", -0.25, 3, 40]
    plain = webui.parse_generation_parameters("a cat\nSteps: 20, Seed: 1")
    assert [paste(plain) for _, paste in host.runner.infotext_fields] == [False, None, None, None, None]


def test_pasting_puts_the_users_own_steps_back_into_sampling_steps(host):
    """Steps: is the count AdaDiff chose; the paste must restore the user's number, so a later fallback runs it."""
    processed = host.generate(host.job(CATHEDRAL, accordion=enabled(), steps=33))
    (infotext,) = processed.infotexts
    assert webui.parse_generation_parameters(infotext)["Steps"] == "16"
    steps_field = (webui.Slider(1, 150, 20, label="Sampling steps"), "Steps")  # the webui's own paste field
    restored_steps, enabled_box, policy, *_ = webui.paste_infotext(infotext, [steps_field,
                                                                              *host.runner.infotext_fields])
    assert (restored_steps, enabled_box, policy) == ("33", True, "known.safetensors")
    fallback = host.generate(host.job(CATHEDRAL, accordion=[enabled_box, "gone.safetensors", 0.0, 1, 150],
                                      steps=int(restored_steps)))
    assert steps_of(fallback) == [33]
    plain = "a cat\nSteps: 12, Seed: 1"
    assert webui.paste_infotext(plain, [steps_field])[0] == "12", "images made without AdaDiff paste as they are"
    older = f"a cat\nSteps: 12, Seed: 1, {INFOTEXT_KEY}: \"known.safetensors, knob 0, min 1, max 150\""
    assert webui.paste_infotext(older, [steps_field])[0] == "12", "infotexts without the requested steps paste as is"


def test_a_pasted_infotext_reproduces_the_same_steps(host):
    first = host.generate(host.job(CATHEDRAL, accordion=enabled(knob=0.5, max_steps=14)))
    params = infotext_params(first)[0]
    again = host.generate(host.job(CATHEDRAL, accordion=[paste(params) for _, paste in host.runner.infotext_fields]))
    assert steps_of(again) == steps_of(first) == [14]


# --- the dropdown script -----------------------------------------------------------------------------------------


def test_per_prompt_script_runs_every_prompt_at_its_own_steps_in_one_result(host):
    model = webui.StandInModel()
    lines = f"{SIMPLE}\n\n{CATHEDRAL}\n  {CAT}  \n"
    p = host.job("ignored when lines are given", dropdown=["known.safetensors", 0.0, 1, 150, lines], model=model,
                 batch_size=2, n_iter=1)
    processed = host.generate(p)
    assert [(image.prompt, image.steps) for image in processed.images] == [
        (SIMPLE, 4), (SIMPLE, 4), (CATHEDRAL, 16), (CATHEDRAL, 16), (CAT, 8), (CAT, 8)]
    assert processed.all_prompts == [SIMPLE, SIMPLE, CATHEDRAL, CATHEDRAL, CAT, CAT]
    assert processed.all_seeds == [1234567, 1234568] * 3, "each prompt line starts from the same seeds"
    assert all(len(batch) == 1 for batch in model.encoded), "one image per batch, so no prompt waits for another"
    params = infotext_params(processed)
    assert [int(x["Steps"]) for x in params] == [4, 4, 16, 16, 8, 8]
    assert all(x[INFOTEXT_KEY] == "known.safetensors, knob 0, min 1, max 150, requested 20" for x in params)
    assert webui.state.job_count == 6
    assert p.steps == USER_STEPS and INFOTEXT_KEY not in p.extra_generation_params, "the user's job stays as it was"


def test_per_prompt_script_without_lines_uses_the_main_prompt(host):
    processed = host.generate(host.job(MARKET, dropdown=["known.safetensors", 0.0, 1, 150, ""], n_iter=2))
    assert [(image.prompt, image.steps) for image in processed.images] == [(MARKET, 12), (MARKET, 12)]


def test_per_prompt_script_settings_win_over_the_accordion(host):
    processed = host.generate(host.job(CATHEDRAL, accordion=enabled(max_steps=5),
                                       dropdown=["known.safetensors", 0.0, 1, 150, ""]))
    assert steps_of(processed) == [16]


# --- bad input ---------------------------------------------------------------------------------------------------


def _assert_loud_fallback(host, processed, caplog, problem: str):
    """The job ran with the user's steps, and the problem is in the console, the UI comment and every infotext."""
    assert steps_of(processed) and set(steps_of(processed)) == {USER_STEPS}
    console = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert any(problem in line and f"ran the requested {USER_STEPS} steps" in line for line in console), console
    assert problem in processed.comments
    for params in infotext_params(processed):
        assert problem in params[ERROR_KEY]
    for text in processed.infotexts:  # saved in every image: a shared picture must not tell the server's folders
        assert str(host.models.parent) not in text, text
    assert host.runner.errors == [], "problems must be handled, not left to the webui to swallow"


@pytest.mark.parametrize("policy, problem", [
    ("gone.safetensors", "'gone.safetensors' was not found in models/adadiff or extensions/"),
    ("corrupt.safetensors", "corrupt.safetensors: is truncated or not a safetensors file"),
    ("", "no policy selected"),
    # reading these would block the webui forever or fill its memory: they are not listed, so not found
    ("fifo.safetensors", "'fifo.safetensors' was not found in models/adadiff"),
    ("zero.safetensors", "'zero.safetensors' was not found in models/adadiff"),
], ids=["missing", "corrupt", "none-selected", "fifo", "link-to-dev-zero"])
def test_a_missing_special_or_corrupt_policy_keeps_the_users_steps_and_says_so(host, caplog, policy, problem):
    (host.policies / "corrupt.safetensors").write_bytes(b"{ this is not a policy file }" * 4)
    os.mkfifo(host.policies / "fifo.safetensors")
    (host.policies / "zero.safetensors").symlink_to("/dev/zero")
    processed = host.generate(host.job([CAT, MARKET], accordion=enabled(policy=policy), batch_size=2))
    _assert_loud_fallback(host, processed, caplog, problem)


def test_a_policy_for_another_model_keeps_the_users_steps_and_says_so(host, caplog):
    processed = host.generate(host.job(CAT, accordion=enabled(), model=webui.StandInModel("sdxl"), n_iter=2))
    _assert_loud_fallback(host, processed, caplog, "expects 768-wide conditioning, got 2048")


def test_min_above_max_keeps_the_users_steps_and_says_so(host, caplog):
    processed = host.generate(host.job(CAT, accordion=enabled(min_steps=30, max_steps=10)))
    _assert_loud_fallback(host, processed, caplog, "min steps (30) is larger than max steps (10)")


def test_a_failing_text_encoder_keeps_the_users_steps_and_says_so(host, caplog):
    class BrokenModel(webui.StandInModel):
        def get_learned_conditioning(self, prompts):
            raise RuntimeError("CUDA out of memory")

    processed = host.generate(host.job(CAT, accordion=enabled(), model=BrokenModel()))
    _assert_loud_fallback(host, processed, caplog, "CUDA out of memory")


def test_a_crafted_policy_keeps_the_users_steps_and_says_so(host, caplog):
    write_crafted_policy(host.policies / "crafted.safetensors", OPTIONS)
    processed = host.generate(host.job(CAT, accordion=enabled(policy="crafted.safetensors")))
    _assert_loud_fallback(host, processed, caplog, "has shape")


def test_nan_conditioning_keeps_the_users_steps_and_says_so(host, caplog):
    class OverflowingModel(webui.StandInModel):
        def get_learned_conditioning(self, prompts):
            states = super().get_learned_conditioning(prompts)
            states[0, 5, 7] = float("nan")
            return states

    processed = host.generate(host.job(CAT, accordion=enabled(), model=OverflowingModel()))
    _assert_loud_fallback(host, processed, caplog, "holds NaN or Inf values")


def test_bad_policy_in_the_per_prompt_script_keeps_the_users_steps(host, caplog):
    processed = host.generate(host.job(CAT, dropdown=["gone.safetensors", 0.0, 1, 150, f"{CAT}\n{MARKET}"]))
    _assert_loud_fallback(host, processed, caplog, "'gone.safetensors' was not found")
    assert len(processed.images) == 2


def test_a_good_job_after_a_bad_one_carries_no_error(host):
    host.generate(host.job(CAT, accordion=enabled(policy="gone.safetensors")))
    params = infotext_params(host.generate(host.job(CAT, accordion=enabled())))
    assert ERROR_KEY not in params[0] and params[0]["Steps"] == "8"


# --- SDXL --------------------------------------------------------------------------------------------------------


def test_sdxl_conditioning_with_an_sdxl_policy(host):
    config = PolicyConfig(options=OPTIONS, token_dim=2048, pooled_dim=1280, width=32, depth=1, heads=2)
    save_policy(init_policy(config, seed=3, info={"model_family": "sdxl"}), host.policies / "xl.safetensors")
    model = webui.StandInModel("sdxl")
    processed = host.generate(host.job([CAT, MARKET], accordion=enabled(policy="xl.safetensors"), model=model,
                                       batch_size=2))
    expected = choose_steps(init_policy(config, seed=3), webui.StandInModel("sdxl").get_learned_conditioning(
        [CAT, MARKET])).steps
    assert steps_of(processed) == [expected, expected]
    assert ERROR_KEY not in infotext_params(processed)[0]


# --- where the choice sits in the webui's job ----------------------------------------------------------------------


@pytest.mark.parametrize("prompt, styles", [
    (f"{MARKET}<lora:detail_tweaker:0.8>", {}),
    ("a busy market at dusk", {"crowd": "{prompt}, many people"}),
    ("<lora:a:1>a busy market at dusk", {"crowd": "{prompt}, many people<lora:b:0.5>"}),
], ids=["lora-tag", "style", "style-with-lora-tag"])
def test_the_policy_reads_the_prompt_with_styles_applied_and_lora_tags_removed(host, prompt, styles):
    """What the webui conditions on is what the policy reads: styles merged in, ``<lora:...>`` tags gone."""
    webui.shared.prompt_styles.styles.update(styles)
    model = webui.StandInModel()
    processed = host.generate(host.job(prompt, styles=list(styles), accordion=enabled(), model=model))
    assert model.encoded == [[MARKET]]
    assert steps_of(processed) == [12]


def _policy_choice(host, prompt) -> int:
    return choose_steps(load_policy(host.policies / "known.safetensors"),
                        webui.StandInModel().get_learned_conditioning([prompt])).steps


@pytest.mark.parametrize("prompt", [CAT, f"[{SIMPLE}:{CATHEDRAL}:0.5]", f"a [{CAT}|{MARKET}]"],
                         ids=["plain", "prompt-editing", "alternation"])
def test_the_conditioning_schedule_is_built_for_the_chosen_count(host, prompt):
    """The count is set before the webui builds the conditioning, so prompt editing switches at the chosen count's
    steps; the prompt is read as written (the webui's text encoder reads the brackets as text)."""
    model = webui.StandInModel()
    (image,) = host.generate(host.job(prompt, accordion=enabled(), model=model)).images
    assert model.encoded == [[prompt]]
    assert image.steps == image.conditioning_steps == _policy_choice(host, prompt) != USER_STEPS


@pytest.mark.parametrize("hires_steps, expected", [(0, 16), (7, 7)], ids=["follows-the-choice", "set-by-the-user"])
def test_hires_fix_follows_the_choice_unless_hires_steps_are_set(host, hires_steps, expected):
    """Hires steps 0 means "as many as the first pass", which is then the chosen count; a number the user set stays."""
    (image,) = host.generate(host.job(CATHEDRAL, accordion=enabled(), enable_hr=True,
                                      hr_second_pass_steps=hires_steps)).images
    assert (image.steps, image.conditioning_steps, image.hires_steps) == (16, 16, expected)


def test_a_unipc_hires_pass_gets_at_least_its_order(host, capsys):
    """A UniPC hires sampler behind another first-pass sampler also needs its order's steps (hires steps 0)."""
    processed = host.generate(host.job(SIMPLE, accordion=enabled(max_steps=2), sampler_name="Euler",
                                       enable_hr=True, hr_sampler_name="UniPC"))
    (image,) = processed.images
    assert (image.steps, image.hires_steps) == (3, 3)
    assert "UniPC (Settings: UniPC order 3) needs at least 3: ran 3 steps" in capsys.readouterr().out


def test_img2img_denoises_the_chosen_count_times_the_strength(models, policy_bytes):
    """On the img2img tab, both scripts set the count the denoising strength is then applied to."""
    (models / "adadiff").mkdir(parents=True)
    (models / "adadiff" / "known.safetensors").write_bytes(policy_bytes)
    img2img = Webui(models, is_img2img=True)
    assert img2img.runner.alwayson_scripts == [img2img.accordion], "the accordion is on the img2img tab too"
    processed = img2img.generate(img2img.job(CATHEDRAL, accordion=enabled(), init_images=["image"],
                                             denoising_strength=0.5))
    (image,) = processed.images
    assert (image.steps, image.conditioning_steps, image.denoising_steps) == (16, 16, 8)
    assert infotext_params(processed)[0]["Steps"] == "16"
    processed = img2img.generate(img2img.job(CAT, dropdown=["known.safetensors", 0.0, 1, 150, ""],
                                             init_images=["image"], denoising_strength=0.5))
    assert [(image.steps, image.denoising_steps) for image in processed.images] == [(8, 4)]


# --- failures in the middle of a job, and what is caught ---------------------------------------------------------


class FailingOn(webui.StandInModel):
    """A text encoder that raises ``error`` (or gives NaN states) for one prompt and works for the others."""

    def __init__(self, prompt: str, error: BaseException | None = None):
        super().__init__()
        self.prompt, self.error = prompt, error

    def get_learned_conditioning(self, prompts):
        states = super().get_learned_conditioning(prompts)
        if self.prompt in prompts:
            if self.error is not None:
                raise self.error
            states[prompts.index(self.prompt), 3, 5] = float("nan")  # e.g. an fp16 overflow on this prompt only
        return states


def test_a_failure_in_a_later_batch_runs_that_batch_at_the_users_steps_and_only_it_carries_the_error(host, caplog):
    """Batch 1 changed ``p.steps``; batch 2 fails and must not inherit batch 1's count; batch 3 chooses again."""
    model = FailingOn(MARKET)
    processed = host.generate(host.job([CATHEDRAL, MARKET, CAT], accordion=enabled(), model=model, n_iter=3))
    assert steps_of(processed) == [16, USER_STEPS, 8]
    params = infotext_params(processed)
    assert [ERROR_KEY in x for x in params] == [False, True, False]
    assert "holds NaN or Inf values" in params[1][ERROR_KEY]
    assert all(x[INFOTEXT_KEY] == "known.safetensors, knob 0, min 1, max 150, requested 20" for x in params)
    comments = processed.comments.splitlines()
    assert len(comments) == 3 and "chose 16 steps" in comments[0] and "chose 8 steps" in comments[2]
    assert "holds NaN or Inf values" in comments[1] and f"ran the requested {USER_STEPS} steps" in comments[1]
    assert host.runner.errors == []


@pytest.mark.parametrize("error", [RuntimeError("CUDA out of memory"), KeyError("cond_stage_model"),
                                   AttributeError("'NoneType' object has no attribute 'encode'")],
                         ids=["runtime", "key", "attribute"])
def test_an_unexpected_error_reading_the_prompts_is_reported_with_its_type_and_traceback(host, caplog, error):
    """Not a policy problem but a bug or a crash: the job still runs the user's steps, and the report names the
    exception's type and logs its traceback, so it can be told from a policy problem and traced."""
    processed = host.generate(host.job(CAT, accordion=enabled(), model=FailingOn(CAT, error)))
    _assert_loud_fallback(host, processed, caplog, repr(error))
    assert any(r.exc_info and r.exc_info[1] is error for r in caplog.records), "no traceback in the log"


def test_an_unexpected_error_loading_the_policy_is_reported_with_its_type_and_traceback(host, caplog, monkeypatch):
    """The same for the policy library failing in an unforeseen way (not a ``PolicyFileError``): left to the webui it
    would only log it, and the image would carry AdaDiff's settings next to steps AdaDiff never chose."""
    error = RuntimeError("unforeseen failure while reading the policy")

    def failing_load(path):
        raise error

    monkeypatch.setattr(sys.modules[f"{PACKAGE_NAME}.policy.cache"], "load_policy", failing_load)
    processed = host.generate(host.job(CAT, accordion=enabled()))
    _assert_loud_fallback(host, processed, caplog, repr(error))
    assert any(r.exc_info and r.exc_info[1] is error for r in caplog.records), "no traceback in the log"


def test_a_policy_problem_is_reported_by_its_message_without_a_traceback(host, caplog):
    """A problem the user can fix (here: an SDXL checkpoint under an SD1.5 policy) reads as a plain message."""
    processed = host.generate(host.job(CAT, accordion=enabled(), model=webui.StandInModel("sdxl")))
    _assert_loud_fallback(host, processed, caplog, "expects 768-wide conditioning, got 2048")
    assert not any(r.exc_info for r in caplog.records)
    assert "FeatureMismatchError" not in processed.comments


@pytest.mark.parametrize("error", [KeyboardInterrupt(), SystemExit(1)], ids=["keyboard-interrupt", "system-exit"])
def test_an_interrupt_is_not_caught(host, error):
    """Only errors are turned into a fallback; stopping the process is not AdaDiff's to swallow."""
    with pytest.raises(type(error)):
        host.generate(host.job(CAT, accordion=enabled(), model=FailingOn(CAT, error)))
