import math

import pytest
import torch

from fundus2video.losses.patchnce import (
    generator_input,
    mask_enhanced_nce,
    multilayer_nce,
    patch_nce_loss,
)
from fundus2video.networks.generator import GlobalGenerator
from fundus2video.networks.projector import PatchProjector, l2_normalize, probe_channels

LAYERS = [0, 4, 8]


def unit_rows(n, c, seed):
    x = torch.randn(n, c, generator=torch.Generator().manual_seed(seed))
    return x / x.norm(dim=1, keepdim=True)


def reference_nce(q, k, batch_size, temperature, all_from_minibatch):
    """Plain loops: for row i, logits = [q_i.k_i] + [q_i.k_j (j in group, -10 for j = i)]."""
    n = q.shape[0]
    per_image = n // batch_size
    out = []
    for i in range(n):
        group = range(n) if all_from_minibatch else range(i // per_image * per_image, (i // per_image + 1) * per_image)
        logits = [float(q[i] @ k[i])] + [-10.0 if j == i else float(q[i] @ k[j]) for j in group]
        logits = torch.tensor(logits, dtype=torch.float64) / temperature
        out.append(-torch.log_softmax(logits, 0)[0])
    return torch.stack(out)


@pytest.mark.parametrize("batch_size", [1, 2])
@pytest.mark.parametrize("all_from_minibatch", [False, True])
def test_patch_nce_loss_matches_plain_computation(batch_size, all_from_minibatch):
    q, k = unit_rows(batch_size * 5, 8, 0), unit_rows(batch_size * 5, 8, 1)
    got = patch_nce_loss(q, k, batch_size, 0.07, all_from_minibatch)
    assert got.shape == (batch_size * 5,)
    want = reference_nce(q, k, batch_size, 0.07, all_from_minibatch)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)


def test_patch_nce_loss_modes_differ_and_keys_are_detached():
    q = unit_rows(10, 8, 2).requires_grad_()
    k = unit_rows(10, 8, 3).requires_grad_()
    per_image = patch_nce_loss(q, k, 2)
    assert not torch.allclose(per_image, patch_nce_loss(q, k, 2, all_negatives_from_minibatch=True))
    per_image.sum().backward()
    assert q.grad is not None and q.grad.abs().sum() > 0
    assert k.grad is None
    with pytest.raises(ValueError):
        patch_nce_loss(q, k, 3)  # 10 rows are not 3 images


def test_projector_built_in_init():
    proj = PatchProjector([6, 16, 32], nc=20)
    n_params = sum(p.numel() for p in proj.parameters())
    assert n_params == sum(c * 20 + 20 + 20 * 20 + 20 for c in [6, 16, 32])
    linears = [m for m in proj.modules() if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 6
    assert all(torch.all(m.bias == 0) for m in linears)
    assert all(0.01 < m.weight.std() < 0.03 for m in linears)  # N(0, 0.02)


def test_projector_rows_unit_norm_image_major_and_ids_reused():
    proj = PatchProjector([4, 8], nc=16)
    g = torch.Generator().manual_seed(0)
    feats = [torch.randn(2, 4, 6, 5, generator=g), torch.randn(2, 8, 3, 3, generator=g)]
    out, ids = proj(feats, num_patches=7, generator=torch.Generator().manual_seed(1))
    assert [o.shape for o in out] == [(14, 16), (14, 16)]
    assert [i.shape for i in ids] == [(7,), (7,)]
    for o in out:
        # CUT's eps (norm + 1e-7) is not negligible: at init the MLP outputs have norms ~ 1e-3
        torch.testing.assert_close(o.norm(dim=1), torch.ones(14), rtol=0, atol=1e-3)
    # row b * P + p is image b at flat position ids[p] = h * W + w
    for layer, (f, o) in enumerate(zip(feats, out)):
        w = f.shape[3]
        for b in range(2):
            for p, pos in enumerate(ids[layer].tolist()):
                v = f[b, :, pos // w, pos % w]
                want = l2_normalize(proj.mlps[layer](v[None]))[0]
                torch.testing.assert_close(o[b * 7 + p], want)
    # ids passed in are used as given (the query takes the key's positions)
    other = [x + 1 for x in feats]
    out2, ids2 = proj(other, num_patches=3, patch_ids=ids)
    assert all(torch.equal(a, b) for a, b in zip(ids, ids2))
    assert out2[0].shape == (14, 16)
    # the same generator seed samples the same positions
    _, ids3 = proj(feats, num_patches=7, generator=torch.Generator().manual_seed(1))
    assert all(torch.equal(a, b) for a, b in zip(ids, ids3))


def test_multilayer_nce_is_mean_over_layers_of_key_sampled_losses():
    proj = PatchProjector([4, 8], nc=16)
    g = torch.Generator().manual_seed(0)
    src = [torch.randn(2, 4, 6, 5, generator=g), torch.randn(2, 8, 3, 3, generator=g)]
    tgt = [torch.randn(2, 4, 6, 5, generator=g), torch.randn(2, 8, 3, 3, generator=g)]
    got = multilayer_nce(proj, src, tgt, num_patches=5, temperature=0.1, generator=torch.Generator().manual_seed(4))
    keys, ids = proj(src, 5, generator=torch.Generator().manual_seed(4))
    queries, _ = proj(tgt, 5, patch_ids=ids)
    want = (patch_nce_loss(queries[0], keys[0], 2, 0.1).mean() + patch_nce_loss(queries[1], keys[1], 2, 0.1).mean()) / 2
    assert got.dim() == 0
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("num_patches", [0, -1, 30, 1000])
def test_projector_all_positions(num_patches):
    proj = PatchProjector([3], nc=8)
    out, ids = proj([torch.randn(2, 3, 5, 6)], num_patches=num_patches)
    assert out[0].shape == (2 * 30, 8)
    assert torch.equal(ids[0].sort().values, torch.arange(30))
    if num_patches <= 0:
        assert torch.equal(ids[0], torch.arange(30))


def test_projector_zero_rows_have_finite_gradients():
    """Masked inputs give exactly-zero feature rows at layer 0; CUT's norm has NaN gradients there."""
    proj = PatchProjector([3], nc=8)
    feat = torch.zeros(1, 3, 4, 4, requires_grad=True)
    out, _ = proj([feat], num_patches=0)
    out[0].sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in proj.parameters())
    assert torch.isfinite(feat.grad).all()


def test_projector_rejects_wrong_channels():
    proj = PatchProjector([3, 4])
    with pytest.raises(ValueError):
        proj([torch.randn(1, 3, 4, 4)])
    with pytest.raises(ValueError):
        proj([torch.randn(1, 3, 4, 4), torch.randn(1, 5, 4, 4)])


def test_generator_input_cycles_channels():
    x = torch.randn(2, 3, 4, 4)
    assert torch.equal(generator_input(x, 6), torch.cat([x, x], 1))
    assert torch.equal(generator_input(x, 3), x)
    y = torch.randn(2, 2, 4, 4)
    assert torch.equal(generator_input(y, 5), y[:, [0, 1, 0, 1, 0]])
    assert torch.equal(generator_input(x, 2), x[:, :2])


def make_setup(seed=0, size=32, batch=2):
    torch.manual_seed(seed)
    gen = GlobalGenerator(6, 3, ngf=8, n_downsample=2, n_blocks=2)
    proj = PatchProjector(probe_channels(gen.encode, 6, LAYERS, size=32), nc=32)
    g = torch.Generator().manual_seed(seed + 1)
    cf = torch.rand(batch, 3, size, size, generator=g) * 2 - 1
    real = torch.rand(batch, 3, size, size, generator=g) * 2 - 1
    fake = torch.rand(batch, 3, size, size, generator=g) * 2 - 1
    km = torch.zeros(batch, 1, size, size)
    km[:, :, 8:24, 4:20] = 1.0
    return gen, proj, cf, fake, real, km


def run(gen, proj, cf, fake, real, km, seed=5, identity=True):
    return mask_enhanced_nce(gen.encode, proj, cf, fake, real, km, LAYERS, num_patches=24, identity=identity,
                             generator=torch.Generator().manual_seed(seed))


def test_probe_channels():
    gen = GlobalGenerator(6, 3, ngf=8, n_downsample=2, n_blocks=2)
    assert probe_channels(gen.encode, 6, LAYERS, size=32) == [6, 16, 32]


def test_mask_enhanced_nce_scalar_and_gradients():
    gen, proj, cf, fake, real, km = make_setup()
    fake.requires_grad_()
    cf.requires_grad_()
    real.requires_grad_()
    loss, terms = run(gen, proj, cf, fake, real, km)
    assert loss.dim() == 0 and torch.isfinite(loss)
    assert set(terms) == {"nce", "nce_idt"}
    torch.testing.assert_close(loss, (terms["nce"] + terms["nce_idt"]) / 2)
    loss.backward()
    assert fake.grad.abs().sum() > 0
    assert torch.all(fake.grad * (1 - km) == 0)  # masked-out pixels are not seen
    assert cf.grad is None and real.grad is None  # key side: no graph
    assert gen.model[1].weight.grad.abs().sum() > 0  # encoder weights, through the queries
    assert gen.model[4].weight.grad.abs().sum() > 0
    for mlp in proj.mlps:
        assert mlp[0].weight.grad.abs().sum() > 0 and mlp[2].weight.grad.abs().sum() > 0


def test_mask_enhanced_nce_encodes_keys_without_graph():
    gen, proj, cf, fake, real, km = make_setup()
    fake.requires_grad_()
    calls = []

    def encode(x, layer_ids):
        feats = gen.encode(x, layer_ids)
        calls.append(feats[-1].requires_grad)
        return feats

    mask_enhanced_nce(encode, proj, cf, fake, real, km, LAYERS, num_patches=8)
    assert sorted(calls) == [False, False, True]  # CF and real: keys, no graph; fake: queries


def test_mask_enhanced_nce_without_identity():
    gen, proj, cf, fake, real, km = make_setup()
    loss, terms = run(gen, proj, cf, fake, real, km, identity=False)
    assert set(terms) == {"nce"}
    torch.testing.assert_close(loss, terms["nce"])


def test_mask_enhanced_nce_matches_release_graph():
    """Keys encoded under no_grad give the release's gradients (it keeps the key graphs)."""
    gen, proj, cf, fake, real, km = make_setup()
    fake.requires_grad_()
    loss, _ = run(gen, proj, cf, fake, real, km)
    loss.backward()
    ours = [fake.grad.clone()] + [p.grad.clone() for p in [*gen.parameters(), *proj.parameters()] if p.grad is not None]
    fake.grad = None
    gen.zero_grad()
    proj.zero_grad()

    # the release's path written out: every feature with its graph, keys sampled then queries
    g = torch.Generator().manual_seed(5)
    f = [gen.encode(torch.cat([x * km, x * km], 1), LAYERS) for x in (cf, fake, real)]
    total = []
    for src in (f[0], f[2]):
        keys, ids = proj(src, 24, generator=g)
        queries, _ = proj(f[1], 24, patch_ids=ids)
        total.append(torch.stack([patch_nce_loss(q, k, 2).mean() for q, k in zip(queries, keys)]).mean())
    release = (total[0] + total[1]) * 0.5
    torch.testing.assert_close(release, loss)
    release.backward()
    theirs = [fake.grad] + [p.grad for p in [*gen.parameters(), *proj.parameters()] if p.grad is not None]
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b)


def test_mask_enhanced_nce_ignores_pixels_outside_mask():
    gen, proj, cf, fake, real, km = make_setup()
    with torch.no_grad():
        loss, terms = run(gen, proj, cf, fake, real, km)
        noise = torch.Generator().manual_seed(9)
        outside = 1 - km
        changed = [x + outside * torch.randn(x.shape, generator=noise) for x in (cf, fake, real)]
        loss2, terms2 = run(gen, proj, *changed, km)
        torch.testing.assert_close(loss2, loss, rtol=0, atol=1e-6)
        torch.testing.assert_close(terms2["nce_idt"], terms["nce_idt"], rtol=0, atol=1e-6)
        # a change inside the mask does change it (the check above can fail)
        loss3, _ = run(gen, proj, cf, fake + km * torch.randn(fake.shape, generator=noise), real, km)
        assert not torch.allclose(loss3, loss)


def test_identity_term_lower_for_matching_fake():
    gen, proj, cf, fake, real, km = make_setup(seed=3)
    with torch.no_grad():
        _, same = run(gen, proj, cf, real.clone(), real, km)
        _, other = run(gen, proj, cf, fake, real, km)
    assert same["nce_idt"] < other["nce_idt"]
    assert other["nce_idt"] < math.log(25) + 0.5  # about chance level (log(P + 1) for P = 24)
