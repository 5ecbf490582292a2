"""Operators dispatched per training step (torch.profiler), a proxy for kernel launches.

At 32x32 StyleGAN2 training is bound by kernel launches, not arithmetic, so the number of operators
a step dispatches is what the speed work has to bring down. This counts, for one config, the whole
loop step (every phase, optimizer steps, G_ema, statistics) of the real ``Trainer``, for

* ``ganstack eager``: the ops of ``stylegan_base/ops.py`` as they run by default;
* ``ganstack compiled``: ``--compile default`` (inductor; generated kernels are counted one each,
  library calls such as convolutions and matmuls one each);
* ``reference``: the same networks and step, with the layer functions replaced by a re-implementation
  of the official StyleGAN2-ADA / StyleGAN3 pure-PyTorch reference paths (``torch_utils/ops``:
  ``upfirdn2d._upfirdn2d_ref``, ``bias_act._bias_act_ref``, ``conv2d_resample``, ``fma``, and
  ``training/networks.py``'s ``modulated_conv2d`` and layer forwards). It is written here from the
  facts of that code (its algorithm and op sequence), not copied. This is what the official code runs
  when its CUDA kernels are not built ("3.3 s/kimg" on an H200 in DESIGN.md).

Two numbers per row:

* ``dispatched``: top-level aten operators, i.e. what Python and the autograd engine ask for (views
  and no-op casts included);
* ``kernels``: leaf operators that do work (no views, reshapes, no-op ``.to``, allocations), plus
  each generated kernel of a compiled graph: the proxy for GPU kernel launches.

Counts do not depend on the batch size (``--check-batch`` verifies it) nor on the channel widths, so a
CPU can count the CIFAR-like config (cbase 32768, map 2, mbstd 32) at batch 4. Steps differ by their
lazy phases (R1 every 16 steps, path length every 4); the table gives a plain step, the reg phases,
and the mean over a 16-step period.

    python benchmarks/bench_op_counts.py                          # cifar@32, eager + reference
    python benchmarks/bench_op_counts.py --variants eager,reference,compiled --configs cifar:32,paper256:256
    python benchmarks/bench_op_counts.py --check-batch 4,8        # counts equal across batch sizes
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from ganstack.stylegan_base import networks, ops  # noqa: E402

# =================================================================================================
# Reference formulation: the official StyleGAN2-ADA pure-PyTorch paths, re-implemented (see above).
# Same call structure and op sequence: zero-insertion upfirdn2d, unfused bias/act/gain/clamp, fma
# as an autograd.Function over addcmul, per-sample [N, O, I, k, k] weights for the demodulation.
# (conv2d_gradfix falls back to F.conv2d / F.conv_transpose2d on PyTorch >= 1.11.)
# =================================================================================================


# upfirdn2d, upsample2d, downsample2d, conv2d_resample: ganstack's own literal reference path
# (``ops.reference_ops()``: ``ops.upfirdn2d_ref``, zero insertion + pad/crop + depthwise FIR conv(s) +
# subsample, exactly ``_upfirdn2d_ref``; ``conv2d_resample`` keeps the official fast-path logic, which
# ganstack shares, and calls it).


def ref_bias_act(x, b=None, dim=1, act='linear', alpha=None, gain=None, clamp=None):
    """Reference ``_bias_act_ref``: add, activation, gain, clamp as separate ops."""
    spec = ops.activation_funcs[act]
    alpha = float(alpha if alpha is not None else spec.def_alpha)
    gain = float(gain if gain is not None else spec.def_gain)
    clamp = float(clamp if clamp is not None else -1)
    if b is not None:
        x = x + b.reshape([-1 if i == dim else 1 for i in range(x.ndim)])
    x = spec.func(x, alpha)
    if gain != 1:
        x = x * gain
    if clamp >= 0:
        x = x.clamp(-clamp, clamp)
    return x


class _RefFMA(torch.autograd.Function):
    """Reference ``fma.fma``: ``a * b + c`` as addcmul with a hand-written, unbroadcasting backward."""

    @staticmethod
    def forward(ctx, a, b, c):
        out = torch.addcmul(c, a, b)
        ctx.save_for_backward(a, b)
        ctx.c_shape = c.shape
        return out

    @staticmethod
    def backward(ctx, dout):
        a, b = ctx.saved_tensors
        da = db = dc = None
        if ctx.needs_input_grad[0]:
            da = _unbroadcast(dout * b, a.shape)
        if ctx.needs_input_grad[1]:
            db = _unbroadcast(dout * a, b.shape)
        if ctx.needs_input_grad[2]:
            dc = _unbroadcast(dout, ctx.c_shape)
        return da, db, dc


def _unbroadcast(x, shape):
    extra = x.ndim - len(shape)
    dims = [i for i in range(x.ndim) if x.shape[i] > 1 and (i < extra or shape[i - extra] == 1)]
    if dims:
        x = x.sum(dim=dims, keepdim=True)
    if extra:
        x = x.reshape(-1, *x.shape[extra + 1:])
    return x


def ref_conv2d_resample(*args, **kwargs):
    with ops.reference_ops():
        return ops.conv2d_resample(*args, **kwargs)


def ref_modulated_conv2d(x, weight, styles, noise=None, up=1, down=1, padding=0, resample_filter=None,
                         demodulate=True, flip_weight=True, fused_modconv=True):
    """Reference ``modulated_conv2d``: per-sample weights for the demodulation coefficients, fma."""
    N = x.shape[0]
    O, I, kh, kw = weight.shape
    if x.dtype == torch.float16 and demodulate:
        weight = weight * (1 / math.sqrt(I * kh * kw) / weight.norm(float('inf'), dim=[1, 2, 3], keepdim=True))
        styles = styles / styles.norm(float('inf'), dim=1, keepdim=True)
    w = dcoefs = None
    if demodulate or fused_modconv:
        w = weight.unsqueeze(0) * styles.reshape(N, 1, -1, 1, 1)
    if demodulate:
        dcoefs = (w.square().sum(dim=[2, 3, 4]) + 1e-8).rsqrt()
    if demodulate and fused_modconv:
        w = w * dcoefs.reshape(N, -1, 1, 1, 1)
    if not fused_modconv:
        x = x * styles.to(x.dtype).reshape(N, -1, 1, 1)
        x = ref_conv2d_resample(x, weight.to(x.dtype), f=resample_filter, up=up, down=down, padding=padding,
                                flip_weight=flip_weight)
        if demodulate and noise is not None:
            x = _RefFMA.apply(x, dcoefs.to(x.dtype).reshape(N, -1, 1, 1), noise.to(x.dtype))
        elif demodulate:
            x = x * dcoefs.to(x.dtype).reshape(N, -1, 1, 1)
        elif noise is not None:
            x = x.add_(noise.to(x.dtype))
        return x
    x = x.reshape(1, -1, *x.shape[2:])
    w = w.reshape(-1, I, kh, kw)
    x = ref_conv2d_resample(x, w.to(x.dtype), f=resample_filter, up=up, down=down, padding=padding, groups=N,
                            flip_weight=flip_weight)
    x = x.reshape(N, -1, *x.shape[2:])
    if noise is not None:
        x = x.add_(noise)
    return x


def _ref_fc_forward(self, x):
    w = self.weight.to(x.dtype) * self.weight_gain
    b = self.bias
    if b is not None:
        b = b.to(x.dtype)
        if self.bias_gain != 1:
            b = b * self.bias_gain
    if self.activation == 'linear' and b is not None:
        return torch.addmm(b.unsqueeze(0), x, w.t())
    x = x.matmul(w.t())
    return ref_bias_act(x, b, act=self.activation)


def _ref_conv_layer_forward(self, x, gain=1):
    w = self.weight * self.weight_gain
    b = self.bias.to(x.dtype) if self.bias is not None else None
    x = ref_conv2d_resample(x, w.to(x.dtype), f=self.resample_filter, up=self.up, down=self.down,
                            padding=self.padding, flip_weight=(self.up == 1))
    act_clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
    return ref_bias_act(x, b, act=self.activation, gain=self.act_gain * gain, clamp=act_clamp)


def _ref_synthesis_layer_forward(self, x, w, noise_mode='random', fused_modconv=True, gain=1):
    styles = self.affine(w)
    noise = None
    if self.use_noise and noise_mode == 'random':
        noise = torch.randn([x.shape[0], 1, self.resolution, self.resolution], device=x.device) * self.noise_strength
    if self.use_noise and noise_mode == 'const':
        noise = self.noise_const * self.noise_strength
    x = ref_modulated_conv2d(x, self.weight, styles, noise=noise, up=self.up, padding=self.padding,
                             resample_filter=self.resample_filter, flip_weight=(self.up == 1),
                             fused_modconv=fused_modconv)
    act_clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
    return ref_bias_act(x, self.bias.to(x.dtype), act=self.activation, gain=self.act_gain * gain, clamp=act_clamp)


def _ref_torgb_forward(self, x, w, fused_modconv=True):
    styles = self.affine(w) * self.weight_gain
    x = ref_modulated_conv2d(x, self.weight, styles, demodulate=False, fused_modconv=fused_modconv)
    return ref_bias_act(x, self.bias.to(x.dtype), clamp=self.conv_clamp)


@contextlib.contextmanager
def reference_formulation():
    """Run the ganstack networks with the reference layer functions above (same parameters)."""
    patches = [
        (networks, "modulated_conv2d", ref_modulated_conv2d), (networks, "bias_act", ref_bias_act),
        (ops.FullyConnectedLayer, "forward", _ref_fc_forward), (ops.Conv2dLayer, "forward", _ref_conv_layer_forward),
        (networks.SynthesisLayer, "forward", _ref_synthesis_layer_forward),
        (networks.ToRGBLayer, "forward", _ref_torgb_forward),
    ]
    saved = [(obj, name, getattr(obj, name)) for obj, name, _ in patches]
    for obj, name, fn in patches:
        setattr(obj, name, fn)
    try:
        with ops.reference_ops():  # every upfirdn2d (networks' up/downsampling, ADA's too) -> reference
            yield
    finally:
        for obj, name, fn in saved:
            setattr(obj, name, fn)


# =================================================================================================
# Counting
# =================================================================================================

# Leaf operators that launch no kernel: views, metadata, allocations, no-op casts.
NO_KERNEL = {
    "aten::view", "aten::reshape", "aten::_reshape_alias", "aten::as_strided", "aten::t", "aten::transpose",
    "aten::permute", "aten::unsqueeze", "aten::squeeze", "aten::expand", "aten::expand_as", "aten::slice",
    "aten::select", "aten::narrow", "aten::unbind", "aten::split", "aten::split_with_sizes", "aten::chunk",
    "aten::detach", "aten::detach_", "aten::alias", "aten::_unsafe_view", "aten::flatten", "aten::unflatten",
    "aten::view_as", "aten::contiguous", "aten::to", "aten::type_as", "aten::empty", "aten::empty_like",
    "aten::empty_strided", "aten::resize_", "aten::resize_as_", "aten::lift_fresh", "aten::result_type",
    "aten::resolve_conj", "aten::resolve_neg", "aten::conj", "aten::_nnpack_available", "aten::as_strided_",
    "aten::set_", "aten::_has_compatible_shallow_copy_type", "aten::is_nonzero", "aten::numpy_T",
    "aten::requires_grad_", "aten::retain_grad", "aten::_version", "aten::is_same_size", "aten::size",
    "aten::stride", "aten::dim", "aten::item", "aten::broadcast_tensors", "aten::align_to", "aten::movedim",
    "aten::swapaxes", "aten::matrix_H", "aten::mT", "aten::_shape_as_tensor", "aten::lift",
    "aten::_local_scalar_dense",  # counted as a host sync elsewhere, not a kernel
    "aten::record_stream", "aten::promote_types", "aten::new_empty_strided", "aten::new_empty",
}
_KERNEL_NS = ("aten::", "mkldnn::", "inductor::", "prims::", "quantized::", "_c10d_functional::", "c10d::")


def _is_op(name: str) -> bool:
    return name.startswith(_KERNEL_NS)


def _is_generated_kernel(name: str) -> bool:
    return "cpp_fused" in name or name.startswith(("triton_", "graph_")) and "fused" in name


_COMPOSITE: dict = {}


def _is_composite(name: str) -> bool:
    """True for CompositeImplicitAutograd operators (``aten::linear``, ``aten::to``, ``aten::reshape``...):
    wrappers whose work is done by the operators they call. Every other operator is one backend kernel
    call (its own helpers, e.g. the CPU's scalar copies inside ``aten::mul``, are not GPU launches)."""
    if name not in _COMPOSITE:
        ns, _, op = name.partition("::")
        packet = getattr(getattr(torch.ops, ns, None), op, None)
        comp = False
        if packet is not None:
            try:
                first = getattr(packet, packet.overloads()[0])
                comp = first.has_kernel_for_dispatch_key(torch._C.DispatchKey.CompositeImplicitAutograd)
            except (IndexError, AttributeError, RuntimeError):
                comp = False
        _COMPOSITE[name] = comp
    return _COMPOSITE[name]


def _kernels_in(e) -> int:
    name = e.name
    if _is_generated_kernel(name):
        return 1
    if _is_op(name) and not _is_composite(name):
        return 0 if name in NO_KERNEL else 1
    return sum(_kernels_in(c) for c in e.cpu_children)


def _nested_in_op(e) -> bool:
    p = e.cpu_parent
    while p is not None:
        if _is_op(p.name) or _is_generated_kernel(p.name):
            return True
        p = p.cpu_parent
    return False


def count_events(events) -> dict:
    """``{'dispatched', 'kernels'}`` over profiler ``FunctionEvent`` objects (CPU activity).

    ``dispatched``: operators not nested in another operator. ``kernels``: per top-level operator (or
    generated kernel), the backend operators inside it (through composite wrappers, see :func:`_is_composite`)."""
    dispatched = kernels = syncs = 0
    for e in events:
        if e.name == "aten::_local_scalar_dense":
            syncs += 1
        if not (_is_op(e.name) or _is_generated_kernel(e.name)) or _nested_in_op(e):
            continue
        if _is_op(e.name):
            dispatched += 1
        kernels += _kernels_in(e)
    return dict(dispatched=dispatched, kernels=kernels, item_syncs=syncs)


def _section_of(e) -> str:
    p = e
    while p is not None:
        if p.name.startswith("section:"):
            return p.name[len("section:"):]
        p = p.cpu_parent
    return "other"


def profile_step(trainer) -> dict:
    """Counts of one ``trainer.step()``, in total and per section (phase, optimizer, ema, stats, ...)."""
    from torch.profiler import ProfilerActivity, profile, record_function

    restore = []

    def wrap(obj, attr, label_fn):
        inner = getattr(obj, attr)

        def wrapped(*a, **k):
            with record_function("section:" + label_fn(*a, **k)):
                return inner(*a, **k)

        setattr(obj, attr, wrapped)
        restore.append((obj, attr, inner))

    wrap(trainer.loss, "accumulate_gradients", lambda ctx, *a, **k: ctx.phase)
    wrap(trainer.G_opt, "step", lambda *a, **k: "G_opt.step")
    wrap(trainer.D_opt, "step", lambda *a, **k: "D_opt.step")
    wrap(trainer.stats, "end_step", lambda *a, **k: "stats.end_step")
    import ganstack.training.loop as loop_mod
    wrap(loop_mod, "update_ema", lambda *a, **k: "G_ema update")
    try:
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            trainer.step()
    finally:
        for obj, attr, inner in reversed(restore):
            setattr(obj, attr, inner)
    events = list(prof.events())
    by_section: dict[str, list] = {}
    for e in events:
        by_section.setdefault(_section_of(e), []).append(e)
    out = {"total": count_events(events)}
    for sec, evs in by_section.items():
        out[sec] = count_events(evs)
    return out


def make_trainer(preset: str, res: int, batch: int, plugins=(), options=None, device="cpu", cbase=None,
                 cmax=None, speed_overrides=None, dynamic=False):
    from ganstack.stylegan_base.datasets import open_dataset
    from ganstack.training.config import TrainConfig, resolve
    from ganstack.training.loop import Trainer
    from ganstack.training.plugin_manager import PluginStack

    data = f"shapes{res}?n={max(64, 2 * batch)}"
    kw = dict(data=data, cfg=preset, batch=batch, workers=0)
    if cbase:
        kw["cbase"] = cbase
    if cmax:
        kw["cmax"] = cmax
    cfg = TrainConfig(**kw)
    cfg.mark_user_set(kw)
    for k, v in (speed_overrides or {}).items():
        setattr(cfg, k, v)
    ds = open_dataset(data, use_labels=False)
    resolve(cfg, ds.info())
    stack = PluginStack(list(plugins), options or {})
    stack.configure(cfg)
    from ganstack.training import speed  # the accelerator Trainer would pick, with torch.compile's ``dynamic``
    acc = speed.accelerator_for(cfg, device)
    if acc is not None:
        acc.dynamic = dynamic
    return Trainer(cfg, stack, ds, run_dir=None, device=device, log=lambda *_: None, accelerator=acc)


def set_foreach(trainer) -> None:
    """Use the multi-tensor Adam on CPU too: it is what torch picks by default for CUDA parameters, so
    the optimizer's count is the one a GPU run has."""
    for opt in (trainer.G_opt, trainer.D_opt):
        for g in opt.param_groups:
            g["foreach"] = True


def count_variant(variant: str, preset: str, res: int, batch: int, plugins=(), options=None, dynamic=False,
                  mode="default") -> dict:
    """Counts for a plain step and for a step with every lazy phase, after warm-up (compiles)."""
    torch.manual_seed(0)
    tr = make_trainer(preset, res, batch, plugins, options,
                      speed_overrides=dict(compile=mode) if variant == "compiled" else None, dynamic=dynamic)
    set_foreach(tr)
    ctx = reference_formulation() if variant == "reference" else contextlib.nullcontext()
    with ctx:
        # warm-up: a step with every lazy phase (compiles every graph) and a plain one
        tr.step()
        tr.step()
        period = math.lcm(*[r.interval for r in tr.regularizers]) if tr.regularizers else 1
        tr.batch_idx = period * 2  # every lazy phase is due
        lazy = profile_step(tr)
        plain = profile_step(tr)  # batch_idx = 2 * period + 1: no lazy phase
    out = dict(plain=plain, lazy=lazy, intervals={r.name: (r.net, r.interval) for r in tr.regularizers})
    if variant == "compiled":
        from torch._dynamo.utils import counters
        out["graphs"] = dict(counters["stats"])  # unique_graphs: compiled graphs over the whole run
    return out


def period_mean(res: dict, key: str) -> float:
    """Mean count per step over the lazy period: plain step + each reg phase / its interval share."""
    plain, lazy = res["plain"], res["lazy"]
    total = plain["total"][key]
    # The reg phase of a net runs on the steps where any of its intervals divides the step.
    for net in ("G", "D"):
        ks = [k for (n, k) in res["intervals"].values() if n == net and k > 1]
        sec = lazy.get(f"{net}reg")
        if not ks or sec is None:
            continue
        period = math.lcm(*ks)
        share = sum(1 for s in range(period) if any(s % k == 0 for k in ks)) / period
        opt = lazy.get(f"{net}_opt.step", {key: 0})[key] - plain.get(f"{net}_opt.step", {key: 0})[key]
        total += share * (sec[key] + opt)
    return total


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--configs", default="cifar:32", help="preset:resolution,... (cifar:32, paper256:256)")
    ap.add_argument("--variants", default="eager,reference", help="eager, reference, compiled")
    ap.add_argument("--batch", type=int, default=4, help="counts do not depend on it (see --check-batch)")
    ap.add_argument("--plugins", default="", help="plugin stack for every variant, e.g. ada")
    ap.add_argument("--dynamic", default="false", choices=["false", "auto"], help="compiled: dynamic shapes")
    ap.add_argument("--mode", default="default", help="compiled: torch.compile mode")
    ap.add_argument("--check-batch", default=None, help="e.g. 4,8: count eager at these batches and compare")
    ap.add_argument("--json", default=None, help="write the results here")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    import torch._inductor.config as inductor_config
    inductor_config.cpp.enable_kernel_profile = True  # generated kernels show up in the profile
    plugins = [p for p in args.plugins.split(",") if p]
    options = {"ada": {"p": "0.6", "adaptive": "false"}} if "ada" in plugins else {}
    results = {}
    if args.check_batch:
        batches = [int(b) for b in args.check_batch.split(",")]
        for spec in args.configs.split(","):
            preset, res = spec.split(":")
            counts = {b: count_variant("eager", preset, int(res), b, plugins, options) for b in batches}
            row = {b: (c["plain"]["total"], c["lazy"]["total"]) for b, c in counts.items()}
            same = len({json.dumps(v, sort_keys=True) for v in row.values()}) == 1
            print(f"{spec}: eager counts at batch {batches}: {row} -> {'identical' if same else 'DIFFERENT'}")
            results[f"check_batch:{spec}"] = dict(row=row, identical=same)
    for spec in args.configs.split(","):
        preset, res = spec.split(":")
        for variant in args.variants.split(","):
            r = count_variant(variant, preset, int(res), args.batch, plugins, options,
                              dynamic=None if args.dynamic == "auto" else False, mode=args.mode)
            results[f"{spec}:{variant}"] = r
            print_row(spec, variant, r)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1, default=str)
    print_table(results)


def print_row(spec, variant, r):
    p = r["plain"]
    secs = ", ".join(f"{k} {v['kernels']}" for k, v in sorted(p.items()) if k != "total")
    regs = ", ".join(f"{k} {v['kernels']}" for k, v in sorted(r["lazy"].items()) if k.endswith("reg"))
    print(f"[{spec} {variant}] plain step: dispatched {p['total']['dispatched']}, kernels {p['total']['kernels']} "
          f"({secs}); lazy phases (kernels): {regs}", flush=True)


def print_table(results):
    rows = [(k, v) for k, v in results.items() if not k.startswith("check_batch")]
    if not rows:
        return
    print("\n| config | variant | plain step: dispatched | plain step: kernels | mean over lazy period: dispatched "
          "| mean over lazy period: kernels | of which G fwd+bwd (Gmain) | D (Dmain) | optimizers | G_ema | stats |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for key, r in rows:
        spec, variant = key.rsplit(":", 1)
        p = r["plain"]
        g = lambda s: p.get(s, {"kernels": 0})["kernels"]  # noqa: E731
        print(f"| {spec} | {variant} | {p['total']['dispatched']} | {p['total']['kernels']} | "
              f"{period_mean(r, 'dispatched'):.0f} | {period_mean(r, 'kernels'):.0f} | {g('Gmain')} | {g('Dmain')} | "
              f"{g('G_opt.step') + g('D_opt.step')} | {g('G_ema update')} | {g('stats.end_step')} |")


if __name__ == "__main__":
    main()
