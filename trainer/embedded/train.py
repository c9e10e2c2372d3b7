"""Train the embedded demo model (VAE and text-conditioned UNet) and export it as a diffusers pipeline folder.

    python -m adadiff.trainer.embedded.train --phase vae
    python -m adadiff.trainer.embedded.train --phase unet
    python -m adadiff.trainer.embedded.train --phase export      # `make embedded-model` runs all three

Deterministic given --seed: every step draws its scenes and noise from (seed, step), so a run that is interrupted
and resumed from its last checkpoint continues exactly as an uninterrupted one would. The VAE and the UNet train
independently (one process each: kernels chosen after other work can differ in the last float bit): the VAE
learns to encode to, and decode from, the pixel-unshuffled image that the UNet models.

Budget on this project's 2-core CPU (2 threads, measured): VAE 2,500 steps ~14 min, UNet 9,500 steps at
~0.64 s/step ~1 h 45 min; about 2 hours in all, as a background job.
"""

from __future__ import annotations

import argparse
import logging
import math
import time
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from transformers import CLIPTokenizer

from .model import (MODEL_DIR, assemble_pipeline, build_scheduler, build_text_encoder, build_unet, build_vae,
                    image_to_latent)
from .split import sample_training_scene
from .tokenizer import build_tokenizer
from .world import render

log = logging.getLogger(__name__)
CAPTION_DROPOUT = 0.1  # unconditional training, so classifier-free guidance works


def training_batch(seed: int, step: int, batch: int) -> tuple[list[str], torch.Tensor]:
    """Captions and ground-truth renders [B, 3, 32, 32] for one step, a pure function of (seed, step)."""
    rng = np.random.default_rng([seed, step])
    scenes = [sample_training_scene(rng) for _ in range(batch)]
    images = np.stack([render(s, rng) for s in scenes])
    return [s.caption() for s in scenes], torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()


@lru_cache(maxsize=4)
def latent_scaling_factor(seed: int) -> float:
    """1 / std of the unscaled latent over training renders, so the UNet sees unit-variance data."""
    _, images = training_batch(seed + 1000, 0, 4096)
    return float(1.0 / image_to_latent(images).std())


def lr_at(step: int, peak: float, warmup: int = 200) -> float:
    """Linear warm-up, then constant: the run up to step N does not depend on the planned total, so a run can
    stop at any checkpoint and `--*-steps N` reproduces it (the EMA does the averaging a decay would)."""
    return peak * min(1.0, (step + 1) / warmup)


def run_tokenizer(work: Path) -> CLIPTokenizer:
    """The run's tokenizer, saved with its checkpoints so that training, resuming and export agree on token ids."""
    folder = work / "tokenizer"
    if folder.exists():
        return CLIPTokenizer.from_pretrained(str(folder))
    tokenizer = build_tokenizer()
    tokenizer.save_pretrained(str(folder))
    return tokenizer


def save_checkpoint(path: Path, state: dict) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def train_vae(args: argparse.Namespace, scaling_factor: float) -> None:
    """Encoder: image -> the unshuffled image (tiny variance). Decoder: unshuffled image (+ small noise) -> image."""
    path = args.work / "vae.pt"
    torch.manual_seed(args.seed)
    vae = build_vae(scaling_factor)
    opt = torch.optim.AdamW(vae.parameters(), lr=args.vae_lr, weight_decay=0.0)
    step = 0
    if path.exists():
        state = torch.load(path, weights_only=True)
        vae.load_state_dict(state["vae"])
        opt.load_state_dict(state["opt"])
        step = state["step"]
        log.info("resumed VAE at step %d", step)
    start = time.time()
    while step < args.vae_steps:
        for group in opt.param_groups:
            group["lr"] = lr_at(step, args.vae_lr)
        _, images = training_batch(args.seed + 1, step, args.vae_batch)
        target = image_to_latent(images)
        gen = torch.Generator().manual_seed(args.seed * 7919 + step)
        noisy = target + args.vae_latent_noise * torch.randn(target.shape, generator=gen)
        decoded = vae.decode(noisy).sample
        posterior = vae.encode(images).latent_dist
        recon = F.mse_loss(decoded, images * 2 - 1) + F.l1_loss(decoded, images * 2 - 1)
        encode = F.mse_loss(posterior.mean, target) + 1e-3 * (posterior.logvar + 12).pow(2).mean()
        loss = recon + encode
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        if step % 50 == 0:
            psnr = -10 * math.log10(F.mse_loss(decoded.detach().clamp(-1, 1) / 2, images - 0.5).item())
            log.info("vae step %d loss %.5f recon-psnr %.1f dB %.2f s/step", step, loss.item(), psnr,
                     (time.time() - start) / 50)
            start = time.time()
        if step % args.checkpoint_every == 0 or step == args.vae_steps:
            save_checkpoint(path, {"vae": vae.state_dict(), "opt": opt.state_dict(), "step": step})


def min_snr_weights(alphas_cumprod: torch.Tensor, gamma: float) -> torch.Tensor:
    """Per-timestep weight of the v-prediction loss, Min-SNR-gamma style (Hang et al. 2023) in v-space:
    min(1, gamma / (SNR + 1)). The nearly noise-free timesteps, whose targets are easy, stop dominating the
    gradient (faster convergence); the pure-noise end keeps full weight, because trailing DDIM spacing starts every
    sample there and the first few-step updates depend on it most."""
    snr = alphas_cumprod / (1 - alphas_cumprod)
    return (gamma / (snr + 1)).clamp(max=1.0)


def train_unet(args: argparse.Namespace, scaling_factor: float) -> None:
    """v-prediction on the cosine schedule, Min-SNR loss weights; text encoder trained jointly; EMA of both kept
    for export."""
    path = args.work / "unet.pt"
    tokenizer = run_tokenizer(args.work)
    torch.manual_seed(args.seed)
    text_encoder, unet = build_text_encoder(len(tokenizer)), build_unet()
    params = list(text_encoder.parameters()) + list(unet.parameters())
    ema = [p.detach().clone() for p in params]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=1e-4)
    scheduler = build_scheduler()
    step = 0
    if path.exists():
        state = torch.load(path, weights_only=True)
        text_encoder.load_state_dict(state["text_encoder"])
        unet.load_state_dict(state["unet"])
        ema = state["ema"]
        opt.load_state_dict(state["opt"])
        step = state["step"]
        log.info("resumed UNet at step %d", step)
    alphas = scheduler.alphas_cumprod
    loss_weights = min_snr_weights(alphas, args.min_snr_gamma)
    start = time.time()
    while step < args.unet_steps:
        for group in opt.param_groups:
            group["lr"] = lr_at(step, args.lr)
        captions, images = training_batch(args.seed, step, args.batch)
        drop = np.random.default_rng([args.seed, step, 1]).random(len(captions)) < CAPTION_DROPOUT
        captions = ["" if d else c for c, d in zip(captions, drop)]
        ids = tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                        return_tensors="pt").input_ids
        latents = image_to_latent(images) * scaling_factor
        gen = torch.Generator().manual_seed(args.seed * 1_000_003 + step)
        noise = torch.randn(latents.shape, generator=gen)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (len(captions),), generator=gen)
        a = alphas[t].sqrt().view(-1, 1, 1, 1)
        s = (1 - alphas[t]).sqrt().view(-1, 1, 1, 1)
        pred = unet(a * latents + s * noise, t, text_encoder(ids).last_hidden_state).sample
        loss = (loss_weights[t] * (pred - (a * noise - s * latents)).pow(2).mean((1, 2, 3))).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        decay = min(args.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for e, p in zip(ema, params):
                e.lerp_(p.detach(), 1 - decay)
        if step % 50 == 0:
            log.info("unet step %d loss %.5f lr %.2e %.2f s/step", step, loss.item(), opt.param_groups[0]["lr"],
                     (time.time() - start) / 50)
            start = time.time()
        if step % args.checkpoint_every == 0 or step == args.unet_steps:
            save_checkpoint(path, {"text_encoder": text_encoder.state_dict(), "unet": unet.state_dict(),
                                   "ema": ema, "opt": opt.state_dict(), "step": step})


def export(args: argparse.Namespace, scaling_factor: float, out: Path) -> None:
    """Write the EMA weights and the VAE as a StableDiffusionPipeline folder (fp16 safetensors)."""
    tokenizer = run_tokenizer(args.work)
    text_encoder, unet = build_text_encoder(len(tokenizer)), build_unet()
    state = torch.load(args.work / "unet.pt", weights_only=True)
    with torch.no_grad():
        for p, e in zip(list(text_encoder.parameters()) + list(unet.parameters()), state["ema"]):
            p.copy_(e)
    vae = build_vae(scaling_factor)
    vae.load_state_dict(torch.load(args.work / "vae.pt", weights_only=True)["vae"])
    pipe = assemble_pipeline(tokenizer, text_encoder, unet, vae)
    pipe.to(torch.float16).save_pretrained(str(out), safe_serialization=True)
    log.info("exported UNet step %d to %s", state["step"], out)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--phase", choices=("vae", "unet", "export"), required=True, help="what to run")
    p.add_argument("--work", type=Path, default=Path(".cache/embedded"), help="checkpoints and logs (not committed)")
    p.add_argument("--out", type=Path, default=MODEL_DIR, help="where the pipeline folder is exported")
    p.add_argument("--seed", type=int, default=0, help="decides initial weights, data and noise")
    p.add_argument("--unet-steps", type=int, default=9500, help="UNet optimisation steps")
    p.add_argument("--batch", type=int, default=64, help="UNet batch size")
    p.add_argument("--lr", type=float, default=1e-3, help="peak UNet/text-encoder learning rate")
    p.add_argument("--ema-decay", type=float, default=0.999, help="EMA decay of the exported weights")
    p.add_argument("--min-snr-gamma", type=float, default=5.0, help="Min-SNR loss weighting's gamma")
    p.add_argument("--vae-steps", type=int, default=2500, help="VAE optimisation steps")
    p.add_argument("--vae-batch", type=int, default=32, help="VAE batch size")
    p.add_argument("--vae-lr", type=float, default=2e-3, help="peak VAE learning rate")
    p.add_argument("--vae-latent-noise", type=float, default=0.02, help="noise added to latents the decoder sees")
    p.add_argument("--checkpoint-every", type=int, default=100, help="steps between checkpoints")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    args = p.parse_args(argv)
    if min(args.unet_steps, args.vae_steps, args.batch, args.vae_batch, args.checkpoint_every) < 1:
        p.error("step counts, batch sizes and --checkpoint-every must be positive")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    scaling_factor = latent_scaling_factor(args.seed)
    log.info("latent scaling factor %.4f", scaling_factor)
    if args.phase == "vae":
        train_vae(args, scaling_factor)
    elif args.phase == "unet":
        train_unet(args, scaling_factor)
    else:
        export(args, scaling_factor, args.out)


if __name__ == "__main__":
    main()
