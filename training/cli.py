"""The ``ganstack`` command line.

``ganstack train | generate | plugins list | plugins show | dataset convert``, plus commands that
installed packages add through the entry-point group ``ganstack.commands`` (a click command each).
Every plugin option becomes a flag ``--<plugin>-<option>`` of ``train``.
"""
from __future__ import annotations

import importlib.metadata as importlib_metadata
import os
import sys
from typing import Optional

if "torch" not in sys.modules:
    # Read once by OpenMP when torch loads: idle intra-op threads sleep instead of spinning, so runs that
    # share a small CPU do not slow each other down ~30x (benchmarks/bench_threads.py; training/speed.py).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import click

from ganstack.stylegan_base.cli_support import (DEVICE, FINITE_FLOAT, SEED, SEED_LIST, atomic_path, check_output_dir,
                                               check_output_file, finite_float, int_range, parse_seed_list,
                                               resolve_device, run_main)
from ganstack.stylegan_base.errors import CheckpointError, GanstackError
from ganstack.training.api import ConfigError, PluginError
from ganstack.training.config import ALL_PRESETS, TrainConfig
from ganstack.training.plugin_manager import (CORE_NAME, declared_capabilities, discover, hook_names, load_plugin,
                                              parse_stack, plugin_option_schema)
from ganstack.training.run import TRAIN_RESUME_MUTABLE as RESUME_MUTABLE  # noqa: F401 - the list --help names
from ganstack.training.run import run_training as _run_training

COMMAND_GROUP = "ganstack.commands"


# ------------------------------------------------------------------------------------------------
# Helpers

def parse_range(s: str, flag: str = "--seeds") -> list[int]:
    """``'0-3,7'`` -> ``[0, 1, 2, 3, 7]``; empty, reversed or out-of-range lists are errors naming ``flag``."""
    return parse_seed_list(s, flag)


def _flag(plugin: str, opt: str) -> str:
    return f"--{plugin}-{opt.replace('_', '-')}"


def _param(plugin: str, opt: str) -> str:
    return f"plugin__{plugin}__{opt}"


def _plugin_doc(obj) -> str:
    doc = (getattr(obj, "__doc__", None) or "").strip()
    return doc.splitlines()[0] if doc else ""


def _safe_registry():
    try:
        return discover()
    except GanstackError as exc:
        click.echo(f"warning: {exc}", err=True)
        return {}


def _load_schemas(registry) -> dict:
    """``{plugin: [Option]}`` for every installed plugin; a broken plugin is reported, not fatal."""
    schemas = {}
    for name in registry:
        try:
            schemas[name] = plugin_option_schema(load_plugin(name, registry))
        except Exception as exc:  # noqa: BLE001 - a broken third-party plugin must not break the CLI
            click.echo(f"warning: plugin {name!r} could not be loaded: {exc}", err=True)
    return schemas


def _user_set(ctx: click.Context, names) -> set:
    from click.core import ParameterSource
    return {n for n in names if ctx.get_parameter_source(n) not in (ParameterSource.DEFAULT, None)}


# ------------------------------------------------------------------------------------------------
# train

# The click types refuse what is not a finite number or a representable whole number; the ranges of the
# options are checked in one place, training/config.py validate(), which also sees API and ablate --set values.
INT = int_range(-(2 ** 31), 2 ** 31 - 1)
POSITIVE_INT = int_range(1)
TRAIN_OPTIONS = [
    # (flag, TrainConfig field, click kwargs)
    ("--data", "data", dict(type=str, default=TrainConfig.data, show_default=True,
                            help="Dataset: a zip/folder of PNGs, a .npy/.csv point file, toy:gaussians25, toy:grid49, "
                                 "toy:ring8, or shapes32 (built-in procedural images).")),
    ("--cfg", "cfg", dict(type=click.Choice(ALL_PRESETS), default="auto", show_default=True,
                          help="Preset (StyleGAN2-ADA); 'auto' picks from the resolution, and 'toy' for point data.")),
    ("--kimg", "kimg", dict(type=FINITE_FLOAT, default=None, help="Training length in thousands of real images [default: preset]")),
    ("--seed", "seed", dict(type=SEED, default=0, show_default=True, help="Random seed.")),
    ("--batch", "batch", dict(type=INT, default=None, help="Total batch size [default: preset]")),
    ("--batch-gpu", "batch_gpu", dict(type=INT, default=None, help="Samples per GPU per round (gradient accumulation) [default: batch/GPUs]")),
    ("--gamma", "gamma", dict(type=FINITE_FLOAT, default=None, help="R1 weight [default: preset]")),
    ("--r1-interval", "r1_interval", dict(type=INT, default=16, show_default=True, help="Lazy R1 interval (1 = every step).")),
    ("--pl-weight", "pl_weight", dict(type=FINITE_FLOAT, default=None, help="Path-length weight [default: 2, 0 for cifar/toy]")),
    ("--pl-interval", "pl_interval", dict(type=INT, default=4, show_default=True, help="Lazy path-length interval.")),
    ("--style-mixing", "style_mixing", dict(type=FINITE_FLOAT, default=None, help="Style-mixing probability [default: 0.9, 0 for cifar]")),
    ("--glr", "glr", dict(type=FINITE_FLOAT, default=None, help="G learning rate [default: preset]")),
    ("--dlr", "dlr", dict(type=FINITE_FLOAT, default=None, help="D learning rate [default: preset]")),
    ("--ema", "ema_kimg", dict(type=FINITE_FLOAT, default=None, help="G_ema half-life in kimg [default: preset]")),
    ("--map-depth", "map_depth", dict(type=INT, default=None, help="Mapping network depth, 2..8 [default: preset]")),
    ("--z-dim", "z_dim", dict(type=INT, default=None, help="Latent size [default: 512 images, 32 points]")),
    ("--cbase", "cbase", dict(type=INT, default=None, help="Capacity multiplier (channel_base) [default: preset]")),
    ("--cmax", "cmax", dict(type=INT, default=512, show_default=True, help="Max. feature maps.")),
    ("--mbstd-group", "mbstd_group", dict(type=INT, default=None, help="Minibatch-std group size [default: preset]")),
    ("--d-architecture", "d_architecture", dict(type=click.Choice(["orig", "skip", "resnet"]), default=None,
                                                help="D architecture [default: resnet, orig for cifar]")),
    ("--init", "init", dict(type=str, default=None,
                            help="Start a new run from the G/D/G_ema weights of an official StyleGAN2-ADA / StyleGAN3 "
                                 "network-snapshot-*.pkl or a ganstack checkpoint (StyleGAN2-ADA's --resume PKL); "
                                 "optimiser and plugin state start fresh. Not with --resume.")),
    ("--freezed", "freezed", dict(type=int_range(0), default=0, show_default=True,
                                  help="Freeze the first N layers of D (StyleGAN2-ADA's Freeze-D).")),
    ("--mlp-hidden", "mlp_hidden", dict(type=INT, default=128, show_default=True, help="Hidden width of the MLP (point data).")),
    ("--mlp-g", "mlp_g", dict(type=click.Choice(["pacgan", "paper"]), default=None,
                              help="Toy generator: pacgan = 4 x 400 ReLU + BatchNorm, paper = D's LeakyReLU MLP "
                                   "(--mlp-hidden) [default: pacgan]")),
    # --cond / --mirror, and StyleGAN2-ADA's --cond=1 / --mirror=0 forms
    ("--cond", "cond", dict(type=click.BOOL, is_flag=False, flag_value=True, default=False, metavar="[BOOL]",
                            help="Train a class-conditional model (needs labels).")),
    ("--mirror", "mirror", dict(type=click.BOOL, is_flag=False, flag_value=True, default=False, metavar="[BOOL]",
                                help="Add x-flipped copies of the images.")),
    ("--max-size", "max_size", dict(type=POSITIVE_INT, default=None, help="Use at most this many dataset items.")),
    ("--tick", "tick", dict(type=FINITE_FLOAT, default=None, help="kimg per tick (status line) [default: 4, 20 for points]")),
    ("--snap", "snap", dict(type=INT, default=50, show_default=True, help="Ticks between checkpoints and pictures.")),
    ("--keep", "keep", dict(type=INT, default=5, show_default=True, help="Checkpoints kept (0 = all).")),
    ("--workers", "workers", dict(type=INT, default=2, show_default=True, help="Data-loader worker processes.")),
    ("--metrics", "metrics", dict(type=str, default="", help="Comma-separated metrics at each checkpoint (e.g. toy).")),
    ("--amp", "amp", dict(type=click.Choice(["off", "bf16", "fp16"]), default="off", show_default=True,
                          help="Mixed precision on GPU (autocast).")),
    ("--device", "device", dict(type=DEVICE, default="auto", show_default=True, help="cpu, cuda, cuda:N or auto.")),
    # speed (training/speed.py)
    ("--compile", "compile", dict(type=click.Choice(["off", "default", "reduce-overhead", "max-autotune",
                                                     "max-autotune-no-cudagraphs"]), default="off", show_default=True,
                                  help="torch.compile G and D (R1/path-length phases run eagerly); "
                                       "reduce-overhead adds CUDA graphs.")),
    ("--mp-res", "mp_res", dict(type=int, default=0, show_default=True,
                                help="Run the N highest resolutions of G and D in reduced precision (StyleGAN2-ADA: 4).")),
    ("--mp-dtype", "mp_dtype", dict(type=click.Choice(["bf16", "fp16"]), default="bf16", show_default=True,
                                    help="Dtype of the --mp-res blocks (fp16 on CUDA only).")),
    ("--channels-last", "channels_last", dict(is_flag=True, default=False, help="NHWC activations and weights in the image blocks.")),
    ("--tf32", "tf32", dict(is_flag=True, default=False, help="Allow TF32 matmuls/convolutions on the GPU.")),
    ("--sync-debug", "sync_debug", dict(is_flag=True, default=False,
                                        help="Fail on any host-device sync inside a training step.")),
    ("--threads", "threads", dict(type=int, default=None,
                                  help="CPU threads [default: 1 for point data, else the CPUs (split by ablate --jobs)].")),
    ("--tensorboard", "tensorboard", dict(is_flag=True, default=False, help="Also log to TensorBoard in the run folder.")),
    ("--allow-nonfinite", "allow_nonfinite", dict(is_flag=True, default=False,
                                                  help="Keep training when losses or weights become non-finite "
                                                       "(default: stop with exit status 3 and keep the last finite "
                                                       "checkpoint).")),
]
FLAGS = {field: flag for flag, field, _ in TRAIN_OPTIONS}


def flag_of(field: str) -> str:
    """The command-line flag of a TrainConfig option."""
    return FLAGS.get(field, "--" + field.replace("_", "-"))


def _config_from_cli(ctx, kwargs) -> tuple[TrainConfig, set]:
    values = {}
    for flag, field, _ in TRAIN_OPTIONS:
        v = kwargs[field]
        if field == "metrics":
            v = tuple(m.strip() for m in v.split(",") if m.strip()) if v else ()
        values[field] = v
    cfg = TrainConfig(**values)
    user = _user_set(ctx, [f for _, f, _ in TRAIN_OPTIONS])
    cfg.mark_user_set(user)
    return cfg, user


def _plugin_options_from_cli(kwargs, schemas) -> dict:
    given = {}
    for plugin, schema in schemas.items():
        for opt in schema:
            v = kwargs.get(_param(plugin, opt.name))
            if v is not None:
                given.setdefault(plugin, {})[opt.name] = v
    return given


def run_training(cfg: TrainConfig, plugin_names, plugin_options: dict, outdir: str,
                 resume: Optional[str] = None, dry_run: bool = False, log=None, device=None,
                 extra_startup=None) -> Optional[str]:
    """Everything ``ganstack train`` does after parsing (:func:`ganstack.training.run.run_training`)."""
    return _run_training(cfg, plugin_names, plugin_options, outdir, resume=resume, dry_run=dry_run, log=log,
                         device=device, flag=flag_of, extra_startup=extra_startup)


def make_train_command(schemas: dict) -> click.Command:
    params = []
    for flag, field, kw in TRAIN_OPTIONS:
        params.append(click.Option([flag, field], **kw))
    params += [
        click.Option(["--outdir"], type=str, default="training-runs", show_default=True, help="Where run folders go."),
        click.Option(["--plugins"], type=str, default=None,
                     help="Comma-separated plugins in order, e.g. ada,diffusion (pre-D augments run in this order)."),
        click.Option(["--resume"], type=str, default=None,
                     help="Continue exactly from a checkpoint file or the newest one in a run folder; only "
                          + ", ".join(flag_of(f) for f in RESUME_MUTABLE) + " may change (--data: the same data "
                          "at another path)."),
        click.Option(["-n", "--dry-run"], is_flag=True, default=False, help="Check the options, print them, and exit."),
    ]
    from ganstack.training import compat  # StyleGAN2-ADA's --aug/--p/--target/--augpipe/--subset/--fp32 ...
    ada_pipe = next((o for o in schemas.get(compat.ADA, []) if o.name == "augpipe"), None)
    params += compat.click_options(ada_pipe.choices if ada_pipe is not None else None)
    from ganstack.training import launch  # --gpus, --nodes, --launcher slurm (launch.py)
    params += launch.train_click_options()
    for plugin, schema in schemas.items():
        for opt in schema:
            default = "unset" if opt.default is None else opt.default
            params.append(click.Option([_flag(plugin, opt.name), _param(plugin, opt.name)], type=str, default=None,
                                       metavar=opt.type_name.upper(),
                                       help=f"[{plugin}] {opt.help} [default: {default}; {opt.describe_range()}]"))

    def callback(**kwargs):
        ctx = click.get_current_context()
        given = _user_set(ctx, list(kwargs))
        kwargs["plugins"], sg_user = compat.apply(kwargs, given, parse_stack)
        if launch.wants_launch(kwargs):  # other processes train: torch.distributed.run or a SLURM job
            return launch.launch_train(ctx, kwargs)
        cfg, _ = _config_from_cli(ctx, kwargs)
        cfg.mark_user_set(sg_user)
        options = _plugin_options_from_cli(kwargs, schemas)
        names = kwargs["plugins"]
        if names is None and not kwargs["resume"]:
            names = ""
        unused = sorted(set(options) - set(parse_stack(names) if names is not None else []))
        if unused and not kwargs["resume"]:
            flags = [_flag(p, o) for p in unused for o in options[p]]
            raise PluginError(f"{', '.join(flags)} given, but plugin(s) {', '.join(unused)} not enabled. "
                              f"Add them to --plugins (now: {names or 'none'}).")
        run_training(cfg, names, options, kwargs["outdir"], resume=kwargs["resume"], dry_run=kwargs["dry_run"],
                     extra_startup=None if kwargs["resume"] else lambda stack: [compat.augment_line(stack)])

    return click.Command("train", params=params, callback=callback,
                         help="Train a GAN (StyleGAN2-ADA loop) with a stack of plugins.",
                         epilog="Plugin options are listed above as --<plugin>-<option>; "
                                "'ganstack plugins show NAME' describes one plugin.")


# ------------------------------------------------------------------------------------------------
# generate

@click.command("generate")
@click.option("--network", "network", required=True,
              help="Checkpoint file, run folder (newest snapshot) or official StyleGAN2-ADA network-snapshot-*.pkl.")
@click.option("--seeds", type=SEED_LIST, default="0-15", show_default=True, help="Seeds, e.g. 0-63 or 1,5,9 (images).")
@click.option("--trunc", "truncation_psi", type=finite_float(), default=1.0, show_default=True, help="Truncation psi.")
@click.option("--class", "class_idx", type=int_range(0), default=None, help="Class label (conditional models).")
@click.option("--noise-mode", type=click.Choice(["const", "random", "none"]), default="const", show_default=True)
@click.option("--outdir", type=str, default="out", show_default=True, help="Where images go.")
@click.option("--grid", is_flag=True, default=False, help="Also write all seeds as one grid image.")
@click.option("--n", "n_points", type=int_range(1), default=2000, show_default=True, help="Number of samples (point data).")
@click.option("--out", "out_file", type=str, default=None, help="Output .npy file (point data) [default: OUTDIR/samples.npy].")
@click.option("--seed", type=SEED, default=0, show_default=True, help="Seed for point samples.")
@click.option("--device", type=DEVICE, default="auto", show_default=True)
def generate_command(network, seeds, truncation_psi, class_idx, noise_mode, outdir, grid, n_points, out_file, seed,
                     device):
    """Draw samples from a checkpoint through its plugins' sampler.

    Images: one PNG per seed (seed{N}.png). Point data: a .npy file of shape [n, D] and a scatter
    plot PNG beside it. Every file is written to a temporary name and renamed when complete, so a
    failure or Ctrl-C never leaves a partial file and never replaces an existing one with a bad one.
    """
    import numpy as np
    import torch

    from ganstack.training.inference import load_model
    from ganstack.training.snapshots import grid_shape, save_image_grid, save_scatter_panels

    # Everything that can be checked before loading or sampling is checked first.
    if out_file is not None:
        check_output_file(out_file, "--out", suffix=".npy")
    else:
        check_output_dir(outdir, "--outdir")
    dev = resolve_device(device)
    model = load_model(network, device=dev, flag="--network")
    G = model.G
    kind = model.data_info["kind"]
    if kind == "image" and out_file:
        raise ConfigError("--out FILE.npy is for point data; this model makes images, use --outdir.")
    if kind == "image":
        check_output_dir(outdir, "--outdir")
    if G.c_dim:
        if class_idx is None:
            raise ConfigError(f"This model is class-conditional ({G.c_dim} classes): give --class in 0..{G.c_dim - 1}.")
        if class_idx >= G.c_dim:
            raise ConfigError(f"--class {class_idx} is out of range; this model has classes 0..{G.c_dim - 1}.")
    elif class_idx is not None:
        click.echo("warning: --class ignored, the model is unconditional", err=True)

    def labels(n):
        c = torch.zeros([n, G.c_dim], device=dev)
        if G.c_dim:
            c[:, class_idx] = 1
        return c

    def finite(x, what):
        if not bool(torch.isfinite(torch.as_tensor(x)).all()):
            raise CheckpointError(f"The generator of {model.checkpoint['path']!r} produced NaN or infinite values "
                                  f"for {what}: its weights are not finite (the run diverged). Nothing was written; "
                                  f"use an earlier snapshot of the run.")

    G_kwargs = dict(truncation_psi=truncation_psi, noise_mode=noise_mode)
    if kind == "image":
        os.makedirs(outdir, exist_ok=True)
        imgs = []
        for s in seeds:
            z = torch.from_numpy(np.random.RandomState(s).randn(1, G.z_dim)).float().to(dev)
            torch.manual_seed(s)
            img = model.sample(z, labels(1), **G_kwargs)
            finite(img, f"seed {s}")
            if grid:
                imgs.append(img.cpu())
            with atomic_path(os.path.join(outdir, f"seed{s:04d}.png")) as tmp:
                save_image_grid(img, tmp, (1, 1))
        click.echo(f"Wrote {len(seeds)} image{'s' if len(seeds) != 1 else ''} to {outdir}/")
        if grid:
            gw, _ = grid_shape(model.data_info["resolution"])
            gw = min(gw, len(imgs))
            gh = (len(imgs) + gw - 1) // gw
            path = os.path.join(outdir, "grid.png")
            with atomic_path(path) as tmp:
                save_image_grid(torch.cat(imgs), tmp, (gw, gh))
            click.echo(f"Wrote {path}")
    else:
        out_file = out_file or os.path.join(outdir, "samples.npy")
        torch.manual_seed(seed)
        g = torch.Generator(device=dev).manual_seed(seed)
        z = torch.randn([n_points, G.z_dim], generator=g, device=dev)
        x = model.sample(z, labels(n_points), **G_kwargs).cpu().numpy()
        finite(x, f"{n_points} samples")
        with atomic_path(out_file) as tmp:
            np.save(tmp, x)
        png = os.path.splitext(out_file)[0] + ".png"
        centers = model.data_info.get("toy", {}).get("centers")
        with atomic_path(png) as tmp:
            plotted = save_scatter_panels([(f"{n_points} samples", x)], tmp,
                                          centers=None if centers is None else np.asarray(centers))
        click.echo(f"Wrote {out_file} ({x.shape[0]} x {x.shape[1]})" + (f" and {png}" if plotted else
                                                                          " (no scatter plot: matplotlib is missing)"))


# ------------------------------------------------------------------------------------------------
# plugins

@click.group("plugins")
def plugins_group():
    """List and describe the installed plugins."""


@plugins_group.command("list")
def plugins_list():
    """Show built-in and installed plugins with their source."""
    registry = _safe_registry()
    if not registry:
        click.echo("No plugins installed.")
        return
    rows = []
    for name, (info, _) in registry.items():
        try:
            obj = load_plugin(name, registry)
            doc = _plugin_doc(obj)
        except GanstackError as exc:
            doc = f"(failed to load: {exc})"
        rows.append((name, info.source, doc))
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    click.echo(f"{'name':<{w0}}  {'source':<{w1}}  description")
    for name, source, doc in rows:
        click.echo(f"{name:<{w0}}  {source:<{w1}}  {doc}")
    click.echo(f"\nEntry-point group: ganstack.plugins. Enable with --plugins a,b,c; details: ganstack plugins show NAME")


@plugins_group.command("show")
@click.argument("name")
def plugins_show(name):
    """Describe one plugin: source, hooks and options."""
    registry = _safe_registry()
    if name == CORE_NAME:
        from ganstack.training.core import CorePlugin
        obj, source = CorePlugin(), "built-in (always on)"
    else:
        obj = load_plugin(name, registry)
        source = registry[name][0].source + f"  ({registry[name][0].value})"
    doc = (getattr(obj, "__doc__", None) or "").strip()
    click.echo(f"{name}  [{source}]")
    if doc:
        click.echo("\n" + "\n".join("  " + line.strip() for line in doc.splitlines()))
    hooks = [h for h in hook_names() if hasattr(getattr(obj, h, None), "ganstack_impl")]
    click.echo(f"\nHooks: {', '.join(hooks) or '(none)'}")
    click.echo("Declarations:")
    for line in declared_capabilities(obj).describe():
        click.echo(f"  {line}")
    for opt in plugin_option_schema(obj):
        for value, feats in dict(opt.requires).items():
            click.echo(f"  {_flag(name, opt.name)} {value} requires: {', '.join([feats] if isinstance(feats, str) else feats)}")
    schema = plugin_option_schema(obj)
    if not schema:
        click.echo("Options: (none)")
        return
    click.echo("Options:")
    for opt in schema:
        default = "unset" if opt.default is None else opt.default
        click.echo(f"  {_flag(name, opt.name)} {opt.type_name.upper()}")
        click.echo(f"      {opt.help}")
        click.echo(f"      default: {default}; {opt.describe_range()}")


# ------------------------------------------------------------------------------------------------
# The group

def build_cli() -> click.Group:
    registry = _safe_registry()
    schemas = _load_schemas(registry)

    @click.group(context_settings=dict(help_option_names=["-h", "--help"], max_content_width=110))
    def cli():
        """ganstack: a StyleGAN2-ADA-style GAN trainer whose methods are stackable plugins."""

    cli.add_command(make_train_command(schemas))
    cli.add_command(generate_command)
    cli.add_command(plugins_group)
    from ganstack.stylegan_base.dataset_tool import dataset as dataset_group
    cli.add_command(dataset_group)
    for ep in importlib_metadata.entry_points(group=COMMAND_GROUP):
        try:
            cmd = ep.load()
        except Exception as exc:  # noqa: BLE001
            click.echo(f"warning: command {ep.name!r} could not be loaded: {exc}", err=True)
            continue
        cli.add_command(cmd, name=ep.name)
    return cli


def main(argv=None):
    """Console entry point: every failure prints one paragraph and exits non-zero, no traceback.

    Bad input (GanstackError, click usage errors) exits 2; the environment (a full disk, permissions, a
    file where a folder should be, out of memory) exits 1; a bug in ganstack also exits 1, with its
    traceback written to a crash file named in the message (see ``stylegan_base/cli_support.py``).
    """
    def invoke():
        cli = build_cli()
        cli.main(args=argv, prog_name="ganstack", standalone_mode=False)

    run_main(invoke)


if __name__ == "__main__":
    main()
