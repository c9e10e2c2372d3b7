"""The AUTOMATIC1111 / Forge extension: an always-on "AdaDiff" accordion and an "AdaDiff per-prompt steps" script.

The webui loads it through ``scripts/adadiff_steps.py``. Only :mod:`.script` and :mod:`.ui` import the webui's own
modules (``modules.*``, ``gradio``); :mod:`.settings`, :mod:`.policy_store` and :mod:`.job` import none, so they are
tested anywhere.
"""
