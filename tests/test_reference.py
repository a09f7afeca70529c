"""The module's training window against `tests/helpers/reference.py` (the release's order of passes,
our losses): the same terms, gradients and parameters over two windows' steps, with every loss
term on (the VGG19 with random weights).

This guards optimisations of `module.window_losses` / `_window_step` and of the PatchNCE code:
whatever their order of passes, the mathematics must stay that of the plain formulation."""

from __future__ import annotations

import copy

import pytest
import torch
from helpers.reference import (
    module_window_step,
    outside_trainer,
    release_window_losses,
    release_window_step,
    standalone_optimizers,
    write_random_vgg19,
)

from fundus2video.config import loss_terms, to_plain
from fundus2video.losses.terms import generator_weights
from fundus2video.module import Fundus2VideoModule

# every term of the method, plus the VGG19 (random weights) and the L1 of the smoke config
FULL = ["model.generator.kba_stages=[bottleneck]", "loss.att=1", "loss.kad=1", "loss.nce=1", "loss.gv=5",
        "loss.vgg=10", "loss.feat=10", "loss.gan=2", "loss.l1=20", "model.init=normal",
        "loss.nce_layers=[0,4,8,12,16]"]
G_TERMS = {"g_gan", "g_feat", "g_vgg", "g_gv", "g_nce", "g_nce_cf", "g_nce_idt", "g_gan_km", "g_att", "g_l1"}
D_TERMS = {"d_real", "d_fake", "d_real_km", "d_fake_km"}
SEED = 1234  # the global RNG state both formulations start from (PatchNCE's patch sampling)


@pytest.fixture(scope="module")
def vgg_path(tmp_path_factory):
    return write_random_vgg19(tmp_path_factory.mktemp("vgg") / "vgg19-random.pth")


@pytest.fixture
def make_module(tiny, vgg_path):
    def make(*overrides: str) -> Fundus2VideoModule:
        torch.manual_seed(0)
        module = Fundus2VideoModule(to_plain(tiny(*FULL, f"loss.vgg_weights={vgg_path}", *overrides)))
        module.setup("fit")
        return module
    return make


def _inputs(batch: int = 1, s: int = 32, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    cf, prev, target = (torch.rand(batch, 3, s, s, generator=g) * 2 - 1 for _ in range(3))
    km = torch.zeros(batch, 1, s, s)
    km[..., 8:20, 10:24] = 1
    km[..., 22:28, 4:9] = 1
    return cf, prev, target, km


def _assert_terms(ours: dict, ref: dict, names: set[str], rtol: float, atol: float) -> None:
    assert set(ours) == set(ref) == names
    for name in sorted(names):
        torch.testing.assert_close(ours[name], ref[name], rtol=rtol, atol=atol, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize(("patches", "batch"), [("sampled", 1), ("all", 2)])
def test_window_losses_equal_the_release_order(make_module, patches, batch):
    # "all": every position of every layer, no random draw at all (independent of the RNG's use);
    # a batch of 2 checks that PatchNCE's negatives stay within each image
    module = make_module(*(["loss.nce_patches=0"] if patches == "all" else []))
    inputs = _inputs(batch)
    torch.manual_seed(SEED)
    fake, g_total, g_parts, d_total, d_parts = module.window_losses(*inputs)
    torch.manual_seed(SEED)
    r_fake, r_g_total, r_g_parts, r_d_total, r_d_parts = release_window_losses(module, *inputs)
    torch.testing.assert_close(fake, r_fake, rtol=1e-5, atol=1e-6)
    _assert_terms(g_parts, r_g_parts, G_TERMS, rtol=1e-5, atol=1e-6)
    _assert_terms(d_parts, r_d_parts, D_TERMS, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g_total, r_g_total, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(d_total, r_d_total, rtol=1e-5, atol=1e-6)


def test_window_losses_equal_the_release_order_under_bf16_autocast(make_module):
    module = make_module()
    inputs = _inputs()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        torch.manual_seed(SEED)
        _, g_total, g_parts, d_total, d_parts = module.window_losses(*inputs)
        torch.manual_seed(SEED)
        _, r_g_total, r_g_parts, r_d_total, r_d_parts = release_window_losses(module, *inputs)
    _assert_terms(g_parts, r_g_parts, G_TERMS, rtol=2e-2, atol=1e-3)
    _assert_terms(d_parts, r_d_parts, D_TERMS, rtol=2e-2, atol=1e-3)
    torch.testing.assert_close(g_total, r_g_total, rtol=2e-2, atol=1e-3)
    torch.testing.assert_close(d_total, r_d_total, rtol=2e-2, atol=1e-3)


def _assert_same_step(ours: Fundus2VideoModule, ref: Fundus2VideoModule, before: dict[str, torch.Tensor],
                      lr: float) -> None:
    """Gradients and parameters of two modules after one step each from the same parameters `before`."""
    named_ref = dict(ref.named_parameters())
    assert set(dict(ours.named_parameters())) == set(named_ref)
    for name, p in ours.named_parameters():
        r = named_ref[name]
        # after the step, G's and the projector's .grad hold the G loss's gradients and D's the D
        # loss's (zeroed before D's backward): both formulations must leave the same
        assert p.grad is not None and r.grad is not None, f"{name} got no gradient: a loss term does not reach it"
        scale = max(1.0, p.grad.abs().max().item())
        torch.testing.assert_close(p.grad, r.grad, rtol=1e-3, atol=1e-5 * scale, msg=lambda m, n=name: f"{n}: {m}")
        assert not torch.equal(p, before[name]) or p.grad.abs().max() < 1e-5, f"{name} did not move"
        # Adam moves every weight by about lr * sign(grad) at first: compare where the sign is well
        # defined (gradients that are zero in exact arithmetic, e.g. of a conv bias before an
        # instance norm, are rounding noise whose sign may differ)
        solid = r.grad.abs() > 1e-4 * scale
        torch.testing.assert_close(p[solid], r[solid], rtol=0, atol=1e-3 * lr, msg=lambda m, n=name: f"{n}: {m}")
        assert (p - r).abs().max() <= 2 * lr * (1 + 1e-3), name


@pytest.mark.parametrize(("overrides", "batch", "windows"), [
    ((), 1, 2),
    (("loss.d_pass=shared",), 1, 2),  # one D pass on the fake serves G's terms and D's loss
    (("loss.kad=0", "loss.feat=0"), 2, 2),  # no knowledge-aware D, no feature matching; negatives per image
    # no adversarial term reaches G: one step (the two graphs sum G's gradient contributions in another
    # order; at the second step Adam's normalisation lifts that rounding on a few small projector-bias
    # gradients above the bound)
    (("loss.gan=0", "loss.feat=0", "loss.kad=0"), 1, 1),
], ids=["full", "full_shared_d_pass", "no_km_no_fm_batch2", "no_adversarial"])
def test_two_steps_equal_the_release_order(make_module, overrides, batch, windows):
    """Two windows of a video (the second conditioned on the first's output), each step from the same
    parameters and optimizer state in both formulations; the gradients left by the first step stay,
    so a missing zero_grad shows in the second."""
    base = make_module(*overrides)
    ours, ref = copy.deepcopy(base), copy.deepcopy(base)
    opt_g, opt_d, schedulers = standalone_optimizers(ours)
    r_opt_g, r_opt_d, _ = standalone_optimizers(ref)
    lr = base.cfg.optim.lr
    cf, prev, target, km = _inputs(batch)
    target2 = _inputs(batch, seed=1)[2]
    fake = prev  # the first window's previous frames; then the previous window's output
    for window, target_n in enumerate([target, target2][:windows]):
        if window > 0:  # the same start: ours' parameters and optimizer state (not its gradients)
            ref.load_state_dict(ours.state_dict())
            # a deep copy: loading an optimizer state keeps the given tensors, which both would then update
            r_opt_g.load_state_dict(copy.deepcopy(opt_g.state_dict()))
            r_opt_d.load_state_dict(copy.deepcopy(opt_d.state_dict()))
        prev_n = fake
        before = {k: v.detach().clone() for k, v in ours.named_parameters()}
        torch.manual_seed(SEED + window)
        fake, parts = module_window_step(ours, cf, prev_n, target_n, km, opt_g, opt_d, schedulers)
        torch.manual_seed(SEED + window)
        r_fake, r_g_parts, r_d_parts = release_window_step(ref, cf, prev_n, target_n, km, r_opt_g, r_opt_d)
        torch.testing.assert_close(fake, r_fake, rtol=1e-5, atol=1e-6)
        names = (G_TERMS | D_TERMS) - ({"g_gan_km", "d_real_km", "d_fake_km"} if "loss.kad=0" in overrides
                                       else set()) - ({"g_feat"} if "loss.feat=0" in overrides else set())
        _assert_terms(parts, {**r_g_parts, **r_d_parts}, names | {"g_total", "d_total"}, 1e-5, 1e-6)
        assert ours.g_step == window + 1
        _assert_same_step(ours, ref, before, lr)


def test_outside_trainer_restores_the_module(make_module):
    module = make_module()
    opt_g, opt_d, _ = standalone_optimizers(module)
    with outside_trainer(module, opt_g, opt_d):
        assert module.optimizers() == (opt_g, opt_d)
    assert "optimizers" not in module.__dict__ and "manual_backward" not in module.__dict__


def test_g_total_is_its_weighted_terms_and_each_backward_reaches_its_own_network(make_module):
    """g_total is the logged sum of the weighted terms; the window step's backward of G's loss leaves
    D without gradients, and D's reaches all of D (the shared D pass serves both)."""
    module = make_module("loss.d_pass=shared")
    _, g_total, g_parts, d_total, _ = module.window_losses(*_inputs())
    weights = generator_weights(module.cfg.loss, loss_terms())
    torch.testing.assert_close(g_total, sum(weights[n] * v for n, v in g_parts.items() if n in weights),
                               rtol=1e-6, atol=1e-6)
    module.zero_grad(set_to_none=True)
    g_total.backward(inputs=module._g_parameters(), retain_graph=True)
    assert all(p.grad is None for p in module.discriminator.parameters())
    assert all(p.grad is not None for p in module.generator.parameters() if p.requires_grad)
    d_total.backward(inputs=list(module.discriminator.parameters()))
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in module.discriminator.parameters())
