"""`Fundus2VideoModule`: the Fundus2Video GAN as a LightningModule with manual optimization.

One training batch is a set of whole videos. The module rolls them out window by window
(`rollout.py`); every window is its own forward, generator step and discriminator step, so
memory does not grow with the number of frames T (the method's memory-saving design).
The window's previous frames are detached: no gradient flows from one window into another.

Inside a window, as in the authors' release: both losses are computed against the same
discriminator, then G (with the PatchNCE projector) steps, then D steps. The terms
(docs/METHOD.md), each switched off by a zero weight:
  G = gan * G_GAN + feat * FM + vgg * VGG + gv * GV + nce * NCE (mask-enhanced, losses/patchnce.py)
      + kad * G_GAN_km (losses/kad.py) + att * KBA (losses/kba.py) (+ l1 * L1, not in the paper)
  D = 1/2 (D_real + D_fake) + 1/2 (D_real_km + D_fake_km)   (the km half when kad > 0)
"""

from __future__ import annotations

import contextlib
import random
import warnings
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.optim.lr_scheduler import LambdaLR
from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure

from fundus2video import distributed
from fundus2video.config import from_plain, loss_terms
from fundus2video.errors import ConfigError, UserError
from fundus2video.io import first_line
from fundus2video.losses import (
    FeatureMatchingLoss,
    GradientVarianceLoss,
    L1Loss,
    LSGANLoss,
    VGGLoss,
    load_vgg19,
)
from fundus2video.losses.kad import discriminator_terms
from fundus2video.losses.terms import Window, generator_terms, generator_weights
from fundus2video.networks.discriminator import KnowledgeAwareDiscriminator, build_discriminator
from fundus2video.networks.generator import build_generator, init_weights
from fundus2video.networks.projector import PatchProjector, probe_channels
from fundus2video.precision import ScalerAwareMixedPrecision
from fundus2video.rollout import cf_as_frames, frames_from, num_windows, real_share, rollout, scheduled_previous
from fundus2video.state_dicts import first_mismatch, not_finite

# 16-mixed divergence: the GradScaler halves its scale at every skipped step, so from its start of
# 2^16, 32 skips in a row leave 2^-16, below which fp16's gradients underflow to zero
SKIPPED_IN_A_ROW = 32
MIN_SCALE = 2.0 ** -16


class ConstantThenLinear:
    """Learning-rate factor at generator step s: 1 for `constant` steps, then linear to 0 over
    `decay` steps. A plain object (not a lambda) so LambdaLR saves its state in checkpoints."""

    def __init__(self, constant: int = 0, decay: int = 0):
        self.constant, self.decay = constant, decay

    def __call__(self, step: int) -> float:
        if step < self.constant:
            return 1.0
        if self.decay <= 0:
            return 0.0 if self.constant > 0 else 1.0
        return max(0.0, 1.0 - (step - self.constant) / self.decay)


def lr_scale(rule: str, world_size: int) -> float:
    """The factor `optim.lr_scaling` applies to optim.lr on `world_size` DDP processes."""
    return {"none": 1.0, "linear": float(world_size), "sqrt": world_size ** 0.5}[rule]


class Fundus2VideoModule(L.LightningModule):
    """Owns the generator G, the discriminator D, the losses and the optimizers.

    `config` is the experiment config as plain data (`config.to_plain`), so a checkpoint loads
    anywhere with `weights_only` loading: `Fundus2VideoModule.load_from_checkpoint(path)`.
    """

    def __init__(self, config: dict):
        super().__init__()
        self.save_hyperparameters({"config": config})
        self.cfg = cfg = from_plain(config)
        self.automatic_optimization = False
        k, g, d, w = cfg.model.window, cfg.model.generator, cfg.model.discriminator, cfg.loss
        # G sees the CF and the K previous frames; D sees the CF and K (real or fake) frames
        self.generator = build_generator(g.netg, 3 + k, k, ngf=g.ngf, n_downsample=g.n_downsample, n_blocks=g.n_blocks,
                                         n_blocks_local=g.n_blocks_local, padding=g.padding,
                                         kba_stages=list(g.kba_stages))
        self.discriminator = build_discriminator(3 + k, d.ndf, d.n_layers, d.num_d)
        self.judge = KnowledgeAwareDiscriminator(self.discriminator, knowledge_aware=w.kad > 0)
        if cfg.model.init == "normal":
            init_weights(self.generator)
            init_weights(self.discriminator)
        self.gan_loss = LSGANLoss()
        self.feat_loss = FeatureMatchingLoss(d.n_layers)
        self.gv_loss = GradientVarianceLoss(w.gv_patch)
        self.l1_loss = L1Loss()
        # the PatchNCE projector, built here from the channels of the compared generator layers
        self.projector = None
        if w.nce > 0:
            channels = probe_channels(self.generator.encode, 3 + k, list(w.nce_layers),
                                      size=2 ** (g.n_downsample + 3))
            if len(channels) != len(w.nce_layers):
                raise ConfigError(f"loss.nce_layers {list(w.nce_layers)}: the generator has fewer layers")
            self.projector = PatchProjector(channels, w.nce_dim)
        self.vgg_loss: VGGLoss | None = None  # a frozen training-only network: loaded in `setup`
        self.val_metrics = torch.nn.ModuleDict({
            "psnr": PeakSignalNoiseRatio(data_range=1.0),
            "ssim": StructuralSimilarityIndexMeasure(data_range=1.0),
            # trivial baseline: every frame = the CF's green channel
            "psnr_cf_green": PeakSignalNoiseRatio(data_range=1.0),
            "ssim_cf_green": StructuralSimilarityIndexMeasure(data_range=1.0),
        })
        self.video_step = 0  # training videos seen: the clock of scheduled sampling
        self.g_step = 0  # generator steps taken: the clock of the learning-rate schedule
        self._skipped_in_a_row = 0  # generator steps the GradScaler skipped in a row (16-mixed), by whole videos
        self.lr_factor = ConstantThenLinear()
        self._reduction: distributed.PerNetworkReduction | None = None  # under DDP, set in on_train_start

    def setup(self, stage: str) -> None:
        """Load the VGG19 of the perceptual loss for training (never stored in checkpoints); the speed
        switches `model.channels_last` and `model.compile`."""
        if stage == "fit" and self.cfg.loss.vgg > 0 and self.vgg_loss is None:
            self.vgg_loss = VGGLoss(load_vgg19(self.cfg.loss.vgg_weights)).to(self.device)
        if stage == "fit" and self.cfg.model.channels_last:
            for net in (self.generator, self.discriminator, self.vgg_loss):
                if net is not None:
                    net.to(memory_format=torch.channels_last)
        if stage == "fit" and self.cfg.model.compile:
            # in place: the parameters keep their names, so checkpoints load without compiling
            self.generator.compile()
            self.discriminator.compile()

    # ------------------------------------------------------------------ inference
    def forward(self, cf: torch.Tensor, n_frames: int) -> torch.Tensor:
        """Generate T frames for CF photos (B, 3, H, W) in [-1, 1] -> (B, T, 1, H, W)."""
        return rollout(self.generator, cf, n_frames, self.cfg.model.window)

    # ------------------------------------------------------------------ optimizers
    def configure_optimizers(self):
        o = self.cfg.optim
        betas = (o.beta1, o.beta2)
        # the projector trains with G (its own parameter group; Adam is per parameter, so this is
        # the same as a third optimizer with the same settings), unlike the release, where it
        # is zeroed right before its step and never changes
        groups = [{"params": self.generator.parameters()}]
        if self.projector is not None:
            groups.append({"params": self.projector.parameters()})
        lr = o.lr * lr_scale(o.lr_scaling, self.trainer.world_size if self._trainer is not None else 1)
        fused = {"fused": True} if o.fused is True or (o.fused == "auto" and self.device.type == "cuda") else {}
        opt_g = torch.optim.Adam(groups, lr=lr, betas=betas, **fused)
        opt_d = torch.optim.Adam(self.discriminator.parameters(), lr=lr, betas=betas, **fused)
        # both schedules advance once per generator step (see `_step_schedules`), never per
        # Lightning `global_step`, which counts the steps of both optimizers
        return ([opt_g, opt_d],
                [{"scheduler": LambdaLR(opt, self.lr_factor), "interval": "step"} for opt in (opt_g, opt_d)])

    def on_train_start(self) -> None:
        """Turn the epoch budget into generator steps: batches x windows per video."""
        dm = getattr(self.trainer, "datamodule", None)
        windows = (dm.windows_per_video() if hasattr(dm, "windows_per_video")
                   else num_windows(self.cfg.data.n_frames))
        per_epoch = max(1, round(self.trainer.num_training_batches * windows))
        self.lr_factor.constant = self.cfg.optim.epochs_constant * per_epoch
        self.lr_factor.decay = self.cfg.optim.epochs_decay * per_epoch
        if self.cfg.trainer.ddp_reduce == "per_network":  # a DDP wrapper only; else nothing to reduce
            self._reduction = distributed.install(self.trainer.strategy.model, {
                "generator": self._g_parameters(), "discriminator": self.discriminator.parameters()})

    def _backward_of(self, network: str) -> contextlib.AbstractContextManager:
        """Around `network`'s backward: under DDP with per-network reduction, only its gradients are reduced."""
        return self._reduction.backward_of(network) if self._reduction is not None else contextlib.nullcontext()

    def _step_schedules(self) -> None:
        self.g_step += 1
        with warnings.catch_warnings():
            # under 16-mixed a step the GradScaler skipped never called optimizer.step(), which torch warns
            # about here; that step is taken back at the video's end (`_account_skipped_steps`)
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)` before")
            for sched in self.lr_schedulers():
                sched.step()

    def _account_skipped_steps(self, steps: int) -> None:
        """Under 16-mixed, once per video: the generator steps the GradScaler skipped (inf or nan
        gradients) are not steps of the schedules, so the clock and both schedules go back by as many
        (`steps`: the generator steps this video took, skipped or not);
        and a run whose generator steps are all skipped, SKIPPED_IN_A_ROW of them in a row (counted
        over whole videos), or whose scale fell below MIN_SCALE, has diverged: it stops in one line."""
        plugin = getattr(self._trainer, "precision_plugin", None) if self._trainer is not None else None
        if not isinstance(plugin, ScalerAwareMixedPrecision) or plugin.scaler is None:
            return
        opt_g, opt_d = self.optimizers()
        (g_skipped, _), scale = plugin.take_skipped(opt_g.optimizer, opt_d.optimizer)
        self.g_step -= g_skipped
        if g_skipped:
            for sched in self.lr_schedulers():  # LambdaLR.step() sets the lr of last_epoch + 1
                sched.last_epoch = self.g_step - 1
                sched.step()
        self._skipped_in_a_row = self._skipped_in_a_row + g_skipped if g_skipped == steps else 0
        if self._skipped_in_a_row >= SKIPPED_IN_A_ROW or scale < MIN_SCALE:
            raise UserError(f"training diverged under 16-mixed: after {self.video_step} training videos the "
                            f"GradScaler skipped the last {self._skipped_in_a_row} generator steps (inf or nan "
                            f"gradients; scale {scale:.3g}); checkpoints written before it are kept; lower optim.lr "
                            "or train with trainer.precision=bf16-mixed or 32")

    # ------------------------------------------------------------------ losses
    def _mask(self, batch: dict) -> torch.Tensor:
        """The guiding mask of `model.mask_source`: (B, 1, H, W), or with `model.km_sign=signed`
        (B, 2, H, W), where the real video brightens (first to last frame) and where it darkens."""
        source = self.cfg.model.mask_source
        if source == "none":
            return torch.ones_like(batch["km"])
        mask = batch["lesion"] if source == "lesion" else batch["km"]
        if self.cfg.model.km_sign == "signed":
            frames = batch["frames"]
            brighter = (frames[:, -1] > frames[:, 0]).to(mask.dtype)  # (B, 1, H, W)
            mask = torch.cat([mask * brighter, mask * (1 - brighter)], dim=1)
        return mask

    # ------------------------------------------------------------------ training
    def window_losses(self, cf, prev, target, km, nce_rng: torch.Generator | None = None):
        """One window's forward: the fake (B, K, H, W) and both losses, (fake, g_total, g_parts,
        d_total, d_parts), computed against the same discriminator.

        `loss.d_pass`: with `separate` (the default) D judges the detached fake a second time for its
        own loss, as the release does; with `shared` D judges the fake once, and that output serves
        G's adversarial terms and D's loss alike (`_window_step` then restricts each backward to its
        own network). Both give the same gradients (tests/test_reference.py)."""
        w = self.cfg.loss
        fake, attention = self.generator(torch.cat([cf, prev], dim=1), return_attention=True)
        real_in, fake_in = torch.cat([cf, target], dim=1), torch.cat([cf, fake], dim=1)
        pred_real, pred_real_km = self.judge(real_in, km)
        pred_fake, pred_fake_km = self.judge(fake_in, km)

        # G: a weighted sum of the registered terms (losses/terms.py), in the config's order.
        # KBA's target and PatchNCE's mask are unsigned: the signed mask splits only the KAD's views
        want_att = w.att > 0 and len(self.cfg.model.generator.kba_stages) > 0
        window = Window(self, w, cf, fake, target, km.amax(dim=1, keepdim=True) if km.shape[1] > 1 else km,
                        pred_fake, pred_real, pred_fake_km, attention if want_att else None, nce_rng)
        g_parts = generator_terms(window, loss_terms())
        weights = generator_weights(w, loss_terms())
        g_total = sum(weights[name] * term for name, term in g_parts.items() if name in weights)

        # D: real judged real, fake judged fake (and the same on the masked inputs with KAD)
        if w.d_pass == "separate":
            pred_fake, pred_fake_km = self.judge(fake_in.detach(), km)
        d_total, d_parts = discriminator_terms(pred_real, pred_fake, pred_real_km, pred_fake_km)
        return fake, g_total, g_parts, d_total, d_parts

    def _window_step(self, cf, prev, target, km, nce_rng: torch.Generator | None = None, weight: float = 1.0
                     ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """One window: forward, G step, D step. Returns the detached fake and the terms. `weight` 0
        runs the window for its collectives only (`_agreed_windows`): its gradients are zeros."""
        opt_g, opt_d = self.optimizers()
        fake, g_total, g_parts, d_total, d_parts = self.window_losses(cf, prev, target, km, nce_rng)
        if weight != 1.0:
            g_total, d_total = g_total * weight, d_total * weight
        opt_g.zero_grad(set_to_none=True)
        with self._backward_of("generator"):
            if self.cfg.loss.d_pass == "shared":
                # G's loss to G and the projector alone; D's graph on the fake must outlive this backward,
                # D's loss goes through it next
                self.manual_backward(g_total, inputs=self._g_parameters(), retain_graph=True)
            else:
                # as the release: the adversarial terms also leave gradients in D, cleared before D's backward
                self.manual_backward(g_total)
        opt_g.step()
        opt_d.zero_grad(set_to_none=True)
        # D's loss reaches D's parameters only (not back through the fake into G, which just stepped)
        with self._backward_of("discriminator"):
            self.manual_backward(d_total, inputs=list(self.discriminator.parameters()))
        opt_d.step()
        # counted as a step of the schedules; under 16-mixed the steps the GradScaler skipped are taken
        # back at the video's end (`_account_skipped_steps`)
        self._step_schedules()
        parts = {**g_parts, **d_parts, "g_total": g_total, "d_total": d_total}
        return fake.detach(), {k: v.detach() for k, v in parts.items()}

    def _g_parameters(self) -> list[torch.nn.Parameter]:
        return [*self.generator.parameters(), *(self.projector.parameters() if self.projector is not None else ())]

    def _video_rngs(self) -> tuple[torch.Generator, random.Random]:
        """The random sources of one training video, (PatchNCE's patch sampling, scheduled
        sampling), seeded by (seed, videos seen, rank) alone: a resumed run draws exactly what an
        uninterrupted one would have, and nothing reseeds the global generators."""
        torch_seed, py_seed = np.random.SeedSequence([self.cfg.seed, self.video_step, self.global_rank]
                                                     ).generate_state(2)
        return torch.Generator(device=self.device).manual_seed(int(torch_seed)), random.Random(int(py_seed))

    def _agreed_windows(self, windows: int) -> int:
        """The windows every DDP rank runs for this step: the most any rank's video needs. Each window
        is a G and a D backward, each with its gradient all-reduce, so ranks whose videos have
        different lengths (manifest frame draws, short videos) would otherwise pair one window's
        collectives with another's, or wait forever for a window the other never runs. A rank with a
        shorter video runs its last window again at weight 0 (zero gradients: the averaged step is the
        other ranks' data, and every rank applies the same one). One all-reduce of one integer per video."""
        trainer = self._trainer
        if trainer is None or trainer.world_size <= 1 or not torch.distributed.is_initialized():
            return windows
        agreed = torch.tensor([windows], device=self.device, dtype=torch.int64)
        torch.distributed.all_reduce(agreed, op=torch.distributed.ReduceOp.MAX)
        return int(agreed.item())

    def training_step(self, batch: dict, batch_idx: int) -> None:
        cf, video = batch["cf"], batch["frames"][:, :, 0]  # (B, 3, H, W), (B, T, H, W)
        km = self._mask(batch)  # (B, 1, H, W)
        n_frames, k = video.shape[1], self.cfg.model.window
        p_real = real_share(self.video_step, self.cfg.rollout.ss_steps, self.cfg.rollout.ss_interval)
        nce_rng, ss_rng = self._video_rngs()
        sums: dict[str, torch.Tensor] = {}
        prev = cf_as_frames(cf, k)
        windows = num_windows(n_frames)
        g_step_before = self.g_step
        prev_in, target = prev, frames_from(video, 0, k)
        for n in range(self._agreed_windows(windows)):
            if n >= windows:  # another rank's video is longer: this window pairs its collectives, learns nothing
                self._window_step(cf, prev_in, target, km, nce_rng, weight=0.0)
                continue
            prev_in = scheduled_previous(n, prev, video, p_real, ss_rng)
            target = frames_from(video, n, k)
            prev, parts = self._window_step(cf, prev_in, target, km, nce_rng)
            for name, value in parts.items():
                sums[name] = sums.get(name, 0.0) + value
        self.video_step += 1
        self._account_skipped_steps(self.g_step - g_step_before)
        logs = {f"train/{name}": value / windows for name, value in sums.items()}
        # one host sync per video (not per window): weights gone NaN would train, and be saved, as if nothing
        # had happened. Under 16-mixed an infinite window loss is the GradScaler's to skip, not divergence.
        totals = torch.stack([logs["train/g_total"], logs["train/d_total"]])
        if self.cfg.trainer.precision != "16-mixed" and not bool(torch.isfinite(totals).all()):
            raise UserError(f"training diverged: after {self.video_step} training videos the losses are g_total = "
                            f"{float(totals[0]):.4g}, d_total = {float(totals[1]):.4g} (optim.lr={self.cfg.optim.lr}); "
                            "checkpoints written before it are kept; lower optim.lr or a loss weight")
        logs.update({"train/lr": self.optimizers()[0].param_groups[0]["lr"], "train/real_share": p_real,
                     "train/g_step": float(self.g_step)})
        self.log_dict(logs, on_step=True, on_epoch=False, batch_size=cf.shape[0])
        self.log_dict({"g": logs["train/g_total"], "d": logs["train/d_total"]}, prog_bar=True,
                      logger=False, on_step=True, batch_size=cf.shape[0])

    # ------------------------------------------------------------------ validation
    def validation_step(self, batch: dict, batch_idx: int) -> dict:
        cf, frames = batch["cf"], batch["frames"]
        fake = self(cf, frames.shape[1])  # (B, T, 1, H, W)
        self.update_val_metrics(cf, frames, fake)
        # logged as Metric objects: Lightning computes them at the epoch's end, synchronised across
        # DDP ranks, and resets them
        self.log_dict({f"val/{name}": metric for name, metric in self.val_metrics.items()}, on_step=False,
                      on_epoch=True, batch_size=cf.shape[0])
        return {"fake": fake}

    def update_val_metrics(self, cf: torch.Tensor, frames: torch.Tensor, fake: torch.Tensor) -> None:
        """Validation scores in float32 whatever the training precision: under a mixed-precision
        autocast SSIM's convolutions would run in bf16/fp16 and the scores shift with the precision."""
        with torch.autocast(device_type=cf.device.type, enabled=False):
            real01 = (frames.float() + 1) / 2
            fake01 = (fake.float() + 1) / 2
            base01 = ((cf[:, 1:2].float() + 1) / 2).unsqueeze(1).expand_as(real01)
            flat = lambda x: x.flatten(0, 1)  # noqa: E731  (B, T, 1, H, W) -> (B*T, 1, H, W)
            for name, metric in self.val_metrics.items():
                metric.update(flat(base01 if name.endswith("cf_green") else fake01), flat(real01))

    # ------------------------------------------------------------------ checkpoint state
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["fundus2video"] = {"video_step": self.video_step, "g_step": self.g_step}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint.get("fundus2video", {})
        self.video_step = int(state.get("video_step", 0))
        self.g_step = int(state.get("g_step", 0))


def load_checkpoint_module(ckpt: Path, device: str = "cpu") -> Fundus2VideoModule:
    """The LightningModule of a fundus2video `.ckpt`, in eval mode; a file that is not one fails in
    one line naming it. (Any source, folders and URLs too: `hub.load_module`.)"""
    import pickle

    if not ckpt.is_file():
        raise UserError(f"checkpoint not found: {ckpt}")
    _precheck(ckpt)
    try:
        with warnings.catch_warnings():  # a tensor file indexed by Lightning's migration warns before it fails
            warnings.filterwarnings("ignore", message="Using a non-tuple sequence for multidimensional indexing")
            return Fundus2VideoModule.load_from_checkpoint(ckpt, map_location=device, weights_only=True).eval()
    # a foreign file fails inside Lightning in many ways (a tensor or a list where a dict belongs, ...)
    except (pickle.UnpicklingError, RuntimeError, KeyError, EOFError, IndexError, TypeError, AttributeError,
            ValueError) as err:
        raise UserError(f"{ckpt}: not a fundus2video checkpoint ({first_line(err)})") from None


def _precheck(ckpt: Path) -> None:
    """Before Lightning builds anything from a checkpoint's hyperparameters: its networks built on the
    meta device against the file's weights (a configuration asking for a huge network allocates
    nothing, and a mismatch names its key), and every weight finite. Files torch cannot map are left
    to the loader's own one-line error."""
    try:
        data = torch.load(ckpt, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - legacy or foreign formats: load_from_checkpoint says what they are
        return
    hparams = data.get("hyper_parameters") if isinstance(data, dict) else None
    state = data.get("state_dict") if isinstance(data, dict) else None
    if not isinstance(hparams, dict) or not isinstance(hparams.get("config"), dict) or not isinstance(state, dict):
        raise UserError(f"{ckpt}: not a fundus2video checkpoint (no hyper_parameters.config and state_dict)")
    try:
        with torch.device("meta"):
            skeleton = Fundus2VideoModule(hparams["config"])
    except UserError as err:
        raise UserError(f"{ckpt}: its configuration is not valid ({first_line(err)})") from None
    except (TypeError, ValueError, RuntimeError, KeyError) as err:
        raise UserError(f"{ckpt}: not a fundus2video checkpoint ({first_line(err)})") from None
    if (mismatch := first_mismatch(skeleton.state_dict(), state)) is not None:
        raise UserError(f"{ckpt}: its weights do not fit its configuration: {mismatch}")
    if (bad := not_finite(state)) is not None:
        raise UserError(f"{ckpt}: {bad}")
