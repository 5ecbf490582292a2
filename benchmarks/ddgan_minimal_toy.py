"""An independent minimal Denoising Diffusion GAN on the 25 Gaussians: a cross-check of the ddgan plugin.

    OMP_NUM_THREADS=1 python benchmarks/ddgan_minimal_toy.py [--seed 0] [--steps 3000] [--lr 1e-4] [--scale 1]
        [--width 128] [--depth 2] [--batch 64]

No ganstack code: the same T = 4 VP schedule (beta_min 0.1, beta_max 20, Eq. 16), posterior sampling,
G(x_t, z, t) -> x_0 and D(x_{t-1}, x_t, t) MLPs on concatenated inputs with a sinusoidal step embedding,
the non-saturating loss, R1 0.05 on x_{t-1} every step and Adam betas (0.5, 0.9), as the plugin runs on
``--cfg toy``. If this script and the plugin fail alike at a budget, the failure is the method's at that
budget, not the plugin's. ``--scale`` multiplies the data (modes at -4..4 x scale, std 0.05 x scale);
``--width/--depth/--batch 512 3 512`` is the paper's Appendix C.5 network (50k steps there). Prints the
share of samples within 3 std of a mode (uniform noise: 0.024) and D's loss (2 ln 2 = 1.386 is chance)
every 1000 steps.
"""
from __future__ import annotations

import argparse
import math

import torch


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--depth", type=int, default=2)
    ap.add_argument("--batch", type=int, default=64)
    args = ap.parse_args(argv)
    torch.manual_seed(args.seed)
    T, bmin, bmax = 4, 0.1, 20.0
    tp = torch.arange(T + 1) / T
    abar = torch.exp(-bmin * tp - 0.5 * (bmax - bmin) * tp ** 2)  # abar[0] = 1
    alpha = torch.cat([torch.ones(1), abar[1:] / abar[:-1]])
    beta = 1 - alpha
    post_var = torch.cat([torch.zeros(1), beta[1:] * (1 - abar[:-1]) / (1 - abar[1:])])
    c_x0 = torch.cat([torch.zeros(1), beta[1:] * abar[:-1].sqrt() / (1 - abar[1:])])
    c_xt = torch.cat([torch.zeros(1), (1 - abar[:-1]) * alpha[1:].sqrt() / (1 - abar[1:])])
    modes = torch.tensor([[x, y] for x in range(-4, 5, 2) for y in range(-4, 5, 2)], dtype=torch.float32) * args.scale
    std = 0.05 * args.scale

    def data(n):
        return modes[torch.randint(0, 25, [n])] + std * torch.randn(n, 2)

    def emb(t, dim=16):
        freqs = torch.exp(-math.log(1e4) / (dim // 2 - 1) * torch.arange(dim // 2))
        a = (t - 1).float()[:, None] * freqs
        return torch.cat([a.sin(), a.cos()], 1)

    def mlp(n_in, n_out):
        layers, d = [], n_in
        for _ in range(args.depth):
            layers += [torch.nn.Linear(d, args.width), torch.nn.LeakyReLU(0.2)]
            d = args.width
        return torch.nn.Sequential(*layers, torch.nn.Linear(d, n_out))

    z_dim = 32
    G, D = mlp(2 + z_dim + 16, 2), mlp(2 + 2 + 16, 1)
    opt_g = torch.optim.Adam(G.parameters(), args.lr, betas=(0.5, 0.9))
    opt_d = torch.optim.Adam(D.parameters(), args.lr, betas=(0.5, 0.9))
    sp = torch.nn.functional.softplus

    def col(v, t):
        return v[t][:, None]

    def pairs(x0, t):  # x_{t-1} ~ q(x_{t-1} | x_0), x_t ~ q(x_t | x_{t-1})
        x_prev = col(abar, t - 1).sqrt() * x0 + (1 - col(abar, t - 1)).sqrt() * torch.randn_like(x0)
        return x_prev, col(alpha, t).sqrt() * x_prev + col(beta, t).sqrt() * torch.randn_like(x0)

    def posterior(x0, xt, t):
        return col(c_x0, t) * x0 + col(c_xt, t) * xt + col(post_var, t).sqrt() * torch.randn_like(xt)

    def denoise(xt, t):
        return G(torch.cat([xt, torch.randn(len(xt), z_dim), emb(t)], 1))

    def judge(x_prev, xt, t):
        return D(torch.cat([x_prev, xt, emb(t)], 1))

    n_eval = 2500
    for step in range(1, args.steps + 1):
        x0, t = data(args.batch), torch.randint(1, T + 1, [args.batch])
        x_prev, xt = pairs(x0, t)
        x_prev.requires_grad_(True)
        real = judge(x_prev, xt, t)
        grad, = torch.autograd.grad(real.sum(), x_prev, create_graph=True)
        fake = judge(posterior(denoise(xt, t), xt, t).detach(), xt, t)
        loss_d = sp(-real).mean() + sp(fake).mean() + 0.05 / 2 * grad.pow(2).sum(1).mean()
        opt_d.zero_grad()
        loss_d.backward()
        opt_d.step()
        x0, t = data(args.batch), torch.randint(1, T + 1, [args.batch])
        _, xt = pairs(x0, t)
        loss_g = sp(-judge(posterior(denoise(xt, t), xt, t), xt, t)).mean()
        opt_g.zero_grad()
        loss_g.backward()
        opt_g.step()
        if step % 1000 == 0 or step == args.steps:
            with torch.no_grad():
                x = torch.randn(n_eval, 2)
                for s in range(T, 0, -1):
                    ts = torch.full([n_eval], s)
                    x0_pred = denoise(x, ts)
                    x = x0_pred if s == 1 else posterior(x0_pred, x, ts)
                dist = torch.cdist(x, modes).min(1).values
            print(f"step {step:6d}  D loss {loss_d.item():.3f}  hq_share {(dist <= 3 * std).float().mean().item():.3f}  "
                  f"mean_dist {dist.mean().item() / args.scale:.3f}", flush=True)


if __name__ == "__main__":
    main()
