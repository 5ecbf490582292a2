"""The speed options (training/speed.py, stylegan_base/ops.py formulations): each is switchable and
computes what the eager float32 step computes, within a stated tolerance.

Tolerances (CPU):
* ``--compile`` (inductor, ``fallback_random`` so both draw the same noise): G/D outputs within 1e-5
  of the norm; in every phase of a step (Gmain, Greg, Dmain, Dreg, each from the same state) the
  losses and every gradient within 1e-4 relative, and the Adam update within 1e-3 (float32 rounding of
  reordered/fused arithmetic, ~1e-6 measured, which Adam's sign-like first steps amplify on near-zero
  gradient entries).
* ``--mp-res 2 --mp-dtype bf16``: G's image and D's logits within 3% of the norm, each network's
  whole gradient within 10% and each weight's within 20% (bfloat16 keeps 8 mantissa bits, ~0.4% per
  rounding, compounded through the backward pass), and the first Adam step (sign-like) within cosine 0.95.
  Measured here: image 0.7%, gradients G 6.1% / D 3.5%, worst weight 8.3%, cosine 0.973.
* ``--channels-last``: 1e-5 (the same arithmetic in another memory order).
"""
from __future__ import annotations

import copy
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import make_trainer, state_equal
from ganstack.stylegan_base import ops
from ganstack.stylegan_base.networks import Discriminator, Generator
from ganstack.training import speed
from ganstack.training.config import TrainConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The smallest StyleGAN2 that still has every kind of block (const 4x4, up-block, skip ToRGB, resnet D,
# minibatch-std epilogue) and both lazy regularizers.
SMALL = dict(data="shapes8?n=64", cfg="stylegan2", cbase=256, cmax=16, map_depth=2, z_dim=8, w_dim=8, batch=4,
             mbstd_group=2, workers=0)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))


@pytest.fixture
def fallback_random():
    import torch._inductor.config as ic
    old = ic.fallback_random
    ic.fallback_random = True  # compiled randn/randint draw from torch's generator, as eager does
    yield
    ic.fallback_random = old


def _params(m):
    return {k: v.detach().clone() for k, v in m.named_parameters()}


# -------------------------------------------------------------------------------------------------
# torch.compile

def _run_phase(tr, phase, real, z, c):
    """One phase as the loop runs it (zero_grad, accumulate_gradients in the speed scope, optimizer
    step); returns the gradients, the parameters after the step and the phase's statistics."""
    from ganstack.training.api import DInput
    from ganstack.training.loss import PhaseContext

    module, opt = (tr.G, tr.G_opt) if phase[0] == "G" else (tr.D, tr.D_opt)
    opt.zero_grad(set_to_none=True)
    module.requires_grad_(True)
    torch.manual_seed(7)  # the same noise, style mixing and path-length draws in both runs
    ctx = PhaseContext(tr.loss, phase, 0, 0, DInput(img=real, c=c), z, c)
    with tr.accelerator.phase(phase, phase.endswith("reg")):
        tr.loss.accumulate_gradients(ctx, scale=1.0)
    module.requires_grad_(False)
    grads = {k: p.grad.detach().clone() for k, p in module.named_parameters() if p.grad is not None}
    before = _params(module)
    opt.step()
    after = _params(module)
    return grads, {k: after[k] - before[k] for k in after}, tr.stats.end_step()


@pytest.mark.slow
def test_compiled_training_step_matches_eager(fallback_random):
    """Every phase of a training step (Gmain, Greg = path length, Dmain, Dreg = R1), compiled vs eager
    from the same state: losses, every gradient, and the Adam update. After each phase the compiled run
    takes the eager run's state, so the next phase starts from identical parameters (Adam's first steps
    are sign-like and would amplify rounding-level differences of near-zero gradients)."""
    eager = make_trainer([], **SMALL)
    comp = make_trainer([], **SMALL, compile="default")
    assert type(eager.accelerator).__name__ == "Accelerator"  # all options off: the loop's plain one
    rt = comp.accelerator.runtime
    assert rt.compiled == [comp.G, comp.D] and speed.is_compiled(comp.G) and not speed.is_compiled(comp.G_ema)
    real, c = next(eager.stream)
    z = torch.randn([real.shape[0], eager.G.z_dim], generator=torch.Generator().manual_seed(3))
    for phase in ("Gmain", "Greg", "Dmain", "Dreg"):
        ge, ue, se = _run_phase(eager, phase, real, z, c)
        gc, uc, sc = _run_phase(comp, phase, real, z, c)
        assert se.keys() == sc.keys() and se, phase
        for k in se:
            assert abs(se[k] - sc[k]) <= 1e-4 * max(1.0, abs(se[k])), (phase, k, se[k], sc[k])
        assert ge.keys() == gc.keys()
        for k in ge:
            assert rel(gc[k], ge[k]) < 1e-4 or (gc[k] - ge[k]).abs().max() < 1e-7, (phase, k, rel(gc[k], ge[k]))
        flat_e = torch.cat([u.flatten() for u in ue.values()])
        flat_c = torch.cat([uc[k].flatten() for k in ue])
        assert rel(flat_c, flat_e) < 1e-3, (phase, rel(flat_c, flat_e))
        for net in ("G", "D"):
            getattr(comp, net).load_state_dict(getattr(eager, net).state_dict())
        comp.G_opt.load_state_dict(copy.deepcopy(eager.G_opt.state_dict()))  # (load_state_dict shares tensors)
        comp.D_opt.load_state_dict(copy.deepcopy(eager.D_opt.state_dict()))
    # and the whole loop step runs compiled (the lazy phases eagerly), with the eager run's state dict keys
    comp.step()
    assert list(comp.G.state_dict()) == list(eager.G.state_dict())


# -------------------------------------------------------------------------------------------------
# How the loop applies the options (its Accelerator)

def _training_state(tr) -> dict:
    d = tr.checkpoint_dict()
    return {k: d[k] for k in ("G", "D", "G_ema", "G_opt", "D_opt", "rng", "cur_nimg", "batch_idx")}


def test_trainer_applies_its_configs_speed_options():
    """A Trainer built from a config with speed options applies them itself (no extra wiring by the caller)."""
    from ganstack.training.loop import Accelerator

    plain = make_trainer([], **SMALL)
    assert type(plain.accelerator) is Accelerator  # all off: the loop's plain accelerator
    tr = make_trainer([], **SMALL, mp_res=1, mp_dtype="bf16", channels_last=True)
    assert isinstance(tr.accelerator, speed.SpeedAccelerator)
    rt = tr.accelerator.runtime
    assert rt.mp_resolutions["G"] == [8] and rt.mp_resolutions["D"] == [8]
    assert tr.G.synthesis.b8.lowp_dtype == torch.bfloat16 and tr.D.b8.lowp_dtype == torch.bfloat16
    assert tr.G.synthesis.b8.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert list(tr.G.state_dict()) == list(plain.G.state_dict())
    tr.step()  # every phase (lazy ones due at step 0) in bf16 blocks
    assert all(torch.isfinite(p).all() for p in tr.G.parameters())
    assert "mp bf16 on 1 highest res" in speed.describe_speed(tr)


def test_speed_scopes_keep_the_training_bitwise_and_find_no_host_sync():
    """--sync-debug (and --tf32, a no-op on a CPU) route the step through the SpeedAccelerator's scopes: the
    training is bitwise the plain loop's, and no step (with or without lazy phases) syncs."""
    kw = dict(SMALL, r1_interval=4)
    runs = []
    for extra in ({}, dict(sync_debug=True, tf32=True)):
        tr = make_trainer([], **kw, **extra)  # (each run reseeds the global RNG: build and train one at a time)
        for _ in range(5):  # steps 0 and 4: Dreg; 0 and 4: Greg
            tr.step()  # with sync_debug a host sync inside the step raises HostSyncError
        runs.append(tr)
    assert isinstance(runs[1].accelerator, speed.SpeedAccelerator)
    assert state_equal(_training_state(runs[0]), _training_state(runs[1]))


def test_double_backward_phases_are_marked():
    """The loop tells its accelerator which phases take a gradient of a gradient: the lazy phases, and a main
    phase that evaluates a regularizer (R1 every step), where compiled networks must run eagerly."""
    from ganstack.training.loop import Accelerator

    class Recording(Accelerator):
        def __init__(self):
            self.seen = []

        def phase(self, name, double_backward):
            self.seen.append((name, double_backward))
            return super().phase(name, double_backward)

    acc = Recording()
    tr = make_trainer([], **SMALL)
    tr = type(tr)(tr.cfg, tr.stack, tr.dataset, device="cpu", log=lambda *_: None, accelerator=acc)
    tr.step()
    tr.step()
    assert acc.seen == [("Gmain", False), ("Greg", True), ("Dmain", False), ("Dreg", True),
                        ("Gmain", False), ("Dmain", False)]
    acc = Recording()
    every = make_trainer([], **SMALL, r1_interval=1)
    every = type(every)(every.cfg, every.stack, every.dataset, device="cpu", log=lambda *_: None, accelerator=acc)
    every.step()
    every.step()
    assert ("Dmain", True) in acc.seen and ("Dreg", True) not in acc.seen


def test_compiled_forward_and_gradients_match_eager(fallback_random):
    torch.manual_seed(0)
    G = Generator(8, 0, 8, 8, 3, mapping_kwargs=dict(num_layers=2),
                  synthesis_kwargs=dict(channel_base=256, channel_max=16)).train()
    D = Discriminator(0, 8, 3, channel_base=256, channel_max=16, epilogue_kwargs=dict(mbstd_group_size=2)).train()
    Gc, Dc = copy.deepcopy(G), copy.deepcopy(D)
    speed.compile_module(Gc)
    speed.compile_module(Dc)
    z = torch.randn(4, 8)
    outs = []
    for g, d in ((G, D), (Gc, Dc)):
        g.requires_grad_(True)
        d.requires_grad_(True)
        torch.manual_seed(1)
        img = g(z, None, style_mixing_prob=0.9)
        logits = d(img, None)
        torch.nn.functional.softplus(-logits).mean().backward()
        outs.append((img.detach(), logits.detach(), {k: p.grad.clone() for k, p in g.named_parameters()},
                     {k: p.grad.clone() for k, p in d.named_parameters()}))
    (i0, l0, gg0, gd0), (i1, l1, gg1, gd1) = outs
    assert rel(i1, i0) < 1e-5 and rel(l1, l0) < 1e-5
    for k in gg0:
        assert rel(gg1[k], gg0[k]) < 1e-4 or gg0[k].abs().max() == 0, k
    for k in gd0:
        assert rel(gd1[k], gd0[k]) < 1e-4 or gd0[k].abs().max() == 0, k
    # inside speed.eager() (R1 / path-length phases) the compiled module runs its eager forward, so
    # a double backward works
    x = i0.clone().requires_grad_(True)
    with speed.eager():
        (g,) = torch.autograd.grad(Dc(x, None).sum(), x, create_graph=True)
        g.square().sum().backward()
    speed.uncompile_module(Gc)
    assert not speed.is_compiled(Gc) and "forward" not in vars(Gc)


@pytest.mark.slow
def test_toy_run_metrics_do_not_regress_with_compile(fallback_random):
    """A short toy run (MLP on 25 Gaussians) compiled reaches the eager run's mixture metrics."""
    from ganstack.metrics.toy import mixture_metrics

    results = []
    for compile_mode in ("off", "default"):
        tr = make_trainer([], data="toy:gaussians25?n=4096", batch=128, mlp_hidden=64, compile=compile_mode)
        for _ in range(300):  # ~38 kimg: eager reaches ~16 of the 25 modes loosely, KL over modes ~0.1
            tr.step()
        x = tr.sample_ema(2000).numpy()
        toy = tr.data_info["toy"]
        results.append(mixture_metrics(x, np.asarray(toy["centers"]), toy["std"]))
    eager, comp = results
    print("toy metrics eager", eager, "compiled", comp)
    assert eager["modes_loose"] >= 8 and eager["kl_modes"] < 0.5  # the run has learned something to compare
    assert comp["modes_loose"] >= eager["modes_loose"] - 2 and comp["modes_covered"] >= eager["modes_covered"] - 2
    assert comp["mean_dist"] <= 1.2 * eager["mean_dist"]
    assert comp["hq_share"] >= eager["hq_share"] - 0.05
    assert comp["kl_modes"] <= eager["kl_modes"] + 0.1


# -------------------------------------------------------------------------------------------------
# Reduced precision and memory format

def _g_d_grads(G, D, z, reals):
    G.requires_grad_(True)
    D.requires_grad_(True)
    for p in list(G.parameters()) + list(D.parameters()):
        p.grad = None
    img = G(z, None, noise_mode="const")  # random noise would be drawn differently per dtype
    loss = torch.nn.functional.softplus(-D(img, None)).mean() + torch.nn.functional.softplus(D(reals, None)).mean()
    loss.backward()
    return (img.detach().float(), D(reals, None).detach().float(),
            {k: p.grad.clone() for k, p in list(G.named_parameters()) + [("D." + k, p) for k, p in D.named_parameters()]
             if p.grad is not None})


def _nets(res=16, clamp=256):
    torch.manual_seed(0)
    G = Generator(16, 0, 16, res, 3, mapping_kwargs=dict(num_layers=2),
                  synthesis_kwargs=dict(channel_base=512, channel_max=32, conv_clamp=clamp)).train()
    D = Discriminator(0, res, 3, channel_base=512, channel_max=32, conv_clamp=clamp,
                      epilogue_kwargs=dict(mbstd_group_size=2)).train()
    return G, D


class _Nets:
    def __init__(self, G, D):
        self.G, self.D = G, D


def test_bf16_blocks_match_fp32_within_tolerance():
    G, D = _nets()
    G2, D2 = copy.deepcopy(G), copy.deepcopy(D)
    cfg = TrainConfig(mp_res=2, mp_dtype="bf16")
    rt = speed.apply_speed_options(_Nets(G2, D2), cfg, "cpu")
    assert rt.mp_resolutions == {"G": [8, 16], "D": [8, 16]}  # the 2 highest; 4x4 and the epilogue stay fp32
    z, reals = torch.randn(4, 16), torch.randn(4, 3, 16, 16)
    img0, l0, g0 = _g_d_grads(G, D, z, reals)
    img1, l1, g1 = _g_d_grads(G2, D2, z, reals)
    assert img1.dtype == torch.float32  # ToRGB output is float32, as in StyleGAN2-ADA
    assert rel(img1, img0) < 0.03 and rel(l1, l0) < 0.03
    # The whole gradient of each network (concatenated) and each weight tensor; scalar noise strengths are
    # sums over pixels with heavy cancellation, which reduced precision cannot resolve (as with fp16).
    for net in ("G", "D"):
        keys = [k for k in g0 if k.startswith("D.") == (net == "D")]
        flat0 = torch.cat([g0[k].flatten() for k in keys])
        flat1 = torch.cat([g1[k].flatten() for k in keys])
        print("bf16 whole-gradient error", net, rel(flat1, flat0))
        assert rel(flat1, flat0) < 0.10, (net, rel(flat1, flat0))
    errs = {k: rel(g1[k], g0[k]) for k in g0 if k.endswith("weight") and g0[k].ndim >= 2}
    print("bf16 weight-gradient errors (largest)", sorted(errs.items(), key=lambda kv: -kv[1])[:3])
    assert max(errs.values()) < 0.20, sorted(errs.items(), key=lambda kv: -kv[1])[:3]
    # one Adam step from identical states moves the parameters the same way
    steps = []
    for g in (g0, g1):
        params = {k: torch.zeros_like(v, requires_grad=True) for k, v in g.items()}
        opt = torch.optim.Adam(list(params.values()), lr=1e-3, betas=(0.0, 0.99), eps=1e-8)
        for k, p in params.items():
            p.grad = g[k].float()
        opt.step()
        steps.append(torch.cat([p.detach().flatten() for p in params.values()]))
    cos = torch.nn.functional.cosine_similarity(steps[0], steps[1], dim=0)
    print("bf16 Adam-update cosine", float(cos))
    assert cos > 0.95, float(cos)
    # the low-precision blocks really run in bf16
    seen = set()
    hook = G2.synthesis.b16.conv1.register_forward_hook(lambda m, i, o: seen.add(o.dtype))
    G2(z, None)
    hook.remove()
    assert seen == {torch.bfloat16}


def test_channels_last_matches_contiguous():
    G, D = _nets(clamp=None)
    G2, D2 = copy.deepcopy(G), copy.deepcopy(D)
    speed.apply_speed_options(_Nets(G2, D2), TrainConfig(channels_last=True), "cpu")
    assert G2.synthesis.b16.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    z, reals = torch.randn(4, 16), torch.randn(4, 3, 16, 16)
    img0, l0, g0 = _g_d_grads(G, D, z, reals)
    img1, l1, g1 = _g_d_grads(G2, D2, z, reals)
    assert rel(img1, img0) < 1e-5 and rel(l1, l0) < 1e-5
    for k in g0:
        assert rel(g1[k], g0[k]) < 1e-4 or g0[k].abs().max() == 0, k


def test_speed_options_validated_with_clear_messages():
    from ganstack.training.api import ConfigError
    from ganstack.training.config import resolve
    from ganstack.stylegan_base.datasets import open_dataset

    info = open_dataset("shapes16?n=32").info()
    cfg = TrainConfig(data="shapes16?n=32", mp_res=4)
    resolve(cfg, info)
    assert cfg.conv_clamp == 256.0  # reduced precision implies StyleGAN2-ADA's conv clamp
    with pytest.raises(ConfigError, match="choose one"):
        resolve(TrainConfig(data="shapes16?n=32", mp_res=4, amp="bf16"), info)
    with pytest.raises(ConfigError, match="--compile must be one of"):
        resolve(TrainConfig(data="shapes16?n=32", compile="fast"), info)
    with pytest.raises(ConfigError, match="CUDA only"):
        resolve(TrainConfig(data="shapes16?n=32", mp_res=2, mp_dtype="fp16", device="cpu"), info)
    pts = open_dataset("toy:gaussians25?n=64").info()
    with pytest.raises(ConfigError, match="image backbones"):
        resolve(TrainConfig(data="toy:gaussians25?n=64", channels_last=True), pts)
    assert TrainConfig.from_dict(TrainConfig().to_dict()).compile == "off"
    from ganstack.training.cli import RESUME_MUTABLE, make_train_command
    flags = {o for p in make_train_command({}).params for o in p.opts}
    assert {"--compile", "--mp-res", "--mp-dtype", "--channels-last", "--tf32", "--sync-debug", "--threads"} <= flags
    assert "compile" in RESUME_MUTABLE and "mp_res" not in RESUME_MUTABLE  # precision changes the model's math


# -------------------------------------------------------------------------------------------------
# ops formulations

def _count_ops(fn):
    from collections import Counter

    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.c = Counter()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.c[str(func.overloadpacket)] += 1
            return func(*args, **(kwargs or {}))

    m = Count()
    with m:
        fn()
    return m.c


@pytest.mark.parametrize("resample", ["down", "up"])
def test_fir_double_backward_has_no_per_channel_convs(resample):
    """R1 / path length backpropagate through gradients of every FIR. PyTorch's double backward of a
    grouped (depthwise) conv runs one conv per channel; the FIR's own adjoint backward does not."""
    C = 32
    f = ops.setup_filter([1, 3, 3, 1])
    w = torch.randn(C, 3, 3, 3, requires_grad=True)
    img = torch.randn(2, 3, 8, 8)
    dw = f.flip([0, 1])[None, None].repeat(C, 1, 1, 1)

    def plain(h):  # the FIR as autograd sees a plain grouped conv (what a straightforward port does)
        if resample == "down":
            return torch.nn.functional.conv2d(torch.nn.functional.pad(h, [1, 1, 1, 1]), dw, stride=2, groups=C)
        return torch.nn.functional.conv_transpose2d(h, dw * 4, stride=2, padding=1, groups=C)

    def ours(h, impl="auto"):
        return ops.downsample2d(h, f, impl=impl) if resample == "down" else ops.upsample2d(h, f, impl=impl)

    def r1(fir):
        x = img.clone().requires_grad_(True)
        y = fir(torch.nn.functional.conv2d(x, w, padding=1))
        (g,) = torch.autograd.grad(y.square().sum(), x, create_graph=True)
        g.square().sum().backward()
        out = w.grad.clone()
        w.grad = None
        return out

    counts, grads = {}, {}
    for name, fir in (("plain", plain), ("ours", ours), ("ref", lambda h: ours(h, "ref"))):
        counts[name] = _count_ops(lambda fir=fir, name=name: grads.__setitem__(name, r1(fir)))
    assert torch.allclose(grads["ours"], grads["ref"], rtol=1e-4, atol=1e-5)
    assert torch.allclose(grads["plain"], grads["ref"], rtol=1e-4, atol=1e-5)
    assert counts["plain"]["aten.convolution"] >= C  # the per-group loop the adjoint FIR avoids
    assert counts["ours"]["aten.convolution"] < 12


def test_prepared_filter_is_cached_and_follows_updates():
    f = ops.setup_filter([1, 3, 3, 1])
    x = torch.randn(1, 2, 8, 8)
    a = ops.filter2d(x, f)
    calls = _count_ops(lambda: ops.filter2d(x, f))
    assert calls["aten.flip"] == 0 and calls["aten.repeat"] == 0 and calls["aten._to_copy"] == 0
    with torch.no_grad():
        f.mul_(2)  # an in-place update (load_state_dict does this) must not reuse the stale weight
    assert torch.allclose(ops.filter2d(x, f), 2 * a, atol=1e-6)


def test_gain_folding_keeps_layer_outputs_and_grads():
    """Conv2dLayer / FullyConnectedLayer fold their equalized-lr gains into the bias-add in eager mode;
    outputs and gradients equal the plain formulation (scaled weight, scaled bias, then bias_act)."""
    torch.manual_seed(0)
    for layer, x in ((ops.Conv2dLayer(8, 8, 3, activation="lrelu", down=2, conv_clamp=5), torch.randn(2, 8, 8, 8)),
                     (ops.FullyConnectedLayer(8, 8, activation="lrelu", lr_multiplier=0.01, bias_init=0.3),
                      torch.randn(4, 8)),
                     (ops.FullyConnectedLayer(8, 8, lr_multiplier=0.5, bias_init=1), torch.randn(4, 8))):
        with torch.no_grad():
            if layer.bias is not None:
                layer.bias.normal_()
        x = x.requires_grad_(True)
        y = layer(x)
        gy = torch.randn_like(y)
        gx, gw = torch.autograd.grad(y, [x, layer.weight], gy)
        # the unfolded formula, written out
        w = layer.weight * layer.weight_gain
        if isinstance(layer, ops.Conv2dLayer):
            want = ops.bias_act(ops.conv2d_resample(x, w, f=layer.resample_filter, down=2, padding=1), layer.bias,
                                act="lrelu", clamp=5)
        else:
            b = layer.bias * layer.bias_gain
            want = ops.bias_act(x @ w.t(), b, act=layer.activation)
        wx, ww = torch.autograd.grad(want, [x, layer.weight], gy)
        assert torch.allclose(y, want, rtol=1e-5, atol=1e-6)
        assert torch.allclose(gx, wx, rtol=1e-5, atol=1e-6) and torch.allclose(gw, ww, rtol=1e-5, atol=1e-6)


def test_benchmark_reference_formulation_computes_the_same_networks():
    """benchmarks/bench_op_counts.py's re-implementation of the official reference ops runs the same
    G and D to the same outputs and gradients (so its operator counts compare like with like)."""
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    import bench_op_counts

    G, D = _nets(res=8, clamp=256)
    z, reals = torch.randn(4, 16), torch.randn(4, 3, 8, 8)
    img0, l0, g0 = _g_d_grads(G, D, z, reals)
    with bench_op_counts.reference_formulation():
        img1, l1, g1 = _g_d_grads(G, D, z, reals)
    assert rel(img1, img0) < 1e-5 and rel(l1, l0) < 1e-5
    for k in g0:
        assert rel(g1[k], g0[k]) < 1e-4 or g0[k].abs().max() == 0, k


# -------------------------------------------------------------------------------------------------
# Host syncs

def test_sync_recorder_and_sync_debug_on_cpu():
    x = torch.randn(4)
    with speed.record_host_syncs() as events:
        x.sum().item()
        x.tolist()
        bool(x[0] > 0)
        x[x > 0]
        torch.nonzero(x)
    kinds = [w for w, _ in events]
    assert any(".item()" in k for k in kinds) and ".tolist()" in kinds
    assert "boolean-mask indexing" in kinds and any("nonzero" in k for k in kinds)
    assert all("test_speed.py" in where for _, where in events)
    with pytest.raises(speed.HostSyncError, match="test_speed.py"):
        with speed.sync_debug("cpu"):
            float(x.sum())
    (x * 2).sum()  # outside the scope nothing is watched


def test_host_syncs_of_an_ada_step_are_the_two_known_ones_and_both_tools_agree(monkeypatch):
    """A whole image training step (every phase) with ADA: the sync recorder (dispatch level) and the plugin-API
    test's counter of host reads (tests/test_plugin_api.py) find the same places, and those are only ADA's
    geometric pipeline, which needs the batch's transforms on the host: whether any was drawn (the shortcut
    that skips the resampling) and the reflect-padding margins (``F.pad`` takes ints; StyleGAN2-ADA syncs
    there too). Nothing from the loop, the backbone or training/speed.py."""
    from test_plugin_api import _count_host_reads

    tr = make_trainer(["ada"], {"ada": {"p": "0.5", "adaptive": "false"}}, **SMALL)
    tr.step()
    counts = _count_host_reads(monkeypatch)
    tr.step()  # batch_idx 1: Gmain, Dmain
    monkeypatch.undo()
    with speed.record_host_syncs() as events:  # (the two tools wrap the same methods: one step each)
        tr.step()  # batch_idx 2: the same phases

    def places(wheres):
        return {os.path.relpath(w.split(" ")[0], ROOT) for w in wheres}
    recorded = places(where for _, where in events)
    counted = places(counts["where"])
    assert recorded == counted, (recorded, counted)
    assert {p.split(":")[0] for p in recorded} == {os.path.join("plugins", "ada.py")}, recorded
    assert {w.split("(")[-1] for _, w in events} == {"_geometric)", "warp)"}, events


# -------------------------------------------------------------------------------------------------
# Threads and the GPU script

def test_default_threads():
    assert speed.default_threads(1, cpus=8, kind="points") == 1
    assert speed.default_threads(1, cpus=8) == 8 and speed.default_threads(3, cpus=8) == 2
    assert speed.default_threads(16, cpus=2) == 1
    before = torch.get_num_threads()
    try:
        assert speed.configure_threads(1) == 1
    finally:
        torch.set_num_threads(before)
    # the CLI sets the OpenMP wait policy before torch loads (a user's own setting wins)
    code = "import os, ganstack.training.cli; print(os.environ.get('OMP_WAIT_POLICY'))"
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.stdout.strip() == "PASSIVE", out.stderr[-500:]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env=dict(env, OMP_WAIT_POLICY="ACTIVE"))
    assert out.stdout.strip() == "ACTIVE"


@pytest.mark.slow
def test_gpu_script_smoke_mode(tmp_path):
    """benchmarks/gpu_speed.py --smoke runs every row kind on tiny configs on the CPU, within budget,
    and writes its JSON."""
    env = dict(os.environ, OUT=str(tmp_path), OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    r = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "gpu_speed.py"), "--smoke", "--budget-s", "400"],
                       capture_output=True, text=True, env=env, timeout=900, cwd=str(tmp_path))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    import json
    res = json.load(open(tmp_path / "gpu_speed.json"))
    assert res["device"] and res["command"].startswith("python")
    kinds = {row["variant"] for row in res["throughput"]}
    assert {"eager", "compiled", "bf16"} <= kinds
    assert {row["stack"] for row in res["plugins"]} >= {"none", "diffusion", "smart", "clr", "diffusion,smart,clr"}
    assert "s/kimg" in r.stdout and "overhead" in r.stdout
