"""Micro- and network-level benchmarks for stylegan_base ops.

Measures forward+backward time on the present device (CUDA if available, else CPU):

* upsample2d / downsample2d / the FIR after an upsampling conv / modulated_conv2d:
  our fast paths vs the zero-insertion reference path (``impl='ref'`` /
  ``ops.reference_ops()``), which is what the official code does without its CUDA kernels;
* a full G+D training-style step (G forward with style mixing, D on fakes and reals,
  backward) for a CIFAR-like 32x32 config: fast ops vs reference ops, and on CUDA also
  under ``torch.compile``.

All ratios are measured within the same run. Usage::

    python benchmarks/bench_ops.py                # auto device, sensible sizes
    python benchmarks/bench_ops.py --compile      # also torch.compile on CPU
    python benchmarks/bench_ops.py --amp --channels-last   # bf16 autocast, NHWC (CUDA)

On CPU the network config is reduced (channel_max 128) so the run takes seconds;
pass --channel-max 512 for the full CIFAR width.
"""

import argparse
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ganstack.stylegan_base import ops  # noqa: E402
from ganstack.stylegan_base.networks import Discriminator, Generator  # noqa: E402


def sync(device):
    if device.type == 'cuda':
        torch.cuda.synchronize()


def timeit(fn, device, iters, warmup=2):
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    # GPU: median. CPU: minimum, which is far less sensitive to other processes on a shared box.
    return (statistics.median(times) if device.type == 'cuda' else min(times)) * 1e3


def stat(device):
    return 'median' if device.type == 'cuda' else 'min'


def row(name, ms, base=None):
    ratio = f'{base / ms:6.2f}x vs ref' if base else ''
    print(f'  {name:<44s} {ms:9.3f} ms  {ratio}')


def bench_ops(device, args):
    print(f'\n[ops] forward+backward, batch {args.op_batch}, {args.op_channels} channels, '
          f'{args.op_res}x{args.op_res}, {stat(device)} of {args.iters}')
    N, C, R = args.op_batch, args.op_channels, args.op_res
    f = ops.setup_filter([1, 3, 3, 1], device=device)
    mf = torch.channels_last if args.channels_last else torch.contiguous_format
    amp = torch.autocast(device.type, dtype=torch.bfloat16) if args.amp else nullcontext()

    def make(shape):
        return torch.randn(shape, device=device).to(memory_format=mf).requires_grad_(True)

    x_lo = make([N, C, R // 2, R // 2])
    x_hi = make([N, C, R, R])
    x_ct = make([N, C, R + 1, R + 1])  # what the FIR after a stride-2 transposed 3x3 conv sees
    weight = torch.randn([C, C, 3, 3], device=device, requires_grad=True)
    styles = torch.randn([N, C], device=device, requires_grad=True)

    cases = {
        'upsample2d': lambda impl: ops.upsample2d(x_lo, f, impl=impl),
        'downsample2d': lambda impl: ops.downsample2d(x_hi, f, impl=impl),
        'FIR after up-conv (upfirdn2d up=1, pad 1)': lambda impl: ops.upfirdn2d(x_ct, f, padding=1, gain=4, impl=impl),
    }
    for name, fn in cases.items():
        def step(impl, fn=fn):
            with amp:
                y = fn(impl)
            y.float().square().mean().backward()
        ref = timeit(lambda: step('ref'), device, args.iters)
        row(f'{name} [ref]', ref)
        for impl in ('conv', 'taps'):
            if name == 'upsample2d' and impl == 'taps':
                continue  # up > 1 always runs as a transposed conv
            row(f'{name} [{impl}]', timeit(lambda impl=impl: step(impl), device, args.iters), ref)

    for up in (1, 2):
        xin = x_lo if up == 2 else x_hi

        def step(fused, xin=xin, up=up):
            with amp:
                y = ops.modulated_conv2d(xin, weight, styles, up=up, padding=1, resample_filter=f,
                                         flip_weight=(up == 1), fused_modconv=fused)
            y.float().square().mean().backward()

        with ops.reference_ops():
            ref = timeit(lambda: step(False), device, args.iters)
        row(f'modulated_conv2d up={up} non-fused [ref ops]', ref)
        row(f'modulated_conv2d up={up} non-fused [fast]', timeit(lambda: step(False), device, args.iters), ref)
        row(f'modulated_conv2d up={up} fused [fast]', timeit(lambda: step(True), device, args.iters), ref)


def bench_networks(device, args):
    cb, cm, batch = args.channel_base, args.channel_max, args.batch
    print(f'\n[G+D] 32x32 cifar-like: z=w=512, map 2, channel_base {cb}, channel_max {cm}, resnet D, '
          f'mbstd {args.mbstd}, batch {batch}, style mixing 0.9, amp={args.amp}, '
          f'channels_last={args.channels_last}; {stat(device)} of {args.net_iters}')
    torch.manual_seed(0)
    syn = dict(channel_base=cb, channel_max=cm, num_fp16_res=0, conv_clamp=256 if args.amp else None,
               channels_last=args.channels_last)
    G = Generator(512, 0, 512, 32, 3, mapping_kwargs=dict(num_layers=2), synthesis_kwargs=syn).to(device).train()
    D = Discriminator(0, 32, 3, channel_base=cb, channel_max=cm, conv_clamp=syn['conv_clamp'],
                      block_kwargs=dict(channels_last=args.channels_last),
                      epilogue_kwargs=dict(mbstd_group_size=args.mbstd)).to(device).train()
    n_g = sum(p.numel() for p in G.parameters()) / 1e6
    n_d = sum(p.numel() for p in D.parameters()) / 1e6
    print(f'  params: G {n_g:.2f}M, D {n_d:.2f}M')
    z = torch.randn(batch, 512, device=device)
    reals = torch.randn(batch, 3, 32, 32, device=device)
    amp = torch.autocast(device.type, dtype=torch.bfloat16) if args.amp else nullcontext()

    def step(g, d):
        with amp:
            img = g(z, None, style_mixing_prob=0.9, update_emas=True)
            loss = F.softplus(d(img, None)).mean() + F.softplus(-d(reals, None)).mean()
        loss.backward()

    with ops.reference_ops():
        ref = timeit(lambda: step(G, D), device, args.net_iters)
    row('G+D step, eager, reference ops', ref)
    row('G+D step, eager, fast ops', timeit(lambda: step(G, D), device, args.net_iters), ref)

    if args.compile or (device.type == 'cuda' and not args.no_compile):
        for fir in args.compile_fir:
            ops.set_fir_impl(fir)
            torch._dynamo.reset()
            Gc, Dc = torch.compile(G), torch.compile(D)
            t0 = time.perf_counter()
            step(Gc, Dc)
            sync(device)
            print(f'  (compile with fir impl {fir!r}: first step {time.perf_counter() - t0:.1f} s)')
            row(f'G+D step, torch.compile, fir {fir}', timeit(lambda: step(Gc, Dc), device, args.net_iters), ref)
        ops.set_fir_impl('auto')


def main():
    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--device', default='cuda' if cuda else 'cpu')
    p.add_argument('--iters', type=int, default=20 if cuda else 5)
    p.add_argument('--net-iters', type=int, default=20 if cuda else 3)
    p.add_argument('--op-batch', type=int, default=64 if cuda else 8)
    p.add_argument('--op-channels', type=int, default=512 if cuda else 64)
    p.add_argument('--op-res', type=int, default=32)
    p.add_argument('--batch', type=int, default=64 if cuda else 8)
    p.add_argument('--channel-base', type=int, default=32768)
    p.add_argument('--channel-max', type=int, default=512 if cuda else 128)
    p.add_argument('--mbstd', type=int, default=32)
    p.add_argument('--amp', action='store_true', help='bfloat16 autocast')
    p.add_argument('--channels-last', action='store_true')
    p.add_argument('--tf32', action='store_true', help='allow TF32 matmul/conv on CUDA')
    p.add_argument('--compile', action='store_true', help='also benchmark torch.compile (default on CUDA)')
    p.add_argument('--no-compile', action='store_true')
    p.add_argument('--compile-fir', nargs='+', default=['auto'], choices=['auto', 'conv', 'taps'],
                   help="FIR formulation(s) inside torch.compile ('auto' = taps)")
    p.add_argument('--skip-ops', action='store_true')
    p.add_argument('--skip-networks', action='store_true')
    args = p.parse_args()

    device = torch.device(args.device)
    if device.type == 'cuda':
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = args.tf32
        torch.backends.cudnn.allow_tf32 = args.tf32
        name = torch.cuda.get_device_name(device)
    else:
        name = f'cpu ({torch.get_num_threads()} threads)'
    print(f'device: {name}; torch {torch.__version__}')
    if not args.skip_ops:
        bench_ops(device, args)
    if not args.skip_networks:
        bench_networks(device, args)


if __name__ == '__main__':
    main()
