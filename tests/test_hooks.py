"""Every hook of training/hookspecs.py, exercised through the real loop.

Each hookspec ``X`` has a test named ``test_hook_X`` here; ``test_every_hook_is_documented_and_tested``
enforces that (as Datasette does for its plugin hooks).
"""
from __future__ import annotations

import json
import os

import pytest
import torch

from conftest import make_trainer, state_equal
from ganstack.training import hookspecs
from ganstack.training.api import DInput, LazyRegularizer, Option, PluginError, hookimpl
from ganstack.training.loss import PhaseContext
from ganstack.training.plugin_manager import PluginStack, hook_names


def test_every_hook_is_documented_and_tested():
    names = hook_names()
    assert len(names) >= 15
    for name in names:
        doc = getattr(hookspecs, name).__doc__ or ""
        assert len(doc.strip()) > 60, f"hookspec {name} needs a docstring saying when it is called and what it returns"
        assert f"test_hook_{name}" in globals(), f"hookspec {name} has no test_hook_{name} in tests/test_hooks.py"


# -------------------------------------------------------------------------------------------------

class WithOptions:
    """Declares two options."""

    @hookimpl
    def add_options(self):
        return [Option("strength", float, 0.5, "how strong", min=0, max=1),
                Option("mode", str, "a", "which mode", choices=["a", "b"]),
                Option("count", int, 3, "how many", min=1)]

    @hookimpl
    def configure(self, opts):
        self.opts = opts


def test_hook_add_options():
    stack = PluginStack(["w"], {"w": {"strength": "0.25", "count": "7"}}, extra_plugins={"w": WithOptions})
    opts = stack.options["w"]
    assert (opts.strength, opts.mode, opts.count) == (0.25, "a", 7)
    stack.configure(make_config_for_configure())
    assert stack.plugins["w"].opts.strength == 0.25
    with pytest.raises(PluginError, match=r"out of range; expected float in \[0, 1\]"):
        PluginStack(["w"], {"w": {"strength": 2}}, extra_plugins={"w": WithOptions})
    with pytest.raises(PluginError, match=r"no option 'strenght'. Its options: strength, mode, count"):
        PluginStack(["w"], {"w": {"strenght": 0.1}}, extra_plugins={"w": WithOptions})
    with pytest.raises(PluginError, match=r"expected one of a, b"):
        PluginStack(["w"], {"w": {"mode": "c"}}, extra_plugins={"w": WithOptions})
    with pytest.raises(PluginError, match=r"not a valid int"):
        PluginStack(["w"], {"w": {"count": "2.5"}}, extra_plugins={"w": WithOptions})
    with pytest.raises(PluginError, match=r"not enabled"):
        PluginStack([], {"w": {"count": 2}}, extra_plugins={"w": WithOptions}, registry={"w": None})


def make_config_for_configure():
    from conftest import make_config
    return make_config()


class Tuner:
    """Recommends a learning rate; refuses to stack with 'forbidden'."""

    @hookimpl
    def configure(self, opts, cfg, stack):
        cfg.set_default("glr", 0.0123)
        if "forbidden" in stack:
            raise PluginError("tuner cannot run together with forbidden")


class Empty:
    pass


def test_hook_configure():
    tr = make_trainer(["tuner"], extra_plugins={"tuner": Tuner})
    assert tr.cfg.glr == 0.0123
    assert tr.G_opt.param_groups[0]["lr"] == pytest.approx(0.0123)
    tr = make_trainer(["tuner"], extra_plugins={"tuner": Tuner}, glr=0.5)  # the user's value wins
    assert tr.cfg.glr == 0.5
    with pytest.raises(PluginError, match="cannot run together"):
        make_trainer(["tuner", "forbidden"], extra_plugins={"tuner": Tuner, "forbidden": Empty})


class TimeConditioned:
    """Grows D's conditioning by one column and fills it in the augment hook."""

    @hookimpl
    def network_kwargs(self, role, kwargs):
        if role == "D":
            return dict(kwargs, c_dim=kwargs["c_dim"] + 1)

    @hookimpl
    def augment_d_input(self, x):
        return x.replace(c=torch.cat([x.c, torch.full([len(x), 1], 0.5)], dim=1))


def test_hook_network_kwargs():
    tr = make_trainer(["tc"], extra_plugins={"tc": TimeConditioned})
    assert tr.D.c_dim == 1 and tr.G.c_dim == 0
    tr.step()
    tr = make_trainer(["tc"], extra_plugins={"tc": TimeConditioned}, data="shapes16?n=64")
    assert tr.D.c_dim == 1
    tr.step()


class TinyG(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.z_dim, self.c_dim = 4, 0
        self.net = torch.nn.Linear(4, 2)

    def forward(self, z, c, **_):
        return self.net(z)


class TinyD(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.c_dim = 0
        self.feat = torch.nn.Linear(2, 8)
        self.out = torch.nn.Linear(8, 1)

    def forward(self, img, c, return_features=False):
        f = torch.relu(self.feat(img))
        return (self.out(f), f) if return_features else self.out(f)


class BuildsG:
    @hookimpl
    def build_generator(self, kwargs, data_info):
        assert data_info["kind"] == "points" and "z_dim" in kwargs
        return TinyG()


class BuildsD:
    @hookimpl
    def build_discriminator(self, kwargs):
        return TinyD()


def test_hook_build_generator():
    tr = make_trainer(["bg"], extra_plugins={"bg": BuildsG})
    assert isinstance(tr.G, TinyG) and isinstance(tr.G_ema, TinyG)
    before = tr.G.net.weight.clone()
    tr.step()
    assert not torch.equal(before, tr.G.net.weight)
    with pytest.raises(PluginError, match=r"both replace the generator network"):
        PluginStack(["a", "b"], extra_plugins={"a": BuildsG, "b": BuildsG}, registry={})


def test_hook_build_discriminator():
    tr = make_trainer(["bd"], extra_plugins={"bd": BuildsD})
    assert isinstance(tr.D, TinyD)
    before = tr.D.out.weight.clone()
    tr.step()
    assert not torch.equal(before, tr.D.out.weight)
    with pytest.raises(PluginError, match=r"both replace the discriminator network"):
        PluginStack(["a", "b"], extra_plugins={"a": BuildsD, "b": BuildsD}, registry={})


class AuxHead:
    """Attaches a head to D and trains it with a D-side term."""

    @hookimpl
    def modify_networks(self, nets):
        nets.D.add_module("aux_head", torch.nn.Linear(nets.D.feature_dim, 3))

    @hookimpl
    def d_loss(self, ctx, fake):
        return {"aux": (ctx.D.aux_head(fake.features) - 1).square().mean()}


def test_hook_modify_networks():
    tr = make_trainer(["aux"], extra_plugins={"aux": AuxHead})
    assert "aux_head.weight" in tr.D.state_dict()
    opt_params = {id(p) for g in tr.D_opt.param_groups for p in g["params"]}
    assert id(tr.D.aux_head.weight) in opt_params
    before = tr.D.aux_head.weight.clone()
    stats = tr.step()
    assert "Loss/aux/aux" in stats
    assert not torch.equal(before, tr.D.aux_head.weight)
    assert not hasattr(tr.G_ema, "aux_head")


class EveryThird:
    """A G regularizer every 3 steps whose loss is the sum of one parameter (gradient = gain)."""

    def __init__(self):
        self.calls = []

    @hookimpl
    def lazy_regularizers(self, cfg):
        return [LazyRegularizer("third", "G", 3, self.loss)]

    def loss(self, ctx):
        self.calls.append((ctx.step, ctx.phase))
        return next(ctx.G.parameters()).sum()


def test_hook_lazy_regularizers():
    tr = make_trainer(["e3"], extra_plugins={"e3": EveryThird})
    plugin = tr.stack.plugins["e3"]
    for _ in range(7):
        tr.step()
    assert plugin.calls == [(0, "Greg"), (3, "Greg"), (6, "Greg")]
    # StyleGAN2's lazy correction: lr * k/(k+1), betas ** (k/(k+1)); D has no regularizer here.
    group = tr.G_opt.param_groups[0]
    assert group["lr"] == pytest.approx(tr.cfg.glr * 3 / 4)
    assert group["betas"][1] == pytest.approx(tr.cfg.g_betas[1] ** 0.75)
    assert tr.D_opt.param_groups[0]["lr"] == pytest.approx(tr.cfg.dlr)
    # The lazy gain: the reg phase backpropagates interval * loss.
    tr.G.requires_grad_(True)
    tr.G.zero_grad(set_to_none=True)
    x, c = next(tr.stream)
    ctx = PhaseContext(tr.loss, "Greg", 3, 0, DInput(x, c), torch.randn(4, tr.G.z_dim), torch.zeros(4, 0))
    tr.loss.accumulate_gradients(ctx)
    first = next(tr.G.parameters())
    assert torch.allclose(first.grad, torch.full_like(first, 3.0))


class Doubler:
    """prepare_reals doubles the reals; augment_d_input records what D is shown."""

    def __init__(self):
        self.seen = []

    @hookimpl
    def prepare_reals(self, reals):
        return reals.replace(img=reals.img * 2)

    @hookimpl
    def augment_d_input(self, x, is_real):
        if is_real:
            self.seen.append(x.img)


def test_hook_prepare_reals():
    tr = make_trainer(["dbl"], extra_plugins={"dbl": Doubler}, gamma=1.0, r1_interval=2)
    plugin = tr.stack.plugins["dbl"]
    x, c = next(tr.stream)
    ctx = PhaseContext(tr.loss, "Dreg", 0, 0, DInput(x, c), torch.randn(32, tr.G.z_dim), torch.zeros(32, 0))
    tr.D.requires_grad_(True)
    tr.loss.accumulate_gradients(ctx)
    seen = plugin.seen[-1]
    assert torch.equal(seen.detach(), x * 2)
    assert seen.requires_grad  # R1's leaf is the prepared batch


class HalfSampler:
    """A sampler that halves G's output and remembers whether it ran in training."""

    def __init__(self):
        self.contexts = []

    @hookimpl
    def sampler(self, G, z, c, ctx, G_kwargs):
        self.contexts.append(ctx is None)
        return DInput(img=G(z, c) * 0.5, c=c)


def test_hook_sampler():
    tr = make_trainer(["half"], extra_plugins={"half": HalfSampler})
    tr.step()
    plugin = tr.stack.plugins["half"]
    assert plugin.contexts and not any(plugin.contexts)  # training calls carry a context
    out = tr.sample_ema(8, seed=3)
    assert plugin.contexts[-1] is True  # snapshots/generation: ctx is None
    z = torch.randn([8, tr.G_ema.z_dim], generator=torch.Generator().manual_seed(3))
    assert torch.allclose(out, tr.G_ema(z, torch.zeros(8, 0)) * 0.5)
    with pytest.raises(PluginError, match=r"both replace the sampler"):
        PluginStack(["a", "b"], extra_plugins={"a": HalfSampler, "b": HalfSampler}, registry={})


def _tagger(tag, log):
    class Tagger:
        @hookimpl
        def augment_d_input(self, x, is_real):
            log.append((tag, is_real))
            return x.replace(img=x.img * 2.0)
    return Tagger


def test_hook_augment_d_input():
    for order in (["a", "b"], ["b", "a"]):
        log = []
        tr = make_trainer(order, extra_plugins={"a": _tagger("a", log), "b": _tagger("b", log)})
        tr.step()
        tags = [t for t, _ in log]
        assert tags[:2] == order and all(tags[i:i + 2] == order for i in range(0, len(tags), 2))
        assert {r for _, r in log} == {True, False}
    # The augment is differentiable: G's gradient flows through it (x * 4 scales G's logits input).
    log = []
    tr = make_trainer(["a"], extra_plugins={"a": _tagger("a", log)})
    x, c = next(tr.stream)
    tr.G.requires_grad_(True)
    ctx = PhaseContext(tr.loss, "Gmain", 0, 0, DInput(x, c), torch.randn(32, tr.G.z_dim), torch.zeros(32, 0))
    tr.loss.accumulate_gradients(ctx)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in tr.G.parameters())


class RealLogitTerm:
    @hookimpl
    def d_loss(self, real):
        return {"push": 0.3 * real.logits.mean()}


def _grads(module):
    return [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in module.parameters()]


def _phase_grads(trainer, phase, x, c, z):
    module = trainer.G if phase.startswith("G") else trainer.D
    module.requires_grad_(True)
    module.zero_grad(set_to_none=True)
    torch.manual_seed(0)
    ctx = PhaseContext(trainer.loss, phase, 1, 0, DInput(x, c), z, torch.zeros(len(z), 0))
    trainer.loss.accumulate_gradients(ctx)
    out = _grads(module)
    module.requires_grad_(False)
    return out


def test_hook_d_loss():
    base = make_trainer([])
    plug = make_trainer(["rl"], extra_plugins={"rl": RealLogitTerm})
    assert state_equal(base.D.state_dict(), plug.D.state_dict())
    x, c = next(base.stream)
    z = torch.randn(32, base.G.z_dim)
    g_base = _phase_grads(base, "Dmain", x, c, z)
    g_plug = _phase_grads(plug, "Dmain", x, c, z)
    D = plug.D.requires_grad_(True)
    D.zero_grad(set_to_none=True)
    (0.3 * D(x, c).mean()).backward()
    direct = _grads(D)
    for gb, gp, gd in zip(g_base, g_plug, direct):
        assert torch.allclose(gp - gb, gd, atol=1e-6)
    assert "Loss/rl/push" in plug.step()


class FakeEnergyTerm:
    @hookimpl
    def g_loss(self, fakes, fake):
        assert fakes.img.requires_grad and fake.logits.shape[1] == 1
        return {"energy": 0.7 * fakes.img.square().sum(1)}


def test_hook_g_loss():
    base = make_trainer([])
    plug = make_trainer(["fe"], extra_plugins={"fe": FakeEnergyTerm})
    x, c = next(base.stream)
    z = torch.randn(32, base.G.z_dim)
    g_base = _phase_grads(base, "Gmain", x, c, z)
    g_plug = _phase_grads(plug, "Gmain", x, c, z)
    G = plug.G.requires_grad_(True)
    G.zero_grad(set_to_none=True)
    (0.7 * G(z, torch.zeros(32, 0)).square().sum(1).mean()).backward()
    for gb, gp, gd in zip(g_base, g_plug, _grads(G)):
        assert torch.allclose(gp - gb, gd, atol=1e-6)
    assert "Loss/fe/energy" in plug.step()


class StepWatcher:
    def __init__(self):
        self.seen = []

    @hookimpl
    def after_step(self, state, stats):
        self.seen.append((state.step, state.cur_nimg, dict(stats)))


def test_hook_after_step():
    tr = make_trainer(["sw"], extra_plugins={"sw": StepWatcher})
    for _ in range(3):
        tr.step()
    seen = tr.stack.plugins["sw"].seen
    assert [(s, n) for s, n, _ in seen] == [(1, 32), (2, 64), (3, 96)]
    stats = seen[-1][2]
    assert {"Loss/signs/real", "Loss/signs/fake", "Loss/G/loss", "Loss/D/loss"} <= set(stats)
    assert -1 <= stats["Loss/signs/real"] <= 1


class Reporter:
    @hookimpl
    def report_stats(self):
        return {"level": 7.5}


def test_hook_report_stats(tmp_path):
    lines = []
    tr = make_trainer(["rep"], extra_plugins={"rep": Reporter}, run_dir=str(tmp_path), kimg=0.1, tick=0.05)
    tr.log = lines.append
    tr.run()
    status = [l for l in lines if l.startswith("tick ")]
    assert status and all("rep/level 7.5" in l for l in status)
    records = [json.loads(l) for l in open(tmp_path / "stats.jsonl")]
    assert records and all(r["Plugin/rep/level"] == 7.5 for r in records)


class Counter:
    """State: a counter and a private generator, both advanced every step."""

    def __init__(self):
        self.count = 0
        self.gen = torch.Generator().manual_seed(1)

    @hookimpl
    def after_step(self):
        self.count += 1
        torch.rand(1, generator=self.gen)

    @hookimpl
    def state_dict(self):
        return {"count": self.count, "gen": self.gen.get_state()}

    @hookimpl
    def load_state_dict(self, state):
        self.count = state["count"]
        self.gen.set_state(state["gen"])


def test_hook_state_dict():
    tr = make_trainer(["cnt"], extra_plugins={"cnt": Counter})
    for _ in range(3):
        tr.step()
    ckpt = tr.checkpoint_dict()
    assert ckpt["plugin_state"]["cnt"]["count"] == 3
    assert "core" in ckpt["plugin_state"]  # the core plugin's path-length mean


def test_hook_load_state_dict(tmp_path):
    tr = make_trainer(["cnt"], extra_plugins={"cnt": Counter})
    for _ in range(3):
        tr.step()
    ckpt = tr.checkpoint_dict()
    torch.save(ckpt, tmp_path / "c.pt")
    loaded = torch.load(tmp_path / "c.pt", weights_only=True)
    resumed = make_trainer(["cnt"], extra_plugins={"cnt": Counter}, resume=loaded)
    plugin = resumed.stack.plugins["cnt"]
    assert plugin.count == 3
    assert torch.equal(plugin.gen.get_state(), tr.stack.plugins["cnt"].gen.get_state())
    # State for a plugin that is not enabled is an error, not silently dropped.
    with pytest.raises(PluginError, match="cannot load it"):
        make_trainer([], resume=loaded)


# -------------------------------------------------------------------------------------------------
# Validation of plugin objects

class UnknownHook:
    @hookimpl
    def augment_d_inputs(self, x):  # typo of augment_d_input
        return x


class WrongArgs:
    @hookimpl
    def augment_d_input(self, x, strength):
        return x


def test_unknown_hook_and_bad_signature_are_errors():
    with pytest.raises(PluginError, match=r"augment_d_inputs.*Known hooks: add_options"):
        PluginStack(["u"], extra_plugins={"u": UnknownHook}, registry={})
    with pytest.raises(PluginError, match=r"does not fit the hook specifications"):
        PluginStack(["w"], extra_plugins={"w": WrongArgs}, registry={})


def test_unknown_plugin_lists_available():
    with pytest.raises(PluginError, match=r"Unknown plugin 'nope'. Available plugins: alpha, beta"):
        PluginStack(["nope"], registry={"alpha": None, "beta": None})
    with pytest.raises(PluginError, match="more than once"):
        PluginStack(["a", "a"], extra_plugins={"a": Empty}, registry={})
