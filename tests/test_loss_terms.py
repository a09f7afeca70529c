"""Each generator loss term is declared once (losses/terms.py): a new term is its function,
registered with `@generator_term`, and its weight, declared with `weight()` in the config's `loss`
section. Shown here by adding a trivial total-variation term the way a contributor would, then
building the module from a config that names it."""

import dataclasses  # no `from __future__ import annotations`: OmegaConf reads the local classes' field types

import pytest
import torch

import fundus2video.config as config
import fundus2video.losses.terms as terms
from fundus2video.errors import ConfigError
from fundus2video.losses.terms import Window, generator_term
from fundus2video.module import Fundus2VideoModule
from fundus2video.training import check_training


@pytest.fixture
def with_tv_term(monkeypatch):
    """A `tv` term: its function (the term's file) and its `weight()` line (here a subclass of
    LossConfig, as the test cannot edit config.py)."""
    monkeypatch.setattr(terms, "GENERATOR_TERMS", dict(terms.GENERATOR_TERMS))

    @generator_term("tv")
    def _tv(window: Window) -> torch.Tensor:
        fake = window.fake
        return (fake[..., 1:, :] - fake[..., :-1, :]).abs().mean() + (fake[..., 1:] - fake[..., :-1]).abs().mean()

    @dataclasses.dataclass
    class LossWithTV(config.LossConfig):
        tv: float = config.weight(0.0, paper=False)

    @dataclasses.dataclass
    class ExperimentWithTV(config.ExperimentConfig):
        loss: LossWithTV = dataclasses.field(default_factory=LossWithTV)

    monkeypatch.setattr(config, "LossConfig", LossWithTV)
    monkeypatch.setattr(config, "ExperimentConfig", ExperimentWithTV)
    return _tv


def _inputs(s: int = 32):
    g = torch.Generator().manual_seed(0)
    cf, prev, target = (torch.rand(1, 3, s, s, generator=g) * 2 - 1 for _ in range(3))
    km = torch.zeros(1, 1, s, s)
    km[..., 8:20, 10:24] = 1
    return cf, prev, target, km


def test_a_new_term_is_its_function_and_its_weight(tiny, with_tv_term):
    assert config.loss_terms()[-1] == "tv" and "tv" not in config.loss_terms(paper_only=True)
    runs = {}
    for w in (0.0, 0.5):
        torch.manual_seed(0)
        module = Fundus2VideoModule(config.to_plain(tiny("loss.nce=0", f"loss.tv={w}")))
        runs[w] = module.window_losses(*_inputs())
    fake, g_total, g_parts, _, _ = runs[0.5]
    assert "g_tv" in g_parts and "g_tv" not in runs[0.0][2]  # weight 0: not computed
    torch.testing.assert_close(fake, runs[0.0][0])  # the same weights, the same generated frames
    tv = with_tv_term(Window(None, None, None, fake, None, None, None, None, None, None, None))
    torch.testing.assert_close(g_parts["g_tv"], tv)
    torch.testing.assert_close(g_total, runs[0.0][1] + 0.5 * tv)  # summed with its weight


def test_the_new_weight_is_checked_and_alone_trains_g(tiny, with_tv_term):
    with pytest.raises(ConfigError, match=r"loss.tv: -1.0 is out of range \(expected a finite weight >= 0"):
        tiny("loss.tv=-1")
    alone = [f"loss.{k}=0" for k in config.loss_terms() if k != "tv"]
    check_training(tiny(*alone, "loss.tv=1"))  # one term on: G trains
    with pytest.raises(ConfigError, match="every generator term is 0 .*loss.tv"):
        check_training(tiny(*alone, "loss.tv=0"))


def test_a_weight_without_its_term_is_named(tiny, monkeypatch):
    monkeypatch.setattr(terms, "GENERATOR_TERMS", {k: v for k, v in terms.GENERATOR_TERMS.items() if k != "gv"})
    module = Fundus2VideoModule(config.to_plain(tiny("loss.nce=0")))
    with pytest.raises(RuntimeError, match=r"loss.gv declared in config.py but no term registered"):
        module.window_losses(*_inputs())


def test_every_declared_weight_has_its_term_and_each_term_its_weight():
    assert set(config.loss_terms()) == set(terms.GENERATOR_TERMS)
    assert config.loss_terms(paper_only=True) == ("gan", "feat", "vgg", "gv", "nce", "kad", "att")
