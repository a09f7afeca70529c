"""`Fundus2VideoModule`: the Fundus2Video GAN as a LightningModule with manual optimization.

One training batch is a set of whole videos. The module rolls them out window by window
(`rollout.py`); every window is its own forward, generator step and discriminator step, so
memory does not grow with the number of frames T (the method's memory-saving design).
The window's previous frames are detached: no gradient flows from one window into another.

Order inside a window follows the authors' release: both losses are computed against the
same discriminator, then G (with the PatchNCE projector) steps, then D steps (D on the
detached fake). Loss terms (METHOD.md), each switched off by a zero weight:
  G = gan * G_GAN + feat * FM + vgg * VGG + gv * GV + nce * NCE + gan_km * G_GAN_km
      + att * KBA-BCE (+ l1 * L1, not in the paper)
  D = 1/2 (D_real + D_fake) + 1/2 (D_real_km + D_fake_km)   (the km terms when gan_km > 0)
"""

from __future__ import annotations

import random

import lightning as L
import numpy as np
import torch
from torch.nn import functional as F
from torch.optim.lr_scheduler import LambdaLR
from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure

from fundus2video.config import from_plain
from fundus2video.errors import ConfigError
from fundus2video.losses import (
    FeatureMatchingLoss,
    GradientVarianceLoss,
    L1Loss,
    LSGANLoss,
    VGGLoss,
    load_vgg19,
    mask_enhanced_nce,
)
from fundus2video.networks import MultiscaleDiscriminator
from fundus2video.networks.generator import GlobalGenerator, LocalEnhancer, init_weights
from fundus2video.networks.projector import PatchProjector, probe_channels
from fundus2video.rollout import (
    cf_as_frames,
    num_windows,
    previous_indices,
    real_share,
    rollout,
    target_indices,
)


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


class _ValueWithGradientOf(torch.autograd.Function):
    """`value` forward; backward, the incoming gradient goes to `value` and to `carrier` alike: the
    gradient of value + carrier - carrier.detach(), without the carrier's value in the result (an
    overflowing fp16 gradient makes the carrier inf, and the logged loss must not become nan)."""

    @staticmethod
    def forward(ctx, value: torch.Tensor, carrier: torch.Tensor) -> torch.Tensor:
        return value.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return grad, grad


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
        if g.netg == "local":
            self.generator = LocalEnhancer(3 + k, k, g.ngf, g.n_downsample, g.n_blocks, g.n_blocks_local,
                                           g.padding, list(g.kba_stages))
        else:
            self.generator = GlobalGenerator(3 + k, k, g.ngf, g.n_downsample, g.n_blocks, g.padding,
                                             list(g.kba_stages))
        self.discriminator = MultiscaleDiscriminator(3 + k, d.ndf, d.n_layers, d.num_d)
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
        self.lr_factor = ConstantThenLinear()

    def setup(self, stage: str) -> None:
        """Load the VGG19 of the perceptual loss for training (never stored in checkpoints)."""
        if stage == "fit" and self.cfg.loss.vgg > 0 and self.vgg_loss is None:
            self.vgg_loss = VGGLoss(load_vgg19(self.cfg.loss.vgg_weights)).to(self.device)

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
        opt_g = torch.optim.Adam(groups, lr=o.lr, betas=betas)
        opt_d = torch.optim.Adam(self.discriminator.parameters(), lr=o.lr, betas=betas)
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

    def _step_schedules(self) -> None:
        self.g_step += 1
        for sched in self.lr_schedulers():
            sched.step()

    # ------------------------------------------------------------------ losses
    def _mask(self, batch: dict) -> torch.Tensor:
        """The guiding mask (B, 1, H, W) of `model.mask_source`."""
        source = self.cfg.model.mask_source
        if source == "none":
            return torch.ones_like(batch["km"])
        return batch["lesion"] if source == "lesion" else batch["km"]

    def _d_losses(self, pred_real, pred_fake, pred_real_km=None, pred_fake_km=None):
        """D: 1/2 (LSGAN(real, 1) + LSGAN(fake, 0)) [+ 1/2 (the same on masked inputs)]."""
        parts = {"d_real": self.gan_loss(pred_real, True), "d_fake": self.gan_loss(pred_fake, False)}
        total = 0.5 * (parts["d_real"] + parts["d_fake"])
        if pred_real_km is not None:
            parts["d_real_km"] = self.gan_loss(pred_real_km, True)
            parts["d_fake_km"] = self.gan_loss(pred_fake_km, False)
            total = total + 0.5 * (parts["d_real_km"] + parts["d_fake_km"])
        return total, parts

    def _vgg(self, fake: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """K = 3 frames go into VGG as the three colour channels, as in the release; other K
        frame by frame (grey repeated to RGB), averaged."""
        if self.vgg_loss is None:
            raise ConfigError("loss.vgg > 0 but the VGG19 is not loaded: it loads in setup('fit') from "
                              "loss.vgg_weights (outside a Trainer, call module.setup('fit') first)")
        if fake.shape[1] == 3:
            return self.vgg_loss(fake, target)
        fold = lambda x: x.flatten(0, 1).unsqueeze(1).expand(-1, 3, -1, -1)  # noqa: E731  (B*K, 3, H, W)
        return self.vgg_loss(fold(fake), fold(target))

    def _g_losses(self, cf, fake, target, km, pred_fake, pred_real, pred_fake_km=None, attention=None):
        """G's enabled terms, unweighted (weights: `_g_weights`)."""
        w = self.cfg.loss
        parts = {"g_gan": self.gan_loss(pred_fake, True)}
        if w.feat > 0:
            parts["g_feat"] = self.feat_loss(pred_fake, pred_real)
        if w.vgg > 0:
            parts["g_vgg"] = self._vgg(fake, target)
        if w.gv > 0:
            parts["g_gv"] = self.gv_loss(fake, target)
        if w.nce > 0:
            parts["g_nce"], nce_parts = mask_enhanced_nce(
                self.generator.encode, self.projector, cf, fake, target, km, list(w.nce_layers),
                w.nce_patches, w.nce_temperature, identity=w.nce_identity, in_channels=cf.shape[1] + fake.shape[1])
            # logged only: the CF -> fake term and the identity (real -> fake) term
            parts.update({{"nce": "g_nce_cf", "nce_idt": "g_nce_idt"}[k]: v.detach() for k, v in nce_parts.items()})
        if pred_fake_km is not None:
            parts["g_gan_km"] = self.gan_loss(pred_fake_km, True)
        if attention:
            # KBA: each stage's attention toward the mask at that stage's size (area-resized)
            parts["g_att"] = sum(F.binary_cross_entropy_with_logits(
                logit.float(), F.interpolate(km.float(), size=logit.shape[-2:], mode="area"))
                for logit in attention.values()) / len(attention)
        if w.l1 > 0:
            parts["g_l1"] = self.l1_loss(fake, target)
        return parts

    def _g_weights(self) -> dict[str, float]:
        w = self.cfg.loss
        return {"g_gan": w.gan, "g_feat": w.feat, "g_vgg": w.vgg, "g_gv": w.gv, "g_nce": w.nce,
                "g_gan_km": w.gan_km, "g_att": w.att, "g_l1": w.l1}

    # ------------------------------------------------------------------ training
    def _discriminate(self, *inputs: torch.Tensor) -> list[list[list[torch.Tensor]]]:
        """D on several inputs in one batched call (D is per-sample: instance norm, convs), split
        back into one output per input."""
        n = inputs[0].shape[0]
        outs = self.discriminator(torch.cat(inputs, dim=0))
        return [[[f[i * n:(i + 1) * n] for f in scale] for scale in outs] for i in range(len(inputs))]

    def _loss_scale(self) -> float:
        """The GradScaler's current scale under 16-mixed (1 otherwise, and outside a Trainer)."""
        scaler = getattr(self._trainer.precision_plugin, "scaler", None) if self._trainer is not None else None
        return scaler.get_scale() if scaler is not None and scaler.is_enabled() else 1.0

    def window_losses(self, cf, prev, target, km):
        """One window's forward: the fake (B, K, H, W) and both losses, (g_total, g_parts,
        d_total, d_parts), all computed against the same discriminator.

        D runs once on real and once on fake (each batched with its masked copy when the
        knowledge-aware terms are on): its output on the fake serves D's loss and G's adversarial
        terms alike. D sees the fake through a detached leaf, so D's loss reaches D alone; G's
        adversarial terms (GAN, feature matching, GAN_km) are differentiated to that leaf here
        (`autograd.grad`: D's input gradients only, no weight gradients), and `g_total` carries
        them back into G as the linear term <fake, dL_adv/dfake>, the chain rule's own step: so
        `g_total.backward()` gives G the gradients of the straightforward formulation
        (tests/test_reference.py) and never touches D. `g_total`'s value is the sum of the terms.
        (Without autograd, or with G frozen, the terms are plainly summed.)"""
        w = self.cfg.loss
        want_att = w.att > 0 and len(self.cfg.model.generator.kba_stages) > 0
        kad = w.gan_km > 0  # knowledge-aware D: the same D on inputs multiplied by the mask
        fake, attention = self.generator(torch.cat([cf, prev], dim=1), return_attention=True)
        real_in, fake_in = torch.cat([cf, target], dim=1), torch.cat([cf, fake], dim=1)
        fake_leaf = fake_in.detach().requires_grad_(fake_in.requires_grad)
        # real and fake in separate calls: a batched call's input gradient would span the real half too
        pred_real, *real_km = self._discriminate(real_in, *((real_in * km,) if kad else ()))
        pred_fake, *fake_km = self._discriminate(fake_leaf, *((fake_leaf * km,) if kad else ()))
        g_parts = self._g_losses(cf, fake, target, km, pred_fake, pred_real, fake_km[0] if kad else None,
                                 attention if want_att else None)
        weights, adv_names = self._g_weights(), ("g_gan", "g_feat", "g_gan_km")
        adv = sum(weights[n] * v for n, v in g_parts.items() if n in adv_names)
        rest = sum(weights[n] * v for n, v in g_parts.items() if n in weights and n not in adv_names)
        g_total = rest + adv
        if not any(weights[n] for n in adv_names):  # no adversarial gradient to carry: G's loss stays off D
            g_total = rest + adv.detach()
        elif fake_leaf.requires_grad and torch.is_grad_enabled():
            # the scale the backward of g_total will use (the scaler updates only after the steps):
            # fp16 gradients through D must not underflow here either
            scale = self._loss_scale()
            (grad,) = torch.autograd.grad(adv * scale, fake_leaf, retain_graph=True)  # D's graph serves D's loss
            link = (fake_in.float() * (grad.float() / scale)).sum()
            g_total = _ValueWithGradientOf.apply(rest + adv.detach(), link)
        d_total, d_parts = self._d_losses(pred_real, pred_fake, *real_km, *fake_km)
        return fake, g_total, g_parts, d_total, d_parts

    def _window_step(self, cf, prev, target, km) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """One window: forward, G step, D step. Returns the detached fake and the terms."""
        opt_g, opt_d = self.optimizers()
        fake, g_total, g_parts, d_total, d_parts = self.window_losses(cf, prev, target, km)
        opt_g.zero_grad(set_to_none=True)
        self.manual_backward(g_total)
        opt_g.step()
        opt_d.zero_grad(set_to_none=True)
        # D's parameters only: the fake's leaf needs no gradient
        self.manual_backward(d_total, inputs=list(self.discriminator.parameters()))
        opt_d.step()
        self._step_schedules()
        parts = {**g_parts, **d_parts, "g_total": g_total, "d_total": d_total}
        return fake.detach(), {k: v.detach() for k, v in parts.items()}

    def _seed_video(self) -> random.Random:
        """The random draws of one training video (scheduled sampling, PatchNCE patches) as a function
        of (seed, videos seen, rank) alone, so that a resumed run draws exactly what an uninterrupted
        one would have: Lightning does not restore random states from checkpoints."""
        key = [self.cfg.seed, self.video_step, self.global_rank]
        torch_seed, py_seed = np.random.SeedSequence(key).generate_state(2)
        torch.manual_seed(int(torch_seed))
        return random.Random(int(py_seed))

    def training_step(self, batch: dict, batch_idx: int) -> None:
        cf, video = batch["cf"], batch["frames"][:, :, 0]  # (B, 3, H, W), (B, T, H, W)
        km = self._mask(batch)  # (B, 1, H, W)
        n_frames, k = video.shape[1], self.cfg.model.window
        p_real = real_share(self.video_step, self.cfg.rollout.ss_steps, self.cfg.rollout.ss_interval)
        rng = self._seed_video()
        sums: dict[str, torch.Tensor] = {}
        prev = cf_as_frames(cf, k)
        for n in range(num_windows(n_frames)):
            if n > 0 and rng.random() < p_real:
                prev = video[:, previous_indices(n, n_frames, k)]
            target = video[:, target_indices(n, n_frames, k)]
            prev, parts = self._window_step(cf, prev, target, km)
            for name, value in parts.items():
                sums[name] = sums.get(name, 0.0) + value
        self.video_step += 1
        logs = {f"train/{name}": value / num_windows(n_frames) for name, value in sums.items()}
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
