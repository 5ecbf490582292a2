"""Every hook of the ganstack training loop, with its kind, typed arguments, return type and example.

A plugin implements any subset of these with ``@ganstack.api.hookimpl``; an implementation may accept
only some of the arguments, by these names (pluggy passes what it asks for; any other name is refused at
start-up with the expected signature). The built-in ``core`` plugin provides the StyleGAN2 defaults
(networks, sampler, R1 and path-length regularization) behind every plugin.

Each hook's kind is declared once, here, by the ``@hook(KIND, ...)`` decorator, and the plugin manager
derives its calling from it (``stack.hooks.<name>(...)``):

* **each** - once for every enabled plugin; arguments may differ per plugin (``configure`` receives that
  plugin's options) and the results are kept per plugin (options, state, statistics, loss terms).
* **chain** - in ``--plugins`` order; the hook's first argument is the value that flows through the chain:
  each implementation receives the previous one's result and returns a replacement, or ``None`` to keep it.
* **collect** - every implementation runs (pluggy's own call); non-``None`` results are collected in order.
* **exclusive** - pluggy's ``firstresult``: at most one enabled plugin may implement it (two are a start-up
  conflict); the core default runs when no plugin does.

Implementations run in ``--plugins`` order, the core last (pluggy's own ordering; ``tryfirst``/``trylast``
and new-style ``wrapper=True`` implementations work on collect and exclusive hooks).

``ctx`` in the per-phase hooks is a :class:`ganstack.training.api.PhaseContext`; ``cfg`` is the run's
:class:`ganstack.training.config.TrainConfig`; ``data_info`` a :class:`ganstack.training.api.DataInfo`.
The README's hook reference table is generated from this module (``python -m ganstack.training.hookdoc``).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Optional

from ganstack.training.api import CHAIN, COLLECT, EACH, EXCLUSIVE, HOOK_KINDS, hookspec

if TYPE_CHECKING:  # names used in the annotations only
    import torch

    from ganstack.training.api import (DataInfo, DInput, DOutput, LazyRegularizer, LoopState, LRSchedule, Networks,
                                       Option, OptionValues, PhaseContext)
    from ganstack.training.config import TrainConfig

KIND_ATTR = "ganstack_kind"
WHEN_ATTR = "ganstack_when"
EXAMPLE_ATTR = "ganstack_example"


def hook(kind: str, when: str, example: str) -> Callable:
    """Declare a hookspec: its kind (once), when it is called, and a one-line example implementation."""
    if kind not in HOOK_KINDS:
        raise ValueError(f"unknown hook kind {kind!r}")

    def deco(fn):
        setattr(fn, KIND_ATTR, kind)
        setattr(fn, WHEN_ATTR, when)
        setattr(fn, EXAMPLE_ATTR, example)
        return hookspec(firstresult=(kind == EXCLUSIVE))(fn)
    return deco


# ---------------------------------------------------------------------------------------------
# Start-up


@hook(EACH, when="CLI build and every stack creation",
      example='return [Option("weight", float, 0.1, "weight of my term", min=0)]')
def add_options() -> list[Option]:
    """Declare this plugin's options (the only place their defaults are written).

    Return a list of :class:`ganstack.training.api.Option`. Each becomes the flag ``--<plugin>-<name>`` of
    ``ganstack train``, the key ``<plugin>.<name>`` for ``ganstack ablate``, and a row of
    ``ganstack plugins show``.
    """


@hook(EACH, when="start-up, after the preset is resolved, before anything is built",
      example="self.weight = opts.weight; cfg.set_default('glr', 2e-4)")
def configure(opts: OptionValues, cfg: TrainConfig, stack: list[str], features: frozenset) -> None:
    """Receive this plugin's parsed options before anything is built.

    ``opts`` holds this plugin's options (defaults filled in, types and ranges checked). ``cfg`` is the
    mutable configuration: a plugin may change a setting the user did not give explicitly (``cfg.set_default``,
    ``cfg.is_user_set(name)``), for example a recommended learning rate. ``stack`` is the ordered list of enabled
    plugin names (for messages only: compatibility is declared with :class:`~ganstack.training.api.Capabilities`
    and checked by the manager before this hook runs). ``features`` is the set of
    :data:`~ganstack.training.api.FEATURES` the stack provides. Raise
    :class:`~ganstack.training.api.PluginError` for option values that cannot work together.
    """


@hook(CHAIN, when="before G and D are built (role 'G', then 'D')",
      example="if role == 'D': return dict(kwargs, c_dim=kwargs['c_dim'] + 16)")
def network_kwargs(kwargs: dict, role: str, data_info: DataInfo, cfg: TrainConfig) -> Optional[dict]:
    """Adjust the constructor arguments of G (``role='G'``) or D (``role='D'``).

    ``kwargs`` is the dict that will be passed to the builder (for the backbone D it holds ``c_dim``,
    ``img_resolution``, ...). Return a new dict, or ``None`` to keep it. Example: the diffusion plugin
    grows D's ``c_dim`` by the size of its timestep embedding.
    """


@hook(EXCLUSIVE, when="once, building G (declares replaces: G)",
      example="return MyGenerator(**kwargs)")
def build_generator(kwargs: dict, data_info: DataInfo, cfg: TrainConfig) -> torch.nn.Module:
    """Build and return the generator, replacing the StyleGAN2/MLP backbone G.

    At most one enabled plugin may implement this. The module follows
    :class:`~ganstack.training.api.GeneratorProtocol` (``z_dim``, ``c_dim``, ``is_image``, ``w_dim``,
    ``num_ws``) and is used by the plugin's own ``sampler`` or by the core sampler's ``G(z, c, **G_kwargs)``.
    The plugin declares what its G provides (``Capabilities(provides=...)``).
    """


@hook(EXCLUSIVE, when="once, building D (declares replaces: D)",
      example="return MyDiscriminator(**kwargs)")
def build_discriminator(kwargs: dict, data_info: DataInfo, cfg: TrainConfig) -> torch.nn.Module:
    """Build and return the discriminator, replacing the backbone D.

    At most one enabled plugin may implement this. The module follows
    :class:`~ganstack.training.api.DiscriminatorProtocol` and its forward accepts
    ``D(img, c, return_features=True, **extra)``, returning ``(logits [N, 1], features [N, feature_dim])``.
    """


@hook(CHAIN, when="once, after G and D are built, before G_ema is copied",
      example="nets.D.add_module('head', torch.nn.Linear(nets.D.feature_dim, 8))")
def modify_networks(nets: Networks, cfg: TrainConfig, data_info: DataInfo) -> Optional[Networks]:
    """Change the built networks before the optimizers are made.

    ``nets`` is a :class:`~ganstack.training.api.Networks` with ``G`` and ``D``. A plugin may attach
    submodules (the CLR latent head is added to D so that D's optimizer trains it and D's checkpoint
    holds it) or wrap a network (then it declares ``replaces`` for it). Return a new ``Networks`` or ``None``
    after changing it in place. ``G_ema`` is copied from the final ``G`` after this hook.
    """


@hook(COLLECT, when="train and train --dry-run, before the run folder is created (not generate/metrics)",
      example="if not os.path.exists(self.opts.teacher): raise PluginError('...')")
def check_startup(data_info: DataInfo, cfg: TrainConfig) -> None:
    """Check, cheaply, what this plugin will need when training starts: that the files its options name exist
    and fit the data. Raise :class:`~ganstack.training.api.PluginError` with a message that says what would
    work; a failure here leaves no run folder behind. Called for training only, so a checkpoint still loads for
    sampling when such a file has moved. Return nothing.
    """


@hook(COLLECT, when="once per training run, after the networks (and G_ema) exist, before the optimizers",
      example="self.teacher = load_teacher(self.opts.teacher, data_info, device)")
def start_training(nets: Networks, data_info: DataInfo, device: torch.device, cfg: TrainConfig) -> None:
    """The start of training: load frozen helper models, initialise networks, build target networks.

    Called by the trainer only (not when ``generate`` or ``metrics`` load a checkpoint), before a resumed
    run's state is loaded, so ``load_state_dict`` may restore what this hook created. Return nothing.
    """


@hook(COLLECT, when="once, while G's and D's optimizers are built",
      example="if net == 'D': return [{'params': module.head.parameters(), 'lr': 1e-3}]")
def param_groups(net: str, module: torch.nn.Module, cfg: TrainConfig) -> Optional[list[dict]]:
    """Add parameter groups to G's (``net='G'``) or D's optimizer.

    Return a list of Adam parameter-group dicts (``{"params": [...], "lr": ...}``; keys left out take the
    base settings). Parameters named in a group leave the base group; parameters outside ``module`` may be
    added (save their values through ``state_dict``). The base group's settings (``--glr``/``--dlr``, betas and
    the StyleGAN2 lazy correction) never change.
    """


@hook(COLLECT, when="once, after the optimizers are built",
      example="return CosineAnnealingLR(optimizer, total_steps, eta_min=1e-5)")
def lr_schedule(net: str, optimizer: torch.optim.Optimizer, cfg: TrainConfig, total_steps: int
                ) -> Optional[LRSchedule]:
    """Set a learning-rate schedule for G's (``net='G'``) or D's optimizer.

    Return an object with ``step()``, ``state_dict()`` and ``load_state_dict()`` (any
    ``torch.optim.lr_scheduler`` scheduler) or ``None``. It is stepped once after every training step
    (``total_steps`` steps make the run) and its state is saved in checkpoints, so resume stays exact.
    At most one schedule per network: two are a start-up conflict.
    """


@hook(COLLECT, when="once at start-up, after start_training",
      example="return [LazyRegularizer('mine', 'G', 8, self.penalty)]")
def lazy_regularizers(cfg: TrainConfig) -> list[LazyRegularizer]:
    """Declare regularizers of G or D that run every k-th step: return a list of
    :class:`~ganstack.training.api.LazyRegularizer`.

    A regularizer of interval ``k`` runs on the steps ``s`` with ``s % k == 0`` and is multiplied by ``k``: in
    its network's reg phase when that step has one (the base StyleGAN2 reg steps: every ``--pl-interval`` for
    G, ``--r1-interval`` for D), otherwise inside the main phase; ``k = 1`` means every step inside the main
    phase. It never adds an optimizer step, so G's and D's learning rates and betas stay the configuration's
    (StyleGAN2's lazy correction of the base intervals only). The core declares R1 and path length here.
    """


# ---------------------------------------------------------------------------------------------
# Every training phase


@hook(CHAIN, when="start of every phase, before R1's leaf is made",
      example="return reals.replace(img=x_prev, extra={**reals.extra, 'x_t': x_t, 't': t})")
def prepare_reals(reals: DInput, ctx: PhaseContext) -> Optional[DInput]:
    """Transform the real batch once at the start of a phase.

    ``reals`` is a :class:`~ganstack.training.api.DInput` with the dataset's images in [-1, 1] and labels.
    Return a replacement or ``None``. This is for methods whose D does not see plain data (declared with
    ``Capabilities(d_input=...)``): DDGAN turns ``x_0`` into the pair ``(x_{t-1}, x_t)`` so that R1 acts on
    ``x_{t-1}``, and passes ``x_t`` and ``t`` in ``extra``. Keep ``c`` (the reals' labels). Augmentations belong
    in ``augment_d_input`` instead.
    """


@hook(EXCLUSIVE, when="every fake batch in training (ctx) and for generate/snapshots/metrics (ctx=None)",
      example="return DInput(img=G(z, c, **G_kwargs), c=c)")
def sampler(G: torch.nn.Module, z: torch.Tensor, c: torch.Tensor, ctx: Optional[PhaseContext],
            G_kwargs: dict) -> DInput:
    """Make fakes with generator ``G`` from latents ``z [N, z_dim]`` and labels ``c``.

    Returns a :class:`~ganstack.training.api.DInput` whose ``img`` is the fake batch. ``ctx`` is ``None`` when
    ``generate``, snapshots and metrics draw samples; then the sampler runs its full sampling chain and returns
    final samples. ``G_kwargs`` holds keyword arguments for a backbone G call (``truncation_psi``,
    ``noise_mode``, ``style_mixing_prob``, ``update_emas``). The core sampler returns ``DInput(G(z, c), c)``.

    **Training pairs for multi-step samplers.** A sampler may build the training fakes from this phase's real
    batch ``ctx.reals`` (after ``prepare_reals``) instead of from ``z`` alone. Then it returns
    ``DInput(img=..., c=ctx.reals.c[:N], extra=..., from_reals=True)``: row i derives from real row i, **keeps
    that real's label** (and G is conditioned on it, not on the loop's random ``c``), and carries the same
    ``extra`` entries as the reals so that D judges both alike. Data for the phase's loss hooks goes in
    ``info`` (``g_loss`` receives these fakes). The loop checks the labels.
    """


@hook(CHAIN, when="every D evaluation, reals and fakes, in --plugins order",
      example="return x.replace(img=x.img + 0.05 * torch.randn_like(x.img))")
def augment_d_input(x: DInput, ctx: Optional[PhaseContext], is_real: bool) -> Optional[DInput]:
    """Transform what D sees, for reals and fakes alike, before every D evaluation.

    ``x`` is a :class:`~ganstack.training.api.DInput`; ``is_real`` tells which branch it is. Return the
    augmented ``DInput`` (or ``None`` to pass it on unchanged). The pipeline must be differentiable: G's
    gradient and R1's gradient flow through it. Plugins run in ``--plugins`` order, so ``--plugins
    ada,diffusion`` augments first and diffuses second. A plugin declares the D-input kinds it transforms
    consistently (``Capabilities(augments=...)``; default plain batches only).
    """


@hook(EACH, when="Dmain phase",
      example="return {'latent': 5.0 * dist}")
def d_loss(ctx: PhaseContext, real: DOutput, fake: DOutput) -> Optional[dict[str, torch.Tensor]]:
    """Add terms to D's loss in the Dmain phase.

    ``real`` and ``fake`` are the :class:`~ganstack.training.api.DOutput` of this phase's real and fake
    batches (the fakes are detached from G). Return a dict ``{name: loss}`` where each loss is a scalar or a
    per-sample tensor (it is averaged); each term is added to D's loss and reported as
    ``Loss/<plugin>/<name>``. Return ``None`` to add nothing.
    """


@hook(EACH, when="Gmain phase",
      example="return {'energy': 0.1 * fakes.img.square().flatten(1).sum(1)}")
def g_loss(ctx: PhaseContext, fake: DOutput, fakes: DInput) -> Optional[dict[str, torch.Tensor]]:
    """Add terms to G's loss in the Gmain phase.

    ``fakes`` is the sampler's :class:`~ganstack.training.api.DInput` for this phase (``fakes.img`` carries
    G's graph, ``fakes.info`` what the sampler passed on) and ``fake`` the
    :class:`~ganstack.training.api.DOutput` that D gave it. D's parameters do not get gradients in this phase.
    Return ``{name: loss}`` (scalars or per-sample tensors, averaged) or ``None``; each term is reported as
    ``Loss/<plugin>/<name>``.
    """


@hook(COLLECT, when="after every training step (all phases, optimizer steps, G_ema, lr schedules)",
      example="self.ctl.update(stats, state.batch_size)")
def after_step(state: LoopState, stats: Any) -> None:
    """Called after every training step.

    ``state`` is the :class:`~ganstack.training.api.LoopState` (``step``, ``cur_nimg``, ``batch_size``,
    ``G``, ``D``, ``G_ema``, ``cfg``). ``stats`` maps every statistic reported during the step
    (``Loss/signs/real``, plugin reports, ...) to its mean over the step, all-reduced over GPUs, so every rank
    takes the same decision (ADA's p, Diffusion-GAN's T, a target-network EMA). ``stats[name]`` is a float
    (reading it waits for the GPU); ``stats.tensor(name)`` is the device value, which costs no sync.
    """


@hook(EACH, when="each tick (status line and stats.jsonl)",
      example="return {'p': self.p}")
def report_stats() -> Optional[dict[str, Any]]:
    """Return a dict of scalar values to show once per tick.

    The values appear under one name, ``<plugin>/<key>`` (for example ``ada/p`` or ``diffusion/T``), in the
    status line, ``stats.jsonl`` and TensorBoard. Called on every rank; return only values that agree across
    ranks. For a statistic measured during the phases, use ``ctx.report(name, value, status=True)`` instead:
    it is averaged over the tick without any code here.
    """


# ---------------------------------------------------------------------------------------------
# Checkpoints


@hook(EACH, when="every checkpoint",
      example="return {'count': self.count, 'gen': self.gen.get_state()}")
def state_dict() -> Optional[dict]:
    """Return the plugin's state to save in a checkpoint, or ``None`` if it has none.

    The state is a dict of tensors, numbers, strings, lists and dicts (no arbitrary objects: it is loaded with
    ``torch.load(weights_only=True)``). It must contain everything needed for an exact resume: adaptive
    quantities, counters, private random generators, target networks.
    """


@hook(EACH, when="resume, and loading a checkpoint for generate/metrics",
      example="self.count = state['count']")
def load_state_dict(state: dict) -> None:
    """Restore the state that ``state_dict`` returned, when resuming or loading a checkpoint (each plugin
    receives its own saved state; a plugin whose state the checkpoint lacks is not called)."""
