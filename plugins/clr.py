"""CLR-GAN: consistent latent representation and real-image reconstruction (Sun, Luan et al., 2024).

G and D are trained as each other's inverse (paper Sec. 3.2-3.5, Algorithm 1):

* **Latent head.** D gets a head ``phi = sigma(f(x))`` on its epilogue features ``f(x)`` (Eq. 4) that
  predicts G's latent. The official code (``Petecheco/CLR-GAN``, ``training/networks.py``) uses the
  512-wide epilogue ``fc`` output itself as the latent code, so ``sigma`` is the identity when the
  widths agree; otherwise (and always with ``--clr-head affine``) ``sigma`` is one affine layer. The
  head is a submodule of D (``D.clr_head``): D's optimizer trains it and D's checkpoint holds it.
* **D side** (Dmain, Eq. 6 and 13): ``lambda1 * Dist(phi(D_in(G(z))), z)`` on this phase's fakes,
  where ``D_in`` is the pre-D augment chain. The fakes are made without G's graph, so G gets no
  gradient from this term; D's body and the head do.
* **G side** (Gmain, Eq. 7, 8 and 14): ``lambda2 * Dist(G(phi(D_in(x))), x)``. ``phi`` sees the
  augmented real, as the official code does (its ``run_D`` applies the augment pipe), and the target is
  the un-augmented real. The reconstruction goes through G's mapping with truncation 1 (``--clr-target
  w``: the predicted ``w`` is broadcast to every synthesis layer). D is evaluated without a graph, so
  only G learns from this term.
* **Dist** is the per-element mean of ``|a - b|`` (L1, the paper's Eq. 6 and 8) or of ``(a - b)^2``
  (``--clr-dist mse``, the official ``loss.py``). Both are elementwise means, as in the official
  ``mse_loss`` and CycleGAN's L1 that the paper cites: lambda1 = 5 and lambda2 = 0.5 are calibrated for
  means, not for sums over 512 latent dimensions or all pixels.

Stacking. With ``ada`` or ``diffaug`` the head sees augmented images on both sides. With ``diffusion``
it sees the diffused ``y_t = sqrt(abar_t) x + sqrt(1 - abar_t) sigma eps``. The timestep enters the
StyleGAN D only through its conditioning path, which acts *after* the epilogue features (the output
projection ``<out(f), cmap(c, t)>``), so ``phi`` gets no t: it must recover ``z`` from ``y_t`` whatever
the noise level. For small t that is the paper's task; for large t ``y_t`` carries little of ``G(z)``
and the best the head can do is shrink toward the latent's centre (0 for L1 or MSE), so the D-side
term mostly acts on the t = 0 half of Diffusion-GAN's t_epl (32 of its 64 entries are zero). On the
MLP toy D, ``c`` (and with it t) is concatenated to the input, so there the head does see t. The
G-side term reconstructs the clean real from ``phi(y_t)``, a denoising-and-inversion task for G.
``smart`` adds an unrelated G term and stacks without interaction. The plugin requires a generator that maps
one latent vector to one sample (``one_latent_per_sample``; ``--clr-target w`` also a W space): a stack whose
G does not declare it (``ddgan``'s ``G(x_t, z, t)``, ``cmgan``'s consistency function, any other G replacement
that does not) is refused by the plugin manager, without this plugin naming any other.

Deviations from the official code, on purpose: the reconstruction ``G(phi(x))`` uses no style mixing
(the official ``run_G`` mixes in a random second latent with probability 0.9, which makes the
"reconstruction" of 90% of the batch depend on unrelated noise); the D-side target is the primary
latent ``z`` of a fake even when style mixing replaced the styles of its later layers (as in the
official code, which has no other choice).
"""
from __future__ import annotations

import torch

from ganstack.stylegan_base.ops import FullyConnectedLayer
from ganstack.training.api import Capabilities, Option, OptionValues, Plugin, hookimpl


def distance(a: torch.Tensor, b: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-sample ``Dist``: mean over every non-batch element of ``|a - b|`` ('l1') or ``(a - b)^2`` ('mse')."""
    diff = (a - b).flatten(1)
    return diff.abs().mean(1) if kind == "l1" else diff.square().mean(1)


class CLRPlugin(Plugin):
    """CLR-GAN: D predicts G's latent (lambda1), G reconstructs reals from it (lambda2)."""

    capabilities = Capabilities(
        requires="one_latent_per_sample",
        reasons={"one_latent_per_sample": "CLR-GAN reconstructs a real as G(phi(x)) from the one latent vector its D "
                                          "head predicts, and D predicts the latent z of each fake"})

    def __init__(self):
        self._setup(OptionValues.defaults(self.add_options()))  # until configure delivers the options

    @hookimpl
    def add_options(self):
        return [
            Option("lambda1", float, 5.0,
                   "weight of the latent-consistency term Dist(phi(D_in(G(z))), z) in D's loss "
                   "(paper Sec. 4.1 and Table 3; official loss.py)", min=0.0),
            Option("lambda2", float, 0.5,
                   "weight of the reconstruction term Dist(G(phi(D_in(x))), x) in G's loss "
                   "(paper Sec. 4.1 and Table 3; official loss.py)", min=0.0),
            Option("dist", str, "l1",
                   "distance: l1 (paper Eq. 6 and 8; the default, measured: on toy:gaussians25 at 1000 kimg, 3 seeds, "
                   "l1 kept a high-quality share of 0.574 +- 0.025 against mse's 0.536 +- 0.001, README Evidence) or "
                   "mse (the official code, for which lambda1 5 / lambda2 0.5 were tuned); elementwise means",
                   choices=["l1", "mse"]),
            Option("target", str, "z",
                   "latent the head predicts: z (paper and official code) or w (StyleGAN's intermediate "
                   "latent, broadcast to every synthesis layer for the reconstruction)",
                   choices=["z", "w"], requires={"w": ("w_space",)}),
            Option("head", str, "auto",
                   "sigma of Eq. 4: auto = identity when D's feature width equals the latent width (the "
                   "official code, 512 = 512), else one affine layer; affine = always an affine layer",
                   choices=["auto", "affine"]),
            Option("rec_noise", str, "random",
                   "noise_mode of the StyleGAN synthesis for the reconstruction (official: random)",
                   choices=["random", "const", "none"]),
        ]

    @hookimpl
    def configure(self, opts):
        self._setup(opts)

    def _setup(self, opts) -> None:
        self.lambda1 = opts.lambda1
        self.lambda2 = opts.lambda2
        self.dist = opts.dist
        self.target = opts.target
        self.head_kind = opts.head
        self.rec_noise = opts.rec_noise

    # ------------------------------------------------------------------------------------------
    # The latent head

    @hookimpl
    def modify_networks(self, nets):
        G, D = nets.G, nets.D
        # The manager checked the declarations (one latent per sample; a W space for --clr-target w), and the
        # networks follow the G/D protocol (feature_dim, w_dim, is_image).
        feature_dim = D.feature_dim
        target_dim = G.w_dim if self.target == "w" else G.z_dim
        if self.head_kind == "auto" and feature_dim == target_dim:
            head = torch.nn.Identity()
        elif not D.is_image:
            head = torch.nn.Linear(feature_dim, target_dim)  # point Ds use plain layers
        else:
            head = FullyConnectedLayer(feature_dim, target_dim)  # equalized lr, like the image D's own layers
        D.add_module("clr_head", head)

    def phi(self, D, features: torch.Tensor) -> torch.Tensor:
        """The predicted latent ``phi(x) = sigma(f(x))`` from D's epilogue features."""
        return D.clr_head(features.float())

    # ------------------------------------------------------------------------------------------
    # Targets and reconstruction

    def latent_target(self, G, z: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """What the head must predict for fakes made from ``z``: ``z`` or ``w = mapping(z, c)`` (psi 1)."""
        if self.target == "z":
            return z
        with torch.no_grad():
            return G.mapping(z, c, truncation_psi=1, update_emas=False)[:, 0]

    def reconstruct(self, ctx, latent: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """``G(phi(x))`` through the mapping with truncation 1 (or the synthesis for a ``w`` latent)."""
        G = ctx.G
        with ctx.autocast():
            if self.target == "w":
                ws = latent.unsqueeze(1).repeat([1, G.num_ws, 1])
                img = G.synthesis(ws, noise_mode=self.rec_noise)
            else:
                img = G(latent, c, truncation_psi=1, style_mixing_prob=0.0, update_emas=False,
                        noise_mode=self.rec_noise)
        return img.float()

    # ------------------------------------------------------------------------------------------
    # Loss terms

    @hookimpl
    def d_loss(self, ctx, fake):
        if self.lambda1 == 0:
            return None
        # fake.features come from D_in(G(z)) made under no_grad in Dmain: only D and the head learn.
        pred = self.phi(ctx.D, fake.features)
        dist = distance(pred, self.latent_target(ctx.G, ctx.z, ctx.c), self.dist)
        ctx.report("Loss/clr/latent_dist", dist)
        return {"latent": self.lambda1 * dist}

    @hookimpl
    def g_loss(self, ctx):
        if self.lambda2 == 0:
            return None
        reals = ctx.reals
        with torch.no_grad():  # D is not updated by this term; no graph through D is needed
            latent = self.phi(ctx.D, ctx.run_D(reals, is_real=True).features)
        rec = self.reconstruct(ctx, latent, reals.c)
        dist = distance(rec, reals.img.float(), self.dist)
        ctx.report("Loss/clr/rec_dist", dist)
        return {"rec": self.lambda2 * dist}
