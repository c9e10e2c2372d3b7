"""Offline configuration for single-file checkpoints (SD1.x, SD2.x, SDXL): what diffusers' `from_single_file`
would otherwise fetch from the Hugging Face Hub."""
