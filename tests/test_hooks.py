"""Every hook of training/hookspecs.py, exercised through the real loop.

Each hookspec ``X`` has a test named ``test_hook_X`` here; ``test_every_hook_is_documented_and_tested``
enforces that (as Datasette does for its plugin hooks).
"""
from __future__ import annotations

import inspect
import json
import math
import os

import pytest
import torch

from conftest import make_trainer, state_equal
from ganstack.training import hookspecs
from ganstack.training.api import DInput, LazyRegularizer, Option, PluginError, hookimpl
from ganstack.training.loss import PhaseContext
from ganstack.training.plugin_manager import PluginStack, hook_kind, hook_names


def test_every_hook_is_documented_and_tested():
    names = hook_names()
    assert len(names) >= 18
    for name in names:
        spec = getattr(hookspecs, name)
        doc = spec.__doc__ or ""
        assert len(doc.strip()) > 60, f"hookspec {name} needs a docstring saying when it is called and what it returns"
        assert f"test_hook_{name}" in globals(), f"hookspec {name} has no test_hook_{name} in tests/test_hooks.py"
        # The kind is declared once, in the spec; exclusive hooks are pluggy firstresult hooks, and only those.
        assert hook_kind(name) in ("each", "chain", "collect", "exclusive"), name
        assert spec.ganstack_spec["firstresult"] == (hook_kind(name) == "exclusive"), name
        assert spec.ganstack_when and spec.ganstack_example, name
        sig = inspect.signature(spec)
        assert sig.return_annotation is not inspect.Signature.empty, f"{name} needs a return annotation"
        assert all(p.annotation is not inspect.Parameter.empty for p in sig.parameters.values()), name


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
    is_image, w_dim, num_ws, out_dim = False, None, None, 2  # the G protocol

    def __init__(self):
        super().__init__()
        self.z_dim, self.c_dim = 4, 0
        self.net = torch.nn.Linear(4, 2)

    def forward(self, z, c, **_):
        return self.net(z)


class TinyD(torch.nn.Module):
    is_image, feature_dim = False, 8  # the D protocol

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
    with pytest.raises(PluginError, match=r"both replace the generator"):
        PluginStack(["a", "b"], extra_plugins={"a": BuildsG, "b": BuildsG}, registry={})

    class NoProtocol(BuildsG):
        @hookimpl
        def build_generator(self):
            return torch.nn.Linear(4, 2)
    with pytest.raises(PluginError, match=r"lacks the attribute\(s\) z_dim, c_dim, is_image, w_dim, num_ws"):
        make_trainer(["np"], extra_plugins={"np": NoProtocol})


def test_hook_build_discriminator():
    tr = make_trainer(["bd"], extra_plugins={"bd": BuildsD})
    assert isinstance(tr.D, TinyD)
    before = tr.D.out.weight.clone()
    tr.step()
    assert not torch.equal(before, tr.D.out.weight)
    with pytest.raises(PluginError, match=r"both replace the discriminator"):
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
    # The toy MLP has no base reg phase: a lazy regularizer runs inside Gmain on its steps, with its gain.
    tr = make_trainer(["e3"], extra_plugins={"e3": EveryThird})
    plugin = tr.stack.plugins["e3"]
    for _ in range(7):
        tr.step()
    assert plugin.calls == [(0, "Gmain"), (3, "Gmain"), (6, "Gmain")]
    # It adds no optimizer step, so G's optimizer keeps the configuration's settings (no lazy correction).
    vanilla = make_trainer([])
    for net in ("G_opt", "D_opt"):
        assert getattr(tr, net).param_groups[0]["lr"] == getattr(vanilla, net).param_groups[0]["lr"] == tr.cfg.glr
        assert getattr(tr, net).param_groups[0]["betas"] == getattr(vanilla, net).param_groups[0]["betas"]
    # The lazy gain: at step 3 the main phase's gradient gains interval * d(loss) = 3 on the first parameter.
    x, c = next(tr.stream)
    z = torch.randn(32, tr.G.z_dim)
    grads = {}
    for step in (3, 4):
        tr.G.requires_grad_(True)
        tr.G.zero_grad(set_to_none=True)
        vanilla.G.load_state_dict(tr.G.state_dict())
        vanilla.D.load_state_dict(tr.D.state_dict())
        vanilla.G.requires_grad_(True)
        vanilla.G.zero_grad(set_to_none=True)
        for t in (tr, vanilla):
            t.loss.accumulate_gradients(PhaseContext(t.loss, "Gmain", step, 0, DInput(x, c), z, torch.zeros(32, 0)))
        grads[step] = next(tr.G.parameters()).grad - next(vanilla.G.parameters()).grad
    assert torch.allclose(grads[3], torch.full_like(grads[3], 3.0), atol=1e-5)
    assert torch.allclose(grads[4], torch.zeros_like(grads[4]), atol=1e-6)
    # On the StyleGAN2 presets G has a reg phase every --pl-interval (4) steps: interval 8 runs there, with gain 8.
    img = make_trainer(["e8"], extra_plugins={"e8": type("E8", (EveryThird,), {
        "lazy_regularizers": hookimpl(lambda self, cfg: [LazyRegularizer("eight", "G", 8, self.loss)])})}, image=True)
    assert [r.name for r in img.loss.lazy_due("G", 8)] == ["eight", "pl"]  # --plugins order, core last
    assert [r.name for r in img.loss.lazy_due("G", 4)] == ["pl"] and img.loss.in_main_phase("G", 8) == []
    assert img.G_opt.param_groups[0]["lr"] == pytest.approx(img.cfg.glr * 4 / 5)  # the base correction only


class StartRecorder:
    """Records what start_training receives, and adds a frozen helper network to D's device."""

    def __init__(self):
        self.seen = None

    @hookimpl
    def start_training(self, nets, data_info, device, cfg):
        self.seen = (nets, data_info, device, cfg)
        self.helper = torch.nn.Linear(2, 2).to(device).requires_grad_(False)

    @hookimpl
    def lazy_regularizers(self, cfg):
        assert self.seen is not None, "start_training runs before lazy_regularizers"
        return []


class NeedsFile:
    """Names a file in an option and checks it exists before training starts."""

    seen = []

    @hookimpl
    def add_options(self):
        return [Option("path", str, "", "a file the plugin opens when training starts")]

    @hookimpl
    def configure(self, opts):
        self.opts = opts

    @hookimpl
    def check_startup(self, data_info, cfg):
        NeedsFile.seen.append((data_info["kind"], cfg.seed))
        if not os.path.exists(self.opts.path):
            raise PluginError(f"--needsfile-path {self.opts.path!r} does not exist.")


def test_hook_check_startup(tmp_path):
    from ganstack.stylegan_base.datasets import open_dataset
    from ganstack.training.config import resolve
    from ganstack.training.preflight import preflight
    from conftest import make_config

    def stack_for(path):
        cfg = make_config()
        info = open_dataset(cfg.data).info()
        resolve(cfg, info, 1)
        stack = PluginStack(["needsfile"], {"needsfile": {"path": str(path)}}, extra_plugins={"needsfile": NeedsFile})
        stack.configure(cfg, info)
        return cfg, stack, info

    NeedsFile.seen.clear()
    with pytest.raises(PluginError, match="does not exist"):
        preflight(*stack_for(tmp_path / "missing.txt"), device="cpu", log=lambda *_: None)
    (tmp_path / "there.txt").write_text("x")
    preflight(*stack_for(tmp_path / "there.txt"), device="cpu", log=lambda *_: None)
    assert NeedsFile.seen == [("points", 0), ("points", 0)]
    # Building a trainer (as generate/metrics load a checkpoint) does not call it.
    make_trainer(["needsfile"], {"needsfile": {"path": str(tmp_path / "missing.txt")}},
                 extra_plugins={"needsfile": NeedsFile})
    assert len(NeedsFile.seen) == 2


def test_hook_start_training():
    tr = make_trainer(["rec"], extra_plugins={"rec": StartRecorder})
    nets, data_info, device, cfg = tr.stack.plugins["rec"].seen
    assert nets.G is tr.G and nets.D is tr.D and nets.G_ema is tr.G_ema  # G_ema exists already
    assert data_info.kind == data_info["kind"] == "points" and data_info.point_dim == 2
    assert device == tr.device and cfg is tr.cfg
    # It belongs to training only: loading a checkpoint for sampling does not call it.
    from ganstack.training.inference import load_model
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "c.pt")
        from ganstack.training import checkpoint as ckpt_io
        ckpt_io.atomic_save(make_trainer([]).checkpoint_dict(), path)
        assert load_model(path, device="cpu").G is not None


class HeadGroup:
    """Trains an extra D head with its own learning rate through a parameter group."""

    @hookimpl
    def modify_networks(self, nets):
        nets.D.add_module("aux_head", torch.nn.Linear(nets.D.feature_dim, 1))

    @hookimpl
    def param_groups(self, net, module):
        if net == "D":
            return [{"params": list(module.aux_head.parameters()), "lr": 0.05}]

    @hookimpl
    def d_loss(self, ctx, real):
        return {"aux": ctx.D.aux_head(real.features).square().mean()}


def test_hook_param_groups():
    tr = make_trainer(["hg"], extra_plugins={"hg": HeadGroup})
    base, head = tr.D_opt.param_groups
    assert head["lr"] == 0.05 and head["betas"] == base["betas"]  # missing keys take the base settings
    head_ids = {id(p) for p in tr.D.aux_head.parameters()}
    assert head_ids == {id(p) for p in head["params"]} and not head_ids & {id(p) for p in base["params"]}
    vanilla = make_trainer([])
    assert base["lr"] == vanilla.D_opt.param_groups[0]["lr"] and len(base["params"]) == len(vanilla.D_opt.param_groups[0]["params"])
    before = tr.D.aux_head.weight.clone()
    tr.step()
    assert not torch.equal(before, tr.D.aux_head.weight)


class HalvingSchedule:
    """Halves G's learning rate every step (torch's StepLR), leaves D's alone."""

    @hookimpl
    def lr_schedule(self, net, optimizer, total_steps):
        assert total_steps == math.ceil(1000 / 32)
        if net == "G":
            return torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)


def test_hook_lr_schedule(tmp_path):
    tr = make_trainer(["half"], extra_plugins={"half": HalvingSchedule}, kimg=1.0)
    lr0 = tr.G_opt.param_groups[0]["lr"]
    for _ in range(3):
        tr.step()
    assert tr.G_opt.param_groups[0]["lr"] == pytest.approx(lr0 / 8)
    assert tr.D_opt.param_groups[0]["lr"] == tr.cfg.dlr
    # Its state is in the checkpoint and resume continues the schedule bitwise.
    straight = make_trainer(["half"], extra_plugins={"half": HalvingSchedule}, kimg=1.0)
    for _ in range(4):
        straight.step()
    ckpt = tr.checkpoint_dict()
    assert set(ckpt["lr_schedules"]) == {"G"}
    from ganstack.training import checkpoint as ckpt_io
    ckpt_io.atomic_save(ckpt, str(tmp_path / "c.pt"))
    resumed = make_trainer(["half"], extra_plugins={"half": HalvingSchedule}, kimg=1.0,
                           resume=ckpt_io.load(str(tmp_path / "c.pt")))
    resumed.step()
    assert resumed.G_opt.param_groups[0]["lr"] == straight.G_opt.param_groups[0]["lr"]
    assert state_equal(resumed.G.state_dict(), straight.G.state_dict())
    # Two schedules for one network are a conflict.
    with pytest.raises(PluginError, match="More than one plugin sets a learning-rate schedule for G"):
        make_trainer(["a", "b"], extra_plugins={"a": HalvingSchedule, "b": HalvingSchedule}, kimg=1.0)


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
    # One name everywhere: 'rep/level' in the status line and in stats.jsonl.
    assert records and all(r["rep/level"] == 7.5 and "Plugin/rep/level" not in r for r in records)


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
    # A wrong argument name is refused with the hook's expected signature.
    with pytest.raises(PluginError, match=r"implements augment_d_input\(x, strength\), but 'strength' is not an "
                                          r"argument.*augment_d_input\(x: DInput, ctx: Optional\[PhaseContext\], "
                                          r"is_real: bool\) -> Optional\[DInput\]"):
        PluginStack(["w"], extra_plugins={"w": WrongArgs}, registry={})


def test_unknown_plugin_lists_available():
    with pytest.raises(PluginError, match=r"Unknown plugin 'nope'. Available plugins: alpha, beta"):
        PluginStack(["nope"], registry={"alpha": None, "beta": None})
    with pytest.raises(PluginError, match="more than once"):
        PluginStack(["a", "a"], extra_plugins={"a": Empty}, registry={})
