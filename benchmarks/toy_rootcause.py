"""Root-causing the toy preset's border smear with a minimal, independent GAN (no ganstack loop).

The `toy` preset's vanilla GAN put its samples on the four corner modes and along the border of the
data's square. This script trains the same 2 x 128 LeakyReLU MLPs with the non-saturating logistic loss
in ~60 lines of plain PyTorch, one factor changed at a time, and scores G (no EMA) with
``ganstack.metrics.toy.mixture_metrics`` every ``--every`` kimg:

    OMP_NUM_THREADS=1 python benchmarks/toy_rootcause.py --kimg 300 --seed 0 --tag base
    OMP_NUM_THREADS=1 python benchmarks/toy_rootcause.py --kimg 300 --seed 0 --norm both --tag norm

Factors: ``--norm none|g|d|both`` (a fixed affine map from the data's mean/std: D sees (x - mean)/std,
G outputs mean + std * out), ``--scale`` (multiply the data, e.g. 1/2.828 for the unit-scale grid),
``--lr``, ``--betas``, ``--batch``, ``--zdim``, ``--zdist normal|uniform``, ``--dsteps``, ``--g-width/
--g-depth/--d-width/--d-depth``, ``--dact leaky|relu|tanh``. ``--json`` appends one line per run;
``--png`` writes the final scatter and D's logit map. ``border_share``: the share of samples that are
off every mode (beyond 3 std) and within a quarter of the grid spacing of the square's edge (the smear).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from ganstack.metrics.toy import mixture_metrics  # noqa: E402
from ganstack.stylegan_base.toy import toy_mixture_points  # noqa: E402


def mlp(din, width, depth, dout, act, bn=False):
    acts = dict(leaky=lambda: torch.nn.LeakyReLU(0.2), leaky01=lambda: torch.nn.LeakyReLU(0.01),
                relu=torch.nn.ReLU, tanh=torch.nn.Tanh, elu=torch.nn.ELU, softplus=torch.nn.Softplus)
    layers, d = [], din
    for _ in range(depth):
        layers += [torch.nn.Linear(d, width)] + ([torch.nn.BatchNorm1d(width)] if bn else []) + [acts[act]()]
        d = width
    return torch.nn.Sequential(*layers, torch.nn.Linear(d, dout))


def jacobian_stats(G, g_out, z, centers, std, outer, band):
    """Where does G squash the latent? The singular values s1 >= s2 of dx/dz (2 x z_dim) per sample.

    A generator that *clamps* its output to the square maps a whole latent region onto the square's edge
    (s2 ~ 0, its null output direction normal to that edge) and onto a corner (s1 ~ s2 ~ 0); a sample on a
    mode has both small, a sample in the open interior neither. Reported per region: median s1, s2 and
    (on the edge band) the median |cos| between the collapsed output direction and the edge's normal.
    """
    G.eval()
    z = z.clone().requires_grad_(True)
    x = g_out(G(z))
    rows = [torch.autograd.grad(x[:, k].sum(), z, retain_graph=True)[0] for k in range(2)]
    J = torch.stack(rows, 1).detach()  # [N, 2, z_dim]
    G.train()
    U, S, _ = torch.linalg.svd(J, full_matrices=False)
    x = x.detach().numpy()
    S, U = S.numpy(), U.numpy()
    dist = np.linalg.norm(x[:, None] - centers[None], axis=2).min(1)
    hq = dist <= 3 * std
    ax = np.abs(x)
    r = ax.max(1)
    edge = (np.abs(r - outer) < band) & ~hq
    interior = (r < outer - band) & ~hq
    normal = np.where((ax[:, 0] > ax[:, 1])[:, None], [[1.0, 0.0]], [[0.0, 1.0]])
    cos = np.abs((U[:, :, 1] * normal).sum(1))  # collapsed direction (2nd left singular vector) vs the normal
    out = {}
    for name, m in (("hq", hq), ("edge", edge), ("interior", interior)):
        out[f"jac_{name}_n"] = int(m.sum())
        out[f"jac_{name}_s1"] = float(np.median(S[m, 0])) if m.any() else float("nan")
        out[f"jac_{name}_s2"] = float(np.median(S[m, 1])) if m.any() else float("nan")
    out["jac_edge_cos_normal"] = float(np.median(cos[edge])) if edge.any() else float("nan")
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="gaussians25")
    p.add_argument("--scale", type=float, default=1.0)
    p.add_argument("--norm", default="none", choices=["none", "g", "d", "both"])
    p.add_argument("--kimg", type=float, default=300)
    p.add_argument("--every", type=float, default=50)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--glr", type=float, default=None)
    p.add_argument("--betas", default="0.5,0.999")
    p.add_argument("--zdim", type=int, default=32)
    p.add_argument("--zdist", default="normal", choices=["normal", "uniform"])
    p.add_argument("--dsteps", type=int, default=1)
    p.add_argument("--g-width", type=int, default=128)
    p.add_argument("--g-depth", type=int, default=2)
    p.add_argument("--d-width", type=int, default=128)
    p.add_argument("--d-depth", type=int, default=2)
    p.add_argument("--gact", default="leaky", choices=["leaky", "leaky01", "relu", "tanh", "elu", "softplus"])
    p.add_argument("--gbn", action="store_true", help="BatchNorm in G's hidden layers (PacGAN)")
    p.add_argument("--dact", default="leaky", choices=["leaky", "leaky01", "relu", "tanh", "elu", "softplus"])
    p.add_argument("--r1", type=float, default=0.0, help="R1 gamma (every step, gamma/2 E|grad D(real)|^2)")
    p.add_argument("--dsn", action="store_true", help="spectral normalisation of D's layers")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--samples", type=int, default=2500)
    p.add_argument("--tag", default="")
    p.add_argument("--json", default=None)
    p.add_argument("--png", default=None)
    p.add_argument("--film", default=None, help="PNG of fakes over D's logit map at every --every kimg")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(a.seed)
    pts, _, centers, std = toy_mixture_points(a.data, 100000, 0)
    pts = pts * a.scale
    centers, std = centers * a.scale, std * a.scale
    data = torch.from_numpy(pts)
    mean = data.mean(0)
    dstd = data.std()  # one number: the overall std of every coordinate (data_info['data_std'])
    G = mlp(a.zdim, a.g_width, a.g_depth, 2, a.gact, a.gbn)
    D = mlp(2, a.d_width, a.d_depth, 1, a.dact)
    if a.dsn:
        for mod in D:
            if isinstance(mod, torch.nn.Linear):
                torch.nn.utils.parametrizations.spectral_norm(mod)
    g_out = (lambda o: mean + dstd * o) if a.norm in ("g", "both") else (lambda o: o)
    d_in = (lambda x: (x - mean) / dstd) if a.norm in ("d", "both") else (lambda x: x)
    betas = tuple(float(v) for v in a.betas.split(","))
    optG = torch.optim.Adam(G.parameters(), lr=a.glr or a.lr, betas=betas)
    optD = torch.optim.Adam(D.parameters(), lr=a.lr, betas=betas)
    sp = torch.nn.functional.softplus

    def z(n):
        return torch.randn(n, a.zdim) if a.zdist == "normal" else torch.rand(n, a.zdim) * 2 - 1

    edge = np.abs(centers).max() - 3 * std
    outer = float(np.abs(centers).max())
    band = 0.25 * float(np.diff(np.unique(centers[:, 0]))[0])
    gen = torch.Generator().manual_seed(1234)
    z_eval = torch.randn(a.samples, a.zdim, generator=gen) if a.zdist == "normal" else \
        torch.rand(a.samples, a.zdim, generator=gen) * 2 - 1

    frames = []

    def d_map(lim, n=120):
        g = torch.linspace(-lim, lim, n)
        gx, gy = torch.meshgrid(g, g, indexing="xy")
        with torch.no_grad():
            return D(d_in(torch.stack([gx.ravel(), gy.ravel()], 1))).reshape(n, n).numpy()

    lim = 1.5 * float(np.abs(centers).max()) + 6 * std

    def evaluate(kimg):
        G.eval()
        with torch.no_grad():
            x = g_out(G(z_eval)).numpy()
        G.train()
        m = mixture_metrics(x, centers, std)
        # off-mode samples in the band of the square's edge (a quarter spacing either side of the outer
        # centres' lines): the smear. Uniform noise over the square puts about 0.3 there.
        dist = np.linalg.norm(x[:, None] - centers[None], axis=2).min(1)
        r = np.abs(x).max(1)
        m["border_share"] = float(((np.abs(r - outer) < band) & (dist > 3 * std)).mean())
        m["g_std"] = float(x.std())
        if a.film:
            frames.append((kimg, x[:400].copy(), d_map(lim)))
        m["kimg"] = kimg
        # Are the samples on the square's edge those of the latent's tail? (share of the 20% largest |z|)
        on_edge = np.abs(x).max(1) > edge
        big = (z_eval.norm(dim=1) > z_eval.norm(dim=1).quantile(0.8)).numpy()
        m["edge_from_ztail"] = float(big[on_edge].mean()) if on_edge.any() else float("nan")
        return m, x

    steps = int(round(a.kimg * 1000 / a.batch))
    every = max(1, int(round(a.every * 1000 / a.batch)))
    hist = [evaluate(0)[0]]
    t0 = time.time()
    for step in range(1, steps + 1):
        for _ in range(a.dsteps):
            real = data[torch.randint(len(data), (a.batch,))]
            with torch.no_grad():
                fake = g_out(G(z(a.batch)))
            if a.r1 > 0:
                real = real.detach().requires_grad_(True)
            real_logits = D(d_in(real))
            lossD = sp(D(d_in(fake))).mean() + sp(-real_logits).mean()
            if a.r1 > 0:
                grad, = torch.autograd.grad(real_logits.sum(), real, create_graph=True)
                lossD = lossD + a.r1 / 2 * grad.square().sum(1).mean()
            optD.zero_grad(set_to_none=True)
            lossD.backward()
            optD.step()
        lossG = sp(-D(d_in(g_out(G(z(a.batch)))))).mean()
        optG.zero_grad(set_to_none=True)
        lossG.backward()
        optG.step()
        if step % every == 0 or step == steps:
            hist.append(evaluate(step * a.batch / 1000)[0])
    final, x = evaluate(a.kimg)
    final.update(jacobian_stats(G, g_out, z_eval, centers, std, outer, band))
    rec = dict(tag=a.tag, args=vars(a), final=final, history=hist, seconds=time.time() - t0)
    keys = ("kimg", "modes_covered", "hq_share", "kl_modes", "border_share", "g_std", "edge_from_ztail")
    print(f"[{a.tag}] seed {a.seed}: " + "  ".join(
        f"{k}={final[k]:.3g}" if isinstance(final[k], float) else f"{k}={final[k]}" for k in keys[1:]),
        f"({rec['seconds']:.0f}s)")
    print("   jacobian " + " ".join(f"{k[4:]}={v:.3g}" if isinstance(v, float) else f"{k[4:]}={v}"
                                     for k, v in final.items() if k.startswith("jac_")))
    print("   history " + " | ".join(f"{h['kimg']:.0f}k m{h['modes_covered']} hq{h['hq_share']:.2f} "
                                      f"b{h['border_share']:.2f}" for h in hist))
    if a.json:
        with open(a.json, "a") as f:
            f.write(json.dumps(rec) + "\n")
    if a.film:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        cols = min(len(frames), 6)
        rows = (len(frames) + cols - 1) // cols
        fig, axs = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.2 * rows), squeeze=False)
        for ax in axs.ravel():
            ax.axis("off")
        for ax, (k, xf, dm) in zip(axs.ravel(), frames):
            ax.imshow(dm, origin="lower", extent=(-lim, lim, -lim, lim), cmap="viridis")
            ax.scatter(xf[:, 0], xf[:, 1], s=0.5, c="r")
            ax.set_xlim(-lim, lim)
            ax.set_ylim(-lim, lim)
            ax.set_title(f"{k:g} kimg, D {dm.min():.0f}..{dm.max():.0f}", fontsize=7)
        fig.tight_layout()
        fig.savefig(a.film, dpi=70)
        plt.close(fig)
    if a.png:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, axs = plt.subplots(1, 2, figsize=(8, 4))
        ax = axs[0]
        ax.scatter(pts[:2000, 0], pts[:2000, 1], s=1, c="0.7")
        ax.scatter(x[:, 0], x[:, 1], s=1)
        ax.set_title(f"{a.tag} s{a.seed}: m{final['modes_covered']} hq{final['hq_share']:.2f}", fontsize=8)
        # D's logit over a box 1.5x the data's, fakes on top: where D sends G's samples.
        lim = 1.5 * float(np.abs(centers).max()) + 6 * std
        g = torch.linspace(-lim, lim, 200)
        gx, gy = torch.meshgrid(g, g, indexing="xy")
        with torch.no_grad():
            dl = D(d_in(torch.stack([gx.ravel(), gy.ravel()], 1))).reshape(200, 200).numpy()
        im = axs[1].imshow(dl, origin="lower", extent=(-lim, lim, -lim, lim), cmap="viridis")
        axs[1].scatter(x[:500, 0], x[:500, 1], s=1, c="r")
        fig.colorbar(im, ax=axs[1])
        axs[1].set_title("D logit, 500 fakes (red)", fontsize=8)
        fig.savefig(a.png, dpi=80)
        plt.close(fig)


if __name__ == "__main__":
    main()
