"""The AdaDiff controls, built from components that exist with the same arguments in gradio 3.41 (A1111 1.x) and
gradio 4 (Forge, reForge): Checkbox, Slider, Dropdown, Textbox, Accordion, Row, plus the webui's own refresh button.

The control order is the API's argument order, so it is fixed here once for both scripts and documented in the
README: ``[enabled, policy, knob, min_steps, max_steps]`` for the accordion, ``[policy, knob, min_steps, max_steps,
prompts]`` for the dropdown script.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import gradio as gr
from modules.ui_common import create_refresh_button

from ..policy import PolicyFileError
from .policy_store import PolicyStore
from .settings import INFOTEXT_KEY, KNOB_RANGE, STEPS_RANGE, pasted_settings


@dataclass(frozen=True)
class PolicyControls:
    """The four controls both scripts share, in API order."""

    policy: object
    knob: object
    min_steps: object
    max_steps: object

    def as_list(self) -> list:
        return [self.policy, self.knob, self.min_steps, self.max_steps]

    def paste_fields(self) -> list[tuple]:
        """(component, function of the parsed infotext) pairs: a pasted AdaDiff infotext restores every control."""
        def field(name: str) -> Callable[[dict], object]:
            def value(params: dict):
                settings = pasted_settings(params)
                return None if settings is None else getattr(settings, name)
            return value

        return [(self.policy, field("policy")), (self.knob, field("knob")),
                (self.min_steps, field("min_steps")), (self.max_steps, field("max_steps"))]


def policy_controls(store: PolicyStore, elem_id: Callable[[str], str],
                    checkpoint_family: Callable[[], str | None]) -> PolicyControls:
    """Policy dropdown with refresh button and description, the quality/speed knob and the step limits.

    ``checkpoint_family`` tells the loaded checkpoint's model family (a key of ``CONDITIONING_WIDTHS``, None when
    unknown), so the description warns about a policy made for another family.
    """
    names = store.names()
    with gr.Row():
        # A text value even with no policy: the webui's API converts a pasted infotext's value to the type of the
        # control's value as built, and drops it when that is None (a webui started before the first policy).
        policy = gr.Dropdown(choices=names, value=names[0] if names else "", label="Step policy",
                             elem_id=elem_id("policy"))
        refresh = create_refresh_button(policy, lambda: None, lambda: refreshed_list(store, policy.value),
                                        elem_id("refresh_policies"))

    def about_text(name: str | None) -> str:
        return describe_policy(store, name, checkpoint_family())

    about = gr.Textbox(value=about_text(policy.value), label="About this policy", lines=4, interactive=False,
                       elem_id=elem_id("about"))
    # The webui saves every text box in ui-config.json and restores it at start, which would show a description
    # from an earlier start. The description is derived, so it is kept out of the file and rebuilt instead: when the
    # webui restores the saved policy choice (it calls the dropdown's ``init_field``), on every change, and on refresh.
    about.do_not_save_to_config = True
    policy.init_field = lambda name: setattr(about, "value", about_text(name))
    policy.change(fn=about_text, inputs=[policy], outputs=[about])
    refresh.click(fn=about_text, inputs=[policy], outputs=[about])
    knob = gr.Slider(minimum=KNOB_RANGE[0], maximum=KNOB_RANGE[1], step=0.05, value=0.0,
                     label="Speed (-1) / quality (+1) knob", elem_id=elem_id("knob"))
    min_steps = gr.Slider(minimum=STEPS_RANGE[0], maximum=STEPS_RANGE[1], step=1, value=STEPS_RANGE[0],
                          label="Min steps", elem_id=elem_id("min_steps"))
    max_steps = gr.Slider(minimum=STEPS_RANGE[0], maximum=STEPS_RANGE[1], step=1, value=STEPS_RANGE[1],
                          label="Max steps", elem_id=elem_id("max_steps"))
    return PolicyControls(policy, knob, min_steps, max_steps)


def accordion_controls(store: PolicyStore, elem_id: Callable[[str], str],
                       checkpoint_family: Callable[[], str | None]) -> tuple[object, PolicyControls]:
    """The always-on accordion: an enable checkbox above the shared controls."""
    with gr.Accordion(label="AdaDiff", open=False, elem_id=elem_id("accordion")):
        enabled = gr.Checkbox(value=False, label="Choose the steps per prompt with AdaDiff", elem_id=elem_id("enabled"))
        return enabled, policy_controls(store, elem_id, checkpoint_family)


def prompt_list_box(elem_id: Callable[[str], str]):
    return gr.Textbox(value="", lines=4, label="Prompts, one per line (empty: the prompt above)",
                      elem_id=elem_id("prompts"))


def paste_enabled(params: dict) -> bool:
    """Pasting an infotext turns AdaDiff on exactly when the image was made with it."""
    return INFOTEXT_KEY in params


def refreshed_list(store: PolicyStore, selected: str | None) -> dict:
    """The dropdown's new choices; when nothing was selected yet (no policy at start), the first new policy."""
    names = store.names()
    return {"choices": names} if selected or not names else {"choices": names, "value": names[0]}


CONDITIONING_WIDTHS = {"SD1.x": 768, "SD2.x": 1024, "SDXL": 2048}  # the text conditioning each family's policies read


def describe_policy(store: PolicyStore, name: str | None, checkpoint_family: str | None = None) -> str:
    """What the UI shows under the dropdown: the policy's metadata, or what is wrong with the file.

    A policy that reads conditioning of another width than the loaded checkpoint gives is announced first: every job
    with it would fall back to the user's steps.
    """
    if not name:
        return ("No policy found: put a .safetensors step policy in the webui's models/adadiff folder and press the "
                "refresh button next to the policy list.")
    try:
        description = store.describe(name)
        width = store.token_width(name)
    except PolicyFileError as error:
        return f"This policy cannot be used: {error}"
    if checkpoint_family is None or width == CONDITIONING_WIDTHS[checkpoint_family]:
        return description
    made_for = next((f"{family} checkpoints" for family, family_width in CONDITIONING_WIDTHS.items()
                     if family_width == width), f"models with {width}-wide text conditioning")
    return (f"Warning: this policy was made for {made_for}, but the loaded checkpoint is "
            f"{checkpoint_family}. With it AdaDiff cannot choose, and every job runs your Sampling steps; pick a "
            f"policy made for {checkpoint_family}.\n\n{description}")
