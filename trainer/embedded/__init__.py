"""The embedded demo: a synthetic captioned world, a tiny text-to-image model packaged as a diffusers
StableDiffusionPipeline folder, and the world's image quality score (the `toy` reward backend).

No real checkpoint can be downloaded where this project is tested, so the trainer's demo, the benchmarks and every
quality claim run on this model. Importing this package needs diffusers and transformers (the `trainer` extra).
"""

from .model import MODEL_DIR, load_embedded_pipeline
from .sampling import STEP_OPTIONS
from .scorer import ToyIQS
from .split import held_out_prompts, train_prompts

__all__ = ["MODEL_DIR", "STEP_OPTIONS", "ToyIQS", "held_out_prompts", "load_embedded_pipeline", "train_prompts"]
