"""The policy trainer: reward table (generate), REINFORCE (fit), honest comparison (evaluate), run and demo.

Heavy libraries (diffusers, transformers, accelerate, matplotlib) are imported by the modules that need them, so
``import adadiff.trainer`` stays cheap and never touches ComfyUI or A1111. Start at :mod:`.cli`.
"""
