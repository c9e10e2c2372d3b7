"""The training script is deterministic, resumes exactly, and exports a loadable pipeline."""

import torch

from adadiff.trainer.embedded import load_embedded_pipeline
from adadiff.trainer.embedded.train import main, training_batch

TINY = ["--batch", "2", "--vae-batch", "2", "--checkpoint-every", "1", "--vae-steps", "1"]


def test_batches_are_a_function_of_seed_and_step():
    captions, images = training_batch(0, 5, 3)
    again = training_batch(0, 5, 3)
    assert captions == again[0] and torch.equal(images, again[1])
    assert training_batch(0, 6, 3)[0] != captions
    assert images.shape == (3, 3, 32, 32)


def test_resumed_run_equals_uninterrupted_run_and_exports(tmp_path):
    main(["--phase", "unet", "--work", str(tmp_path / "a"), "--unet-steps", "2", *TINY])
    main(["--phase", "unet", "--work", str(tmp_path / "b"), "--unet-steps", "1", *TINY])
    main(["--phase", "unet", "--work", str(tmp_path / "b"), "--unet-steps", "2", *TINY])
    a = torch.load(tmp_path / "a" / "unet.pt", weights_only=False)
    b = torch.load(tmp_path / "b" / "unet.pt", weights_only=False)
    assert a["step"] == b["step"] == 2
    for key, value in a["unet"].items():
        assert torch.equal(value, b["unet"][key]), key
    main(["--phase", "vae", "--work", str(tmp_path / "a"), *TINY])
    main(["--phase", "export", "--work", str(tmp_path / "a"), "--out", str(tmp_path / "model"), *TINY])
    pipe = load_embedded_pipeline(tmp_path / "model")
    assert pipe(["a large red square on a plain grey background"], num_inference_steps=2, guidance_scale=1.0,
                output_type="pt").images.shape == (1, 3, 32, 32)
