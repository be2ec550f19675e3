"""Rectified-flow pretraining of the tiny embedded model on the procedural tasks (paper Eq. 1-2).

x_sigma = (1 - sigma) x0 + sigma x1 with x0 an image in [-1, 1] and x1 Gaussian noise; the model regresses the
velocity v = x1 - x0, by default with the squared error weighted by sigma^2, i.e. the error of the implied clean
image (``loss_weighting``; "velocity" is SD3's plain MSE on v). sigma is logit-normal (SD3). Prompts are dropped (replaced by the empty
prompt) ``cfg_drop`` of the time so that classifier-free guidance works. Data: fresh items from every task's
``sample_items`` (never the test split) rendered into an in-memory pool, a slice of which is redrawn every
step, so that rendering never dominates. The shipped checkpoint is the EMA of the weights.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vgpo.embedded import GroundTruthWorld
from vgpo.errors import ConfigError
from vgpo.models.tiny import (
    MiniLMTextEncoder,
    TinyConfig,
    TinyFlowModel,
    glyph_ids,
    save_model,
    shared_text_encoder,
)
from vgpo.models.tiny_autoencoder import TinyAutoencoder
from vgpo.tasks.prompts import PromptItem


@dataclasses.dataclass
class PretrainConfig:
    """Settings of one pretraining run (the CLI's options)."""

    steps: int = 4000
    """Optimizer steps."""
    batch_size: int = 32
    """Images per step."""
    lr: float = 1e-3
    """Peak AdamW learning rate (linear warm-up, cosine decay to 10%)."""
    warmup_steps: int = 200
    """Linear learning-rate warm-up."""
    weight_decay: float = 0.01
    """AdamW weight decay."""
    ema_decay: float = 0.999
    """EMA decay of the weights (the shipped checkpoint is the EMA)."""
    cfg_drop: float = 0.1
    """Probability of replacing a prompt by the empty prompt (classifier-free guidance)."""
    sigma_mean: float = 0.0
    """sigma = sigmoid(sigma_mean + sigma_std * n), n ~ N(0, 1): SD3's logit-normal(0, 1). A run with (2, 1),
    favouring high noise, scored lower (0.11 vs 0.17 compositional accuracy, docs/embedded-model.md)."""
    sigma_std: float = 1.0
    """Scale of the logit-normal noise-level distribution (see ``sigma_mean``)."""
    loss_weighting: str = "x0"
    """"velocity": MSE on v (SD3). "x0": the v-error weighted by sigma^2, i.e. the MSE on the implied clean image
    (v - v_hat = (x0_hat - x0) / sigma, exactly so for sigma >= the model's ``sigma_floor``), which gives the
    high-noise steps, where the layout is decided, as much weight as the nearly clean ones; under "velocity" a
    sample at sigma = 0.1 weighs 100x one at sigma = 1."""
    pool_size: int = 3072
    """Rendered images kept in memory."""
    refresh_per_step: int = 8
    """Pool entries replaced by freshly drawn items each step."""
    seed: int = 0
    """Seeds model init, data and noise."""
    save_every: int = 250
    """Write the EMA checkpoint every this many steps (and at the end)."""
    log_every: int = 50
    """Print the loss every this many steps."""
    autoencoder_steps: int = 2000
    """Latent models (``TinyConfig.latent_channels``) trained from scratch: steps of the autoencoder's own training
    (stage 1, batch ``batch_size``, on the same data pool) before the flow model's ``steps``."""
    autoencoder_lr: float = 2e-3
    """Peak AdamW learning rate of the autoencoder (100 warm-up steps, cosine decay to 10%)."""


@dataclasses.dataclass
class PretrainRunSettings:
    """Where and from what a pretraining run starts (the ``run`` section of `vgpo pretrain`'s config)."""

    device: str = "cpu"
    """Torch device (cpu, cuda)."""
    threads: int | None = None
    """Torch CPU threads (None: torch's choice)."""
    tasks: list[str] = dataclasses.field(default_factory=lambda: ["compositional", "text"])
    """Tasks to draw data from, in equal shares per name given (repeat a name to weight it)."""
    init: str | None = None
    """Continue from this model folder's weights ("shipped": the shipped model); its architecture is used, so the
    ``model`` section must be left at its defaults."""


@dataclasses.dataclass
class PretrainCommandConfig:
    """Everything `vgpo pretrain` reads, as ``section.key=value`` overrides like `vgpo train`'s:
    ``train`` (:class:`PretrainConfig`), ``model`` (the architecture, :class:`TinyConfig`) and ``run``."""

    train: PretrainConfig = dataclasses.field(default_factory=PretrainConfig)
    model: TinyConfig = dataclasses.field(default_factory=TinyConfig)
    run: PretrainRunSettings = dataclasses.field(default_factory=PretrainRunSettings)

    def validate(self) -> PretrainCommandConfig:
        """Check the values no type says (raises ConfigError naming the key)."""
        for key in ("steps", "batch_size", "autoencoder_steps", "pool_size", "save_every", "log_every"):
            if getattr(self.train, key) < 1:
                raise ConfigError(f"train.{key} must be >= 1, got {getattr(self.train, key)}")
        check_loss_weighting(self.train.loss_weighting)
        if not self.run.tasks:
            raise ConfigError("run.tasks must name at least one task, e.g. run.tasks=[compositional,text]")
        if self.run.init is not None and self.model != TinyConfig():
            raise ConfigError(
                "run.init takes its architecture from the init model's config.json; drop the model.* settings "
                "(--num-layers, --patch-size, ...)"
            )
        return self


def load_pretrain_config(path: str | Path | None, overrides: list[str]) -> PretrainCommandConfig:
    """`vgpo pretrain`'s config: an optional YAML file of the three sections, then dotted overrides; validated."""
    from vgpo.config import dataclass_from_dict, merge_dicts, parse_overrides

    data: dict[str, Any] = {}
    if path is not None:
        file = Path(path)
        if not file.is_file():
            raise ConfigError(f"pretrain config file {str(path)!r} not found")
        import yaml

        data = yaml.safe_load(file.read_text()) or {}
    data = merge_dicts(data, parse_overrides(overrides))
    config: PretrainCommandConfig = dataclass_from_dict(PretrainCommandConfig, data)
    return config.validate()


class DataPool:
    """A pool of rendered (image, prompt encoding) pairs drawn from the tasks, partly redrawn each step."""

    def __init__(
        self, tasks: Sequence[GroundTruthWorld], encoder: MiniLMTextEncoder, config: TinyConfig, size: int, seed: int
    ) -> None:
        self.tasks = list(tasks)
        self.encoder = encoder
        self.config = config
        self.rng = np.random.default_rng(seed)
        side = config.image_size
        self.images = torch.zeros(size, 3, side, side)
        self.tokens = torch.zeros(size, config.max_text_tokens, config.text_dim)
        self.pooled = torch.zeros(size, config.text_dim)
        self.glyphs = torch.zeros(size, config.max_glyphs, dtype=torch.long)
        self.prompts: list[str] = [""] * size
        self._next = 0
        self.fill(size)

    def _draw(self, n: int) -> list[tuple[PromptItem, GroundTruthWorld]]:
        # Equal share per task, interleaved (one model for every embedded task).
        choice = self.rng.integers(0, len(self.tasks), size=n)
        drawn: list[tuple[PromptItem, GroundTruthWorld]] = []
        for index, task in enumerate(self.tasks):
            count = int((choice == index).sum())
            if count:
                drawn.extend((item, task) for item in task.sample_items(self.rng, count))
        return drawn

    def fill(self, n: int) -> None:
        """Replace the ``n`` oldest entries by fresh items."""
        drawn = self._draw(n)
        prompts = [item.prompt for item, _ in drawn]
        tokens, pooled = self.encoder(prompts)
        glyphs = glyph_ids(prompts, self.config.max_glyphs)
        for row, (item, task) in enumerate(drawn):
            image = task.render(item, self.rng)  # uint8 [H, W, 3]
            slot = self._next
            self._next = (self._next + 1) % len(self.prompts)
            self.images[slot] = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).float() / 127.5 - 1
            self.tokens[slot] = tokens[row]
            self.pooled[slot] = pooled[row]
            self.glyphs[slot] = glyphs[row]
            self.prompts[slot] = item.prompt

    def batch(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
        index = torch.randint(0, len(self.prompts), (n,), generator=generator)
        return self.images[index], self.tokens[index], self.pooled[index], self.glyphs[index]


AUTOENCODER_LATENT_NOISE = 0.1
"""Gaussian noise added to the latents while the autoencoder trains, relative to their standard deviation, so that
the decoder also turns nearby (slightly wrong) latents into clean images."""


def train_autoencoder(
    pool: DataPool,
    model_config: TinyConfig,
    config: PretrainConfig,
    generator: torch.Generator,
    *,
    device: str = "cpu",
    log: Callable[[str], None] = print,
) -> tuple[TinyAutoencoder, TinyConfig]:
    """Stage 1 of a latent model: train its autoencoder on the pool's images (L1 + squared error, latent noise
    :data:`AUTOENCODER_LATENT_NOISE`, a 1e-4 penalty on the latents' size), then measure the latents' mean and
    standard deviation over the pool; returns the autoencoder (frozen) and ``model_config`` with
    ``latent_shift`` / ``latent_scale`` set from them."""
    assert model_config.latent_channels is not None
    autoencoder = TinyAutoencoder(
        model_config.latent_channels, model_config.latent_downsample, model_config.autoencoder_width
    ).to(device)
    optimizer = torch.optim.AdamW(autoencoder.parameters(), lr=config.autoencoder_lr, weight_decay=0.0)
    schedule = dataclasses.replace(
        config,
        lr=config.autoencoder_lr,
        steps=config.autoencoder_steps,
        warmup_steps=min(100, config.autoencoder_steps),
    )
    loss_sum, loss_count = 0.0, 0
    for step in range(config.autoencoder_steps):
        if config.refresh_per_step:
            pool.fill(config.refresh_per_step)
        images = pool.batch(config.batch_size, generator)[0].to(device)
        latents = autoencoder.encode(images)
        noise = torch.randn(latents.shape, generator=generator).to(device)
        decoded = autoencoder.decode(latents + AUTOENCODER_LATENT_NOISE * latents.detach().std() * noise)
        error = decoded - images
        loss = error.abs().mean() + error.pow(2).mean() + 1e-4 * latents.pow(2).mean()
        for group in optimizer.param_groups:
            group["lr"] = _learning_rate(step, schedule)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_sum, loss_count = loss_sum + float(loss.detach()), loss_count + 1
        if (step + 1) % config.log_every == 0 or step + 1 == config.autoencoder_steps:
            log(f"autoencoder step {step + 1}/{config.autoencoder_steps} loss {loss_sum / loss_count:.4f}")
            loss_sum, loss_count = 0.0, 0
    autoencoder.eval().requires_grad_(False)
    with torch.no_grad():
        latents = torch.cat([autoencoder.encode(chunk.to(device)) for chunk in pool.images.split(256)])
    shift, std = float(latents.mean()), float(latents.std())
    log(f"autoencoder latents: mean {shift:.4f}, std {std:.4f} over the pool of {len(pool.images)} images")
    return autoencoder, dataclasses.replace(model_config, latent_shift=shift, latent_scale=1.0 / std)


LOSS_WEIGHTINGS = ("velocity", "x0")


def flow_matching_loss(
    prediction: torch.Tensor, target: torch.Tensor, sigma: torch.Tensor, weighting: str
) -> torch.Tensor:
    """Mean squared velocity error, per-sample weighted by ``weighting`` (see ``PretrainConfig.loss_weighting``)."""
    check_loss_weighting(weighting)
    if sigma.shape != prediction.shape[:1]:
        raise ValueError(f"sigma must have shape [N] = {tuple(prediction.shape[:1])}, got {tuple(sigma.shape)}")
    per_sample = (prediction - target).pow(2).flatten(1).mean(1)
    if weighting == "x0":
        per_sample = per_sample * sigma.to(per_sample.dtype).pow(2)
    return per_sample.mean()


def check_loss_weighting(weighting: str) -> None:
    """ConfigError unless ``weighting`` is one of :data:`LOSS_WEIGHTINGS`."""
    if weighting not in LOSS_WEIGHTINGS:
        raise ConfigError(f"loss_weighting (--loss-weighting) must be one of {LOSS_WEIGHTINGS}, got {weighting!r}")


def _learning_rate(step: int, config: PretrainConfig) -> float:
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return config.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def pretrain(
    out: str | Path,
    model_config: TinyConfig,
    config: PretrainConfig,
    tasks: Sequence[GroundTruthWorld],
    *,
    device: str = "cpu",
    encoder: MiniLMTextEncoder | None = None,
    init: TinyFlowModel | None = None,
    init_from: str | None = None,
    log: Callable[[str], None] = print,
) -> TinyFlowModel:
    """Train a :class:`TinyFlowModel` and write its EMA to ``out``; returns the EMA model.

    From scratch, or, with ``init``, from that model's weights (its config must equal ``model_config``): a
    continuation with a fresh optimizer, warm-up and schedule, whose EMA starts at ``init``; ``init_from``
    (where ``init`` came from) is recorded in config.json.
    """
    check_loss_weighting(config.loss_weighting)  # fail before the data pool is rendered
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    encoder = encoder or shared_text_encoder(model_config.max_text_tokens)
    started = time.perf_counter()
    pool = DataPool(tasks, encoder, model_config, config.pool_size, config.seed)
    log(f"rendered a pool of {config.pool_size} images in {time.perf_counter() - started:.1f}s")
    autoencoder = None
    if init is not None:
        if init.config != model_config:
            raise ConfigError(f"the init model's config {init.config} differs from the run's {model_config}")
    elif model_config.latent_channels is not None:
        autoencoder, model_config = train_autoencoder(pool, model_config, config, generator, device=device, log=log)
    model = TinyFlowModel(model_config)
    if init is not None:
        model.load_state_dict(init.state_dict())
    elif autoencoder is not None:
        assert model.autoencoder is not None
        model.autoencoder.load_state_dict(autoencoder.state_dict())
    model = model.to(device).train()
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.lr, betas=(0.9, 0.99), weight_decay=config.weight_decay)
    log(
        f"tiny model: {sum(p.numel() for p in trainable) / 1e6:.2f}M trainable parameters; "
        f"{json.dumps(dataclasses.asdict(model_config))}"
    )

    empty_tokens, empty_pooled = encoder([""])
    empty_tokens, empty_pooled = empty_tokens.to(device), empty_pooled.to(device)

    def write(step: int, loss_avg: float) -> None:
        extra: dict[str, Any] = {
            "pretrain": {
                **dataclasses.asdict(config),
                "completed_steps": step,
                "final_loss": loss_avg,
                "wall_seconds": round(time.perf_counter() - started, 1),
                "tasks": [task.name for task in tasks],
                "init": init_from,
            }
        }
        save_model(ema, out, extra=extra)

    loss_sum, loss_count, loss_avg = 0.0, 0, float("nan")
    flow_started = time.perf_counter()  # the ETA counts the flow model's steps only (not the autoencoder's)
    for step in range(config.steps):
        if config.refresh_per_step:
            pool.fill(config.refresh_per_step)
        images, tokens, pooled, glyphs = (t.to(device) for t in pool.batch(config.batch_size, generator))
        with torch.no_grad():
            images = model.to_latents(images)  # pixel space: the images themselves
        n = images.shape[0]
        # Classifier-free guidance: the empty prompt in place of the prompt for a fraction of the batch.
        drop = torch.rand(n, generator=generator) < config.cfg_drop
        drop_d = drop.to(device)
        tokens = torch.where(drop_d[:, None, None], empty_tokens, tokens)
        pooled = torch.where(drop_d[:, None], empty_pooled, pooled)
        glyphs = torch.where(drop_d[:, None], torch.zeros_like(glyphs), glyphs)
        # Eq. 1: x_sigma = (1 - sigma) x0 + sigma x1; Eq. 2: target v = x1 - x0. sigma ~ logit-normal.
        noise = torch.randn(images.shape, generator=generator).to(device)
        logit = config.sigma_mean + config.sigma_std * torch.randn(n, generator=generator)
        sigma = torch.sigmoid(logit).to(device)
        noisy = (1 - sigma[:, None, None, None]) * images + sigma[:, None, None, None] * noise
        prediction = model(noisy, sigma, tokens, pooled, glyphs)
        loss = flow_matching_loss(prediction, noise - images, sigma, config.loss_weighting)

        for group in optimizer.param_groups:
            group["lr"] = _learning_rate(step, config)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        decay = min(config.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for ema_param, param in zip(ema.parameters(), model.parameters(), strict=True):
                ema_param.lerp_(param, 1 - decay)

        loss_sum += float(loss.detach())
        loss_count += 1
        done = step + 1
        if done % config.log_every == 0 or done == config.steps:
            loss_avg = loss_sum / loss_count
            elapsed = time.perf_counter() - started
            eta = (time.perf_counter() - flow_started) / done * (config.steps - done)
            log(
                f"step {done}/{config.steps} loss {loss_avg:.4f} lr {_learning_rate(step, config):.2e} "
                f"elapsed {elapsed:.0f}s eta {eta:.0f}s"
            )
            loss_sum, loss_count = 0.0, 0
        if done % config.save_every == 0 or done == config.steps:
            write(done, loss_avg)
    log(f"done in {time.perf_counter() - started:.0f}s; EMA checkpoint in {out}")
    return ema
