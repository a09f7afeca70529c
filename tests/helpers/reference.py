"""One training window computed the way the authors' release orders its passes: a slow, plain
reference for the optimised `Fundus2VideoModule` (tests compare the two; benchmarks time both).

The release (`Michi-3000/Fundus2Video`, `models/pix2pixHD_model_tempo.py` `Pix2PixHDModel.forward`
and `train.py`'s window loop) runs one window as:

  1. fake = G(cat(CF, previous frames))
  2. D(cat(CF, fake).detach())   -> D_fake        (`discriminate`, use_pool: pool size 0)
  3. D(cat(CF, real))            -> D_real
  4. D(cat(CF, fake).detach() * KM) -> D_fake_km, D(cat(CF, real) * KM) -> D_real_km,
     D(cat(CF, fake) * KM)       -> G_GAN_km      (`MultiscaleDiscriminator.forward(x, tempo_map)`)
  5. D(cat(CF, fake))            -> G_GAN, then feature matching against step 3's features
  6. VGG19(fake), VGG19(real)    -> G_VGG (the real features detached)
  7. G's encoder on CF * KM, fake * KM and real * KM, all with autograd on (cycled to G's input
     channels: cat(x, x)) -> PatchNCE: keys projected with autograd then detached, queries at
     the keys' positions; again for the identity term (real keys, the fake's features projected
     a second time)
  8. gradient variance; train.py: G = weighted sum, D = 1/2 (real + fake) + 1/2 (km terms)
  9. G zero_grad, backward (its graph runs through D, whose weights collect gradients that step 10
     throws away), G step; D zero_grad, backward, D step.

So six discriminator calls, three encoder passes that all keep a graph, and the key projections
with a graph, where the module runs D once on the real and once on the fake (each batched with
its masked copy; the fake's output serving D's loss and G's adversarial terms), and encodes the
keys without a graph.

The mathematics is this project's, not the release's (docs/METHOD.md): the module's networks, loss
objects and weights; KBA's attention term; the projector trained with G; feature matching
against the *unmasked* real features (in the release step 4 reassigns `pred_real` to the masked
real's output, so its feature matching compares the fake with the masked real). PatchNCE is
written out here independently of `losses/patchnce.py` (same formula), so a change there is
checked against this. Patch positions come from `module.projector`'s sampling, drawn in the
module's order (CF keys layer by layer, then real keys): seeding the global RNG before each
formulation gives both the same patches.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.nn import functional as F

from fundus2video.losses.perceptual import VGG19Features

if TYPE_CHECKING:
    from fundus2video.module import Fundus2VideoModule

Outputs = list[list[torch.Tensor]]
WindowLosses = tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor], torch.Tensor, dict[str, torch.Tensor]]


# ------------------------------------------------------------------ helpers outside a Trainer
def write_random_vgg19(path: str | Path, seed: int = 0) -> Path:
    """Write a torchvision-format VGG19 `features.*` state dict with random He-scaled weights
    (activations keep their scale over 16 convs) to `path`, for `loss.vgg_weights` where the
    ImageNet weights cannot be downloaded: same cost and shapes, meaningless features."""
    g = torch.Generator().manual_seed(seed)
    vgg = VGG19Features()
    with torch.no_grad():
        for m in vgg.modules():
            if isinstance(m, nn.Conv2d):
                fan_in = m.in_channels * 9
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2.0 / fan_in) ** 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.01)
    path = Path(path)
    torch.save(vgg.state_dict(), path)
    return path


def standalone_optimizers(module: Fundus2VideoModule) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer,
                                                                 list[torch.optim.lr_scheduler.LRScheduler]]:
    """The module's own optimizers and schedulers (`configure_optimizers`), for use without a Trainer."""
    (opt_g, opt_d), schedulers = module.configure_optimizers()
    return opt_g, opt_d, [s["scheduler"] for s in schedulers]


@contextmanager
def outside_trainer(module: Fundus2VideoModule, opt_g: torch.optim.Optimizer, opt_d: torch.optim.Optimizer,
                    schedulers: Sequence[torch.optim.lr_scheduler.LRScheduler] = ()) -> Iterator[None]:
    """Within the block, the module's Trainer-bound calls work without a Trainer: `optimizers()`
    returns (opt_g, opt_d), `lr_schedulers()` the given schedulers, `manual_backward` is a plain
    backward and `log` / `log_dict` do nothing. So `_window_step` and `training_step` run as is."""
    patches = {"optimizers": lambda *a, **k: (opt_g, opt_d), "lr_schedulers": lambda: list(schedulers),
               "manual_backward": lambda loss, *a, **k: loss.backward(*a, **k),
               "log": lambda *a, **k: None, "log_dict": lambda *a, **k: None}
    for name, fn in patches.items():
        object.__setattr__(module, name, fn)  # an instance attribute shadows the method
    try:
        yield
    finally:
        for name in patches:
            module.__dict__.pop(name, None)


def module_window_step(module: Fundus2VideoModule, cf: torch.Tensor, prev: torch.Tensor, target: torch.Tensor,
                       km: torch.Tensor, opt_g: torch.optim.Optimizer, opt_d: torch.optim.Optimizer,
                       schedulers: Sequence[torch.optim.lr_scheduler.LRScheduler] = (),
                       ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The module's own training window (`_window_step`: forward, G step, D step) outside a
    Trainer. Returns the detached fake and the detached loss terms (with g_total, d_total)."""
    with outside_trainer(module, opt_g, opt_d, schedulers):
        return module._window_step(cf, prev, target, km)


# ------------------------------------------------------------------ the reference window
def _nce_layer(q: torch.Tensor, k: torch.Tensor, batch_size: int, temperature: float) -> torch.Tensor:
    """Mean PatchNCE loss of unit queries q against unit keys k (N, C), image-major rows: each
    query's positive is the key at its own row, its negatives the other keys of its image (CUT);
    written as -s_ii / T + logsumexp_j(s_ij / T) with the own slot counted once."""
    dim = q.shape[1]
    with torch.autocast(device_type=q.device.type, enabled=False):  # fp32, as the module
        q, k = q.float().view(batch_size, -1, dim), k.detach().float().view(batch_size, -1, dim)
        sim = torch.bmm(q, k.transpose(1, 2)) / temperature  # (B, P, P): query i against key j
        pos = torch.diagonal(sim, dim1=1, dim2=2)  # (B, P)
        # CUT keeps the own slot among the negatives with similarity -10: exp(-10 / T) in the denominator
        own = torch.eye(sim.shape[1], dtype=torch.bool, device=sim.device)
        logits = torch.cat([pos.unsqueeze(2), sim.masked_fill(own, -10.0 / temperature)], dim=2)
        return (torch.logsumexp(logits, dim=2) - pos).mean()


def _nce(module: Fundus2VideoModule, feat_k: list[torch.Tensor], feat_q: list[torch.Tensor]) -> torch.Tensor:
    """CUT's calculate_NCE_loss: keys projected (with autograd, as the release) at freshly sampled
    positions, queries at the same positions; averaged over layers."""
    w = module.cfg.loss
    keys, ids = module.projector(feat_k, w.nce_patches)
    queries, _ = module.projector(feat_q, w.nce_patches, patch_ids=ids)
    batch = feat_k[0].shape[0]
    return torch.stack([_nce_layer(q, k, batch, w.nce_temperature) for q, k in zip(queries, keys)]).mean()


def _cycle(x: torch.Tensor, channels: int) -> torch.Tensor:
    """x's channels repeated up to `channels` (channel i = x[:, i mod c]): the release's cat(x, x)."""
    return torch.cat([x[:, i % x.shape[1]:i % x.shape[1] + 1] for i in range(channels)], dim=1)


def release_window_losses(module: Fundus2VideoModule, cf: torch.Tensor, prev: torch.Tensor, target: torch.Tensor,
                          km: torch.Tensor) -> WindowLosses:
    """One window in the release's order of passes with this project's losses: (fake, g_total,
    g_parts, d_total, d_parts), the same terms and names as `module.window_losses`.

    cf (B, 3, H, W), prev and target (B, K, H, W), km (B, 1, H, W). Draws the PatchNCE patches
    from the global RNG in the module's order (seed it the same before each, to compare)."""
    w, mcfg = module.cfg.loss, module.cfg.model
    G, D = module.generator, module.discriminator
    kad = w.kad > 0
    fake, attention = G(torch.cat([cf, prev], dim=1), return_attention=True)
    real_in, fake_in = torch.cat([cf, target], dim=1), torch.cat([cf, fake], dim=1)

    # the discriminator, one call per input, in the release's order
    pred_fake_d = D(fake_in.detach())
    pred_real = D(real_in)
    if kad:
        pred_fake_d_km = D(fake_in.detach() * km)
        pred_real_km = D(real_in * km)
        pred_fake_km = D(fake_in * km)
    pred_fake = D(fake_in)

    d_parts = {"d_real": module.gan_loss(pred_real, True), "d_fake": module.gan_loss(pred_fake_d, False)}
    d_total = 0.5 * (d_parts["d_fake"] + d_parts["d_real"])
    if kad:
        d_parts["d_real_km"] = module.gan_loss(pred_real_km, True)
        d_parts["d_fake_km"] = module.gan_loss(pred_fake_d_km, False)
        d_total = d_total + 0.5 * (d_parts["d_fake_km"] + d_parts["d_real_km"])

    g_parts = {"g_gan": module.gan_loss(pred_fake, True)}
    if w.feat > 0:
        g_parts["g_feat"] = module.feat_loss(pred_fake, pred_real)  # the unmasked real (see the docstring)
    if w.vgg > 0:
        if module.vgg_loss is None:
            raise RuntimeError("loss.vgg > 0 but the VGG19 is not loaded: call module.setup('fit') first")
        vgg, weights = module.vgg_loss.vgg, module.vgg_loss.weights
        f, r = fake, target
        if fake.shape[1] != 3:  # frame by frame, grey as RGB (the module's rule for K != 3)
            f, r = (x.flatten(0, 1).unsqueeze(1).expand(-1, 3, -1, -1) for x in (fake, target))
        feats_f, feats_r = vgg(f), vgg(r)
        g_parts["g_vgg"] = sum(wi * F.l1_loss(a, b.detach()) for wi, a, b in zip(weights, feats_f, feats_r))
    if w.gv > 0:
        g_parts["g_gv"] = module.gv_loss(fake, target)
    if w.nce > 0:
        channels = cf.shape[1] + fake.shape[1]
        layers = list(w.nce_layers)
        feat_cf = G.encode(_cycle(cf * km, channels), layers)
        feat_fake = G.encode(_cycle(fake * km, channels), layers)
        feat_real = G.encode(_cycle(target * km, channels), layers)
        nce = _nce(module, feat_cf, feat_fake)
        if w.nce_identity:
            nce_idt = _nce(module, feat_real, feat_fake)
            g_parts["g_nce"] = (nce + nce_idt) / 2
            g_parts["g_nce_cf"], g_parts["g_nce_idt"] = nce.detach(), nce_idt.detach()
        else:
            g_parts["g_nce"] = nce
            g_parts["g_nce_cf"] = nce.detach()
    if kad:
        g_parts["g_gan_km"] = module.gan_loss(pred_fake_km, True)
    if w.att > 0 and len(mcfg.generator.kba_stages) > 0:
        g_parts["g_att"] = sum(F.binary_cross_entropy_with_logits(
            logit.float(), F.interpolate(km.float(), size=logit.shape[-2:], mode="area"))
            for logit in attention.values()) / len(attention)
    if w.l1 > 0:
        g_parts["g_l1"] = module.l1_loss(fake, target)

    weights = {"g_gan": w.gan, "g_feat": w.feat, "g_vgg": w.vgg, "g_gv": w.gv, "g_nce": w.nce,
               "g_gan_km": w.kad, "g_att": w.att, "g_l1": w.l1}
    g_total = sum(weights[name] * value for name, value in g_parts.items() if name in weights)
    return fake, g_total, g_parts, d_total, d_parts


def release_window_step(module: Fundus2VideoModule, cf: torch.Tensor, prev: torch.Tensor, target: torch.Tensor,
                        km: torch.Tensor, opt_g: torch.optim.Optimizer | None = None,
                        opt_d: torch.optim.Optimizer | None = None,
                        ) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """`release_window_losses`, then as train.py: G zero_grad, backward (through D, whose weights
    collect gradients too), step; D zero_grad, backward, step. opt_g / opt_d default to
    `module.optimizers()` (inside a Trainer); outside one pass `standalone_optimizers(module)`'s.
    No learning-rate schedule step. Returns the detached fake and the detached g and d terms
    (with g_total, d_total)."""
    if opt_g is None or opt_d is None:
        opt_g, opt_d = module.optimizers()
    fake, g_total, g_parts, d_total, d_parts = release_window_losses(module, cf, prev, target, km)
    opt_g.zero_grad(set_to_none=True)
    g_total.backward()
    opt_g.step()
    opt_d.zero_grad(set_to_none=True)
    d_total.backward()
    opt_d.step()
    detach = lambda d: {k: v.detach() for k, v in d.items()}  # noqa: E731
    return fake.detach(), detach({**g_parts, "g_total": g_total}), detach({**d_parts, "d_total": d_total})
