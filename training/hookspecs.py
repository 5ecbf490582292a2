"""Every hook of the ganstack training loop.

A plugin implements any subset of these with ``@ganstack.training.api.hookimpl``; an implementation may accept
only some of the arguments (pluggy passes what it asks for). Hooks are called in the order given by
``--plugins`` wherever order matters (``chain`` below), and the built-in ``core`` plugin provides the
StyleGAN2 defaults (networks, sampler, R1 and path-length regularization) behind every plugin.

Kinds of hooks:

* **each** - called once for every enabled plugin with that plugin's own arguments; the manager
  keeps track of which plugin returned what (options, state, stats).
* **chain** - called in ``--plugins`` order; each implementation receives the previous one's result
  and returns a replacement, or ``None`` to keep it.
* **collect** - every implementation's return value is collected (``None`` is dropped).
* **exclusive** (``firstresult``) - at most one enabled plugin may implement it; two are a start-up
  conflict. The core default runs when no plugin does.

The phase context ``ctx`` passed to the per-phase hooks is a :class:`ganstack.training.loss.PhaseContext`:
``ctx.phase`` ('Gmain', 'Greg', 'Dmain', 'Dreg'), ``ctx.step``, ``ctx.cur_nimg``, ``ctx.G``, ``ctx.D``,
``ctx.reals`` (a :class:`~ganstack.training.api.DInput`), ``ctx.z``/``ctx.c`` (the phase's latents and labels),
``ctx.cfg``, ``ctx.scratch`` (a dict shared by the hooks of one phase), and helpers
``ctx.run_D(x, is_real)`` (augment + D, returns a :class:`~ganstack.training.api.DOutput`),
``ctx.augment(x, is_real)``, ``ctx.sample(z, c)`` (the sampler) and ``ctx.report(name, value)``
(statistics, averaged over the tick and all-reduced over GPUs).
"""
from __future__ import annotations

from ganstack.training.api import hookspec

# ---------------------------------------------------------------------------------------------
# Start-up


@hookspec
def add_options():
    """[each] Declare this plugin's options.

    Called when the CLI is built and whenever a plugin stack is created. Return a list of
    :class:`ganstack.training.api.Option`. Each becomes the flag ``--<plugin>-<name>`` of ``ganstack train``,
    the key ``<plugin>.<name>`` for ``ganstack ablate``, and a row of ``ganstack plugins show``.
    """


@hookspec
def configure(opts, cfg, stack):
    """[each] Receive this plugin's parsed options before anything is built.

    ``opts`` is an :class:`ganstack.training.api.OptionValues` holding this plugin's options (defaults filled
    in, types and ranges checked). ``cfg`` is the mutable :class:`ganstack.training.config.TrainConfig`: a
    plugin may change a setting the user did not give explicitly (``cfg.is_user_set(name)`` tells), for
    example a recommended learning rate. ``stack`` is the ordered list of enabled plugin names. Raise
    :class:`ganstack.training.api.PluginError` to refuse a stack that cannot work (a declared conflict); the
    message must say why and what to do instead. Return nothing.
    """


@hookspec
def network_kwargs(role, kwargs, data_info, cfg):
    """[chain] Adjust the constructor arguments of G (``role='G'``) or D (``role='D'``).

    Called in ``--plugins`` order before the networks are built. ``kwargs`` is the dict that will be
    passed to the builder (for the backbone D it holds ``c_dim``, ``img_resolution``, ...). Return a new
    dict, or mutate and return ``None``. Example: the diffusion plugin grows D's ``c_dim`` by the size
    of its timestep embedding.
    """


@hookspec(firstresult=True)
def build_generator(kwargs, data_info, cfg):
    """[exclusive] Build and return the generator module, replacing the StyleGAN2/MLP backbone G.

    At most one enabled plugin may implement this. The module must provide ``z_dim`` and ``c_dim``
    attributes and be usable by the plugin's own ``sampler`` (the core sampler calls
    ``G(z, c, **G_kwargs)``).
    """


@hookspec(firstresult=True)
def build_discriminator(kwargs, data_info, cfg):
    """[exclusive] Build and return the discriminator module, replacing the backbone D.

    At most one enabled plugin may implement this. The module's forward must accept
    ``D(img, c, return_features=True, **extra)`` and return ``(logits [N, 1], features [N, F])``.
    """


@hookspec
def modify_networks(nets, cfg):
    """[chain] Change the built networks before the optimizers are made.

    ``nets`` is a :class:`ganstack.training.networks_builder.Networks` with ``G`` and ``D``. A plugin may attach
    submodules (the CLR latent head is added to D so that D's optimizer trains it and D's checkpoint
    holds it) or wrap a network. Return a new ``Networks`` or ``None`` after changing it in place.
    ``G_ema`` is copied from the final ``G`` after this hook.
    """


@hookspec
def lazy_regularizers(cfg):
    """[collect] Declare regularizers that run every k-th step: return a list of
    :class:`ganstack.training.api.LazyRegularizer`.

    Called once at start-up. The loop runs a ``Greg``/``Dreg`` phase on every step where at least
    one regularizer of that network is due, multiplies each due regularizer's loss by its interval
    (the lazy gain) and, as StyleGAN2 does, scales that network's Adam learning rate by ``mb_ratio``
    and its betas to the power ``mb_ratio``, where ``mb_ratio = 1 / (1 + f)`` and ``f`` is the share
    of steps that have a reg phase (``k / (k + 1)`` for a single interval ``k``). The core plugin
    declares R1 (D, every 16) and path length (G, every 4); SMaRt declares its score regularity here.
    """


# ---------------------------------------------------------------------------------------------
# Every training phase


@hookspec
def prepare_reals(reals, ctx):
    """[chain] Transform the real batch once at the start of a phase, before R1's leaf is made.

    ``reals`` is a :class:`ganstack.training.api.DInput` with the dataset's images in [-1, 1] and labels. Return
    a replacement or ``None``. This is for methods whose D does not see plain data: DDGAN turns
    ``x_0`` into the pair ``(x_{t-1}, x_t)`` so that R1 acts on ``x_{t-1}``. Augmentations belong in
    ``augment_d_input`` instead.
    """


@hookspec(firstresult=True)
def sampler(G, z, c, ctx, G_kwargs):
    """[exclusive] Make fakes with generator ``G`` from latents ``z [N, z_dim]`` and labels ``c``.

    Returns a :class:`ganstack.training.api.DInput` whose ``img`` is the fake batch. ``ctx`` is the phase
    context during training (a sampler may read ``ctx.reals``, for example to noise the same data as
    the real branch) and ``None`` when ``generate``, snapshots and metrics draw samples; then the
    sampler must run its full sampling chain and return final samples. ``G_kwargs`` holds keyword
    arguments for a backbone G call (``truncation_psi``, ``noise_mode``, ``style_mixing_prob``,
    ``update_emas``). The core sampler returns ``DInput(G(z, c, **G_kwargs), c)``.
    """


@hookspec
def augment_d_input(x, ctx, is_real):
    """[chain] Transform what D sees, for reals and fakes alike, before every D evaluation.

    ``x`` is a :class:`ganstack.training.api.DInput`; ``is_real`` tells which branch it is. Return the
    augmented ``DInput`` (or ``None`` to pass it on unchanged). The pipeline must be differentiable:
    G's gradient and R1's gradient flow through it. Plugins run in ``--plugins`` order, so
    ``--plugins ada,diffusion`` augments first and diffuses second.
    """


@hookspec
def d_loss(ctx, real, fake):
    """[collect] Add terms to D's loss in the Dmain phase.

    ``real`` and ``fake`` are the :class:`ganstack.training.api.DOutput` of this phase's real and fake batches
    (the fakes are detached from G). Return a dict ``{name: loss}`` where each loss is a scalar or a
    per-sample tensor (it is averaged); each term is added to D's loss and reported as
    ``Loss/<plugin>/<name>``. Return ``None`` to add nothing.
    """


@hookspec
def g_loss(ctx, fake, fakes):
    """[collect] Add terms to G's loss in the Gmain phase.

    ``fakes`` is the sampler's :class:`ganstack.training.api.DInput` for this phase (``fakes.img`` carries G's
    graph) and ``fake`` the :class:`ganstack.training.api.DOutput` that D gave it. D's parameters do not get
    gradients in this phase. Return ``{name: loss}`` (scalars or per-sample tensors, averaged) or
    ``None``; each term is reported as ``Loss/<plugin>/<name>``.
    """


@hookspec
def after_step(state, stats):
    """[collect] Called after every training step (all phases, optimizer steps and G_ema update).

    ``state`` is the :class:`ganstack.training.loop.LoopState` (``step``, ``cur_nimg``, ``batch_size``,
    ``G``, ``D``, ``G_ema``, ``cfg``). ``stats`` maps every statistic reported during the step
    (``Loss/signs/real``, plugin reports, ...) to its mean over the step, all-reduced over GPUs, so
    every rank takes the same decision (ADA's p, Diffusion-GAN's T, a target-network EMA).
    """


@hookspec
def report_stats():
    """[each] Return a dict of scalar values to show once per tick.

    The values appear in the status line and in ``stats.jsonl`` as ``<plugin>/<key>`` (for example
    ``ada/p`` or ``diffusion/T``). Called on every rank; return only values that agree across ranks.
    """


# ---------------------------------------------------------------------------------------------
# Checkpoints


@hookspec
def state_dict():
    """[each] Return the plugin's state to save in a checkpoint, or ``None`` if it has none.

    The state is a dict of tensors, numbers, strings, lists and dicts (no arbitrary objects: it is
    loaded with ``torch.load(weights_only=True)``). It must contain everything needed for an exact
    resume: adaptive quantities, counters, private random generators, target networks.
    """


@hookspec
def load_state_dict(state):
    """[each] Restore the state that ``state_dict`` returned, when resuming or loading a checkpoint."""
