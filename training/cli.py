"""The ``ganstack`` command line.

``ganstack train | generate | plugins list | plugins show | dataset convert``, plus commands that
installed packages add through the entry-point group ``ganstack.commands`` (a click command each).
Every plugin option becomes a flag ``--<plugin>-<option>`` of ``train``.
"""
from __future__ import annotations

import importlib.metadata as importlib_metadata
import json
import os
import re
import sys
import traceback
from typing import Optional

if "torch" not in sys.modules:
    # Read once by OpenMP when torch loads: idle intra-op threads sleep instead of spinning, so runs that
    # share a small CPU do not slow each other down ~30x (benchmarks/bench_threads.py; training/speed.py).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import click

from ganstack.stylegan_base.errors import CheckpointError, GanstackError
from ganstack.training.api import ConfigError, PluginError
from ganstack.training.config import ALL_PRESETS, TrainConfig
from ganstack.training.plugin_manager import (CORE_NAME, discover, hook_names, load_plugin, parse_stack,
                                     plugin_option_schema)

COMMAND_GROUP = "ganstack.commands"
# Options a resumed run may change; everything else must match the checkpoint.
RESUME_MUTABLE = {"kimg", "snap", "image_snap", "keep", "workers", "metrics", "tick", "device", "tensorboard",
                  "compile", "channels_last", "tf32", "sync_debug", "threads"}  # speed switches keep the math


# ------------------------------------------------------------------------------------------------
# Helpers

def parse_range(s: str) -> list[int]:
    """``'0-3,7'`` -> ``[0, 1, 2, 3, 7]``."""
    out = []
    for part in str(s).split(","):
        part = part.strip()
        if not part:
            continue
        m = re.fullmatch(r"(\d+)-(\d+)", part)
        if m:
            a, b = int(m.group(1)), int(m.group(2))
            if b < a:
                raise click.BadParameter(f"range {part!r} is empty; write low-high")
            out.extend(range(a, b + 1))
        elif part.isdigit():
            out.append(int(part))
        else:
            raise click.BadParameter(f"{part!r} is not a number or a range like 0-63")
    return out


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


def new_run_dir(outdir: str, desc: str) -> str:
    """``<outdir>/<NNNNN>-<desc>`` with the next free number, as StyleGAN2-ADA names runs."""
    os.makedirs(outdir, exist_ok=True)
    ids = [int(m.group(1)) for m in (re.match(r"^(\d+)-", d) for d in os.listdir(outdir)) if m]
    run_id = max(ids, default=-1) + 1
    path = os.path.join(outdir, f"{run_id:05d}-{desc}")
    os.makedirs(path, exist_ok=False)
    return path


class Tee:
    """Print to the terminal and to ``log.txt`` in the run folder."""

    def __init__(self, path):
        self.f = open(path, "at")

    def __call__(self, msg: str):
        click.echo(msg)
        self.f.write(msg + "\n")
        self.f.flush()


# ------------------------------------------------------------------------------------------------
# train

TRAIN_OPTIONS = [
    # (flag, TrainConfig field, click kwargs)
    ("--data", "data", dict(type=str, default=TrainConfig.data, show_default=True,
                            help="Dataset: a zip/folder of PNGs, a .npy/.csv point file, toy:gaussians25, toy:grid49, "
                                 "toy:ring8, or shapes32 (built-in procedural images).")),
    ("--cfg", "cfg", dict(type=click.Choice(ALL_PRESETS), default="auto", show_default=True,
                          help="Preset (StyleGAN2-ADA); 'auto' picks from the resolution, and 'toy' for point data.")),
    ("--kimg", "kimg", dict(type=float, default=None, help="Training length in thousands of real images [default: preset]")),
    ("--seed", "seed", dict(type=int, default=0, show_default=True, help="Random seed.")),
    ("--batch", "batch", dict(type=int, default=None, help="Total batch size [default: preset]")),
    ("--batch-gpu", "batch_gpu", dict(type=int, default=None, help="Samples per GPU per round (gradient accumulation) [default: batch/GPUs]")),
    ("--gamma", "gamma", dict(type=float, default=None, help="R1 weight [default: preset]")),
    ("--r1-interval", "r1_interval", dict(type=int, default=16, show_default=True, help="Lazy R1 interval (1 = every step).")),
    ("--pl-weight", "pl_weight", dict(type=float, default=None, help="Path-length weight [default: 2, 0 for cifar/toy]")),
    ("--pl-interval", "pl_interval", dict(type=int, default=4, show_default=True, help="Lazy path-length interval.")),
    ("--style-mixing", "style_mixing", dict(type=float, default=None, help="Style-mixing probability [default: 0.9, 0 for cifar]")),
    ("--glr", "glr", dict(type=float, default=None, help="G learning rate [default: preset]")),
    ("--dlr", "dlr", dict(type=float, default=None, help="D learning rate [default: preset]")),
    ("--ema", "ema_kimg", dict(type=float, default=None, help="G_ema half-life in kimg [default: preset]")),
    ("--map-depth", "map_depth", dict(type=int, default=None, help="Mapping network depth, 2..8 [default: preset]")),
    ("--z-dim", "z_dim", dict(type=int, default=None, help="Latent size [default: 512 images, 32 points]")),
    ("--cbase", "cbase", dict(type=int, default=None, help="Capacity multiplier (channel_base) [default: preset]")),
    ("--cmax", "cmax", dict(type=int, default=512, show_default=True, help="Max. feature maps.")),
    ("--mbstd-group", "mbstd_group", dict(type=int, default=None, help="Minibatch-std group size [default: preset]")),
    ("--d-architecture", "d_architecture", dict(type=click.Choice(["orig", "skip", "resnet"]), default=None,
                                                help="D architecture [default: resnet, orig for cifar]")),
    ("--mlp-hidden", "mlp_hidden", dict(type=int, default=128, show_default=True, help="Hidden width of the MLP (point data).")),
    ("--cond", "cond", dict(is_flag=True, default=False, help="Train a class-conditional model (needs labels).")),
    ("--mirror", "mirror", dict(is_flag=True, default=False, help="Add x-flipped copies of the images.")),
    ("--max-size", "max_size", dict(type=int, default=None, help="Use at most this many dataset items.")),
    ("--tick", "tick", dict(type=float, default=None, help="kimg per tick (status line) [default: 4, 20 for points]")),
    ("--snap", "snap", dict(type=int, default=50, show_default=True, help="Ticks between checkpoints and pictures.")),
    ("--keep", "keep", dict(type=int, default=5, show_default=True, help="Checkpoints kept (0 = all).")),
    ("--workers", "workers", dict(type=int, default=2, show_default=True, help="Data-loader worker processes.")),
    ("--metrics", "metrics", dict(type=str, default="", help="Comma-separated metrics at each checkpoint (e.g. toy).")),
    ("--amp", "amp", dict(type=click.Choice(["off", "bf16", "fp16"]), default="off", show_default=True,
                          help="Mixed precision on GPU (autocast).")),
    ("--device", "device", dict(type=str, default="auto", show_default=True, help="cpu, cuda, cuda:N or auto.")),
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
]


def _config_from_cli(ctx, kwargs) -> tuple[TrainConfig, set]:
    values = {}
    for flag, field, _ in TRAIN_OPTIONS:
        v = kwargs[field]
        if field == "metrics":
            v = tuple(m.strip() for m in v.split(",") if m.strip()) if v else ()
        values[field] = v
    cfg = TrainConfig(**values)
    user = _user_set(ctx, [f for _, f, _ in TRAIN_OPTIONS])
    cfg._user_set = set(user)
    return cfg, user


def _plugin_options_from_cli(kwargs, schemas) -> dict:
    given = {}
    for plugin, schema in schemas.items():
        for opt in schema:
            v = kwargs.get(_param(plugin, opt.name))
            if v is not None:
                given.setdefault(plugin, {})[opt.name] = v
    return given


def _run_description(cfg, names, data_name) -> str:
    plugins = "-".join(names) if names else "none"
    desc = f"{data_name}-{cfg.cfg}-{plugins}"
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", desc)[:120]


def run_training(cfg: TrainConfig, plugin_names, plugin_options: dict, outdir: str,
                 resume: Optional[str] = None, dry_run: bool = False, log=None, device=None) -> Optional[str]:
    """Everything ``ganstack train`` does after parsing; also used by ``ganstack ablate`` and tests.

    Returns the run folder.
    """
    import torch

    from ganstack.stylegan_base.datasets import open_dataset
    from ganstack.training import checkpoint as ckpt_io
    from ganstack.training import distributed
    from ganstack.training.config import resolve, validate
    from ganstack.training.loop import Trainer
    from ganstack.training.plugin_manager import PluginStack

    resume_ckpt = None
    if resume:
        resume_ckpt = ckpt_io.load(resume)
        cfg, plugin_names, plugin_options = _merge_resume(cfg, plugin_names, plugin_options, resume_ckpt)

    dev = device or cfg.device
    if dev == "auto":
        dev = "cuda" if torch.cuda.is_available() else "cpu"
    rank, world, local_rank = distributed.init_from_env(torch.device(dev).type)
    if torch.device(dev).type == "cuda" and world > 1:
        dev = f"cuda:{local_rank}"

    dataset = open_dataset(cfg.data, mirror=cfg.mirror, max_size=cfg.max_size, use_labels=cfg.cond)
    info = dataset.info()
    if torch.device(dev).type == "cpu":
        from ganstack.training.speed import configure_threads
        configure_threads(cfg.threads, kind=info["kind"])
    if resume_ckpt is not None:
        _check_dataset_compatible(resume_ckpt["dataset"], info, cfg.data)
        validate(cfg, info, world)
    else:
        resolve(cfg, info, world)
    stack = PluginStack(plugin_names, plugin_options)
    stack.configure(cfg)
    validate(cfg, info, world)

    run_dir = None
    if rank == 0:
        run_dir = new_run_dir(outdir, _run_description(cfg, stack.names, info.get("name", "data")))
    run_dir = distributed.broadcast_object(run_dir)
    if log is None:
        log = Tee(os.path.join(run_dir, "log.txt")) if rank == 0 else (lambda *_: None)
    if rank == 0:
        with open(os.path.join(run_dir, "training_options.json"), "wt") as f:
            json.dump({"config": cfg.to_dict(), "plugins": stack.names, "plugin_options": stack.options_dict(),
                       "dataset": info, "resume": resume_ckpt["path"] if resume_ckpt else None,
                       "world_size": world}, f, indent=2)
    log(f"Run folder:   {run_dir}")
    log(f"Dataset:      {cfg.data} ({_describe_info(info)})")
    log(f"Preset:       {cfg.cfg}  batch {cfg.batch}  glr {cfg.glr:g}  dlr {cfg.dlr:g}  gamma {cfg.gamma:g}  "
        f"ema {cfg.ema_kimg:g} kimg" + (f" (rampup {cfg.ema_rampup:g})" if cfg.ema_rampup else "")
        + f"  kimg {cfg.kimg:g}  GPUs {world}  device {dev}")
    log(f"Plugins:      {', '.join(stack.names) or 'none'}" + (
        "" if len(stack.names) < 2 else "   (pre-D augments run in this order)"))
    for name in stack.names:
        opts = ", ".join(f"{k}={v}" for k, v in stack.options[name].as_dict().items())
        if opts:
            log(f"  {name}: {opts}")
    if dry_run:
        log("Dry run: options are valid; exiting without training.")
        return run_dir
    trainer = Trainer(cfg, stack, dataset, run_dir=run_dir, resume=resume_ckpt, device=dev, log=log)
    from ganstack.training.speed import attach_to_trainer  # until the loop enters the speed scopes itself
    log(f"Speed:        {attach_to_trainer(trainer).describe()}, {torch.get_num_threads()} CPU thread(s)")
    if resume_ckpt is not None:
        log(f"Resuming from {resume_ckpt['path']} at {trainer.cur_nimg / 1000:.1f} kimg.")
    n_g = sum(p.numel() for p in trainer.G.parameters())
    n_d = sum(p.numel() for p in trainer.D.parameters())
    log(f"Networks:     G {n_g / 1e6:.2f} M params, D {n_d / 1e6:.2f} M params")
    trainer.run()
    return run_dir


def _describe_info(info) -> str:
    if info["kind"] == "image":
        s = f"{info['len']} images, {info['resolution']}x{info['resolution']}x{info['num_channels']}"
    else:
        s = f"{info['len']} points in {info['point_dim']}-D"
    if info.get("label_dim"):
        s += f", {info['label_dim']} label dims"
    return s


def _check_dataset_compatible(saved: dict, now: dict, spec: str):
    keys = ["kind", "resolution", "num_channels", "point_dim", "label_dim"]
    diff = [k for k in keys if saved.get(k) != now.get(k)]
    if diff:
        detail = ", ".join(f"{k}: checkpoint {saved.get(k)!r} vs data {now.get(k)!r}" for k in diff)
        raise CheckpointError(f"The checkpoint was trained on data of another shape than {spec!r} ({detail}). "
                              f"Resume with the dataset it was trained on (--data {saved.get('name', '?')}).")


def _merge_resume(cfg: TrainConfig, names, options, ckpt):
    saved = TrainConfig.from_dict(ckpt["config"])
    conflicts = []
    for field in sorted(cfg._user_set):
        if field in RESUME_MUTABLE:
            continue
        if getattr(cfg, field) != getattr(saved, field):
            conflicts.append(f"--{field.replace('_', '-')} {getattr(cfg, field)!r} (checkpoint: {getattr(saved, field)!r})")
    for field in cfg._user_set & RESUME_MUTABLE:
        setattr(saved, field, getattr(cfg, field))
    saved._user_set = set(saved._user_set) | (cfg._user_set & RESUME_MUTABLE)
    if names is not None and parse_stack(names) != list(ckpt["plugins"]):
        conflicts.append(f"--plugins {','.join(parse_stack(names)) or 'none'} "
                         f"(checkpoint: {','.join(ckpt['plugins']) or 'none'})")
    for plugin, opts in (options or {}).items():
        for key, value in opts.items():
            old = ckpt["plugin_options"].get(plugin, {}).get(key)
            if str(old) != str(value):
                conflicts.append(f"{_flag(plugin, key)} {value!r} (checkpoint: {old!r})")
    if conflicts:
        raise CheckpointError("A resumed run continues with the options of its checkpoint, but these differ: "
                              + "; ".join(conflicts) + ". Drop them, or start a new run without --resume. "
                              f"Only {', '.join('--' + f.replace('_', '-') for f in sorted(RESUME_MUTABLE))} may change.")
    return saved, list(ckpt["plugins"]), ckpt["plugin_options"]


def make_train_command(schemas: dict) -> click.Command:
    params = []
    for flag, field, kw in TRAIN_OPTIONS:
        params.append(click.Option([flag, field], **kw))
    params += [
        click.Option(["--outdir"], type=str, default="training-runs", show_default=True, help="Where run folders go."),
        click.Option(["--plugins"], type=str, default=None,
                     help="Comma-separated plugins in order, e.g. ada,diffusion (pre-D augments run in this order)."),
        click.Option(["--resume"], type=str, default=None,
                     help="Continue exactly from a checkpoint file or the newest one in a run folder."),
        click.Option(["--dry-run"], is_flag=True, default=False, help="Check the options, print them, and exit."),
    ]
    for plugin, schema in schemas.items():
        for opt in schema:
            default = "unset" if opt.default is None else opt.default
            params.append(click.Option([_flag(plugin, opt.name), _param(plugin, opt.name)], type=str, default=None,
                                       metavar=opt.type_name.upper(),
                                       help=f"[{plugin}] {opt.help} [default: {default}; {opt.describe_range()}]"))

    def callback(**kwargs):
        ctx = click.get_current_context()
        cfg, _ = _config_from_cli(ctx, kwargs)
        options = _plugin_options_from_cli(kwargs, schemas)
        names = kwargs["plugins"]
        if names is None and not kwargs["resume"]:
            names = ""
        unused = sorted(set(options) - set(parse_stack(names) if names is not None else []))
        if unused and not kwargs["resume"]:
            flags = [_flag(p, o) for p in unused for o in options[p]]
            raise PluginError(f"{', '.join(flags)} given, but plugin(s) {', '.join(unused)} not enabled. "
                              f"Add them to --plugins (now: {names or 'none'}).")
        run_training(cfg, names, options, kwargs["outdir"], resume=kwargs["resume"], dry_run=kwargs["dry_run"])

    return click.Command("train", params=params, callback=callback,
                         help="Train a GAN (StyleGAN2-ADA loop) with a stack of plugins.",
                         epilog="Plugin options are listed above as --<plugin>-<option>; "
                                "'ganstack plugins show NAME' describes one plugin.")


# ------------------------------------------------------------------------------------------------
# generate

@click.command("generate")
@click.option("--network", "network", required=True, help="Checkpoint file or run folder (newest snapshot).")
@click.option("--seeds", type=str, default="0-15", show_default=True, help="Seeds, e.g. 0-63 or 1,5,9 (images).")
@click.option("--trunc", "truncation_psi", type=float, default=1.0, show_default=True, help="Truncation psi.")
@click.option("--class", "class_idx", type=int, default=None, help="Class label (conditional models).")
@click.option("--noise-mode", type=click.Choice(["const", "random", "none"]), default="const", show_default=True)
@click.option("--outdir", type=str, default="out", show_default=True, help="Where images go.")
@click.option("--grid", is_flag=True, default=False, help="Also write all seeds as one grid image.")
@click.option("--n", "n_points", type=int, default=2000, show_default=True, help="Number of samples (point data).")
@click.option("--out", "out_file", type=str, default=None, help="Output .npy file (point data).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for point samples.")
@click.option("--device", type=str, default="auto", show_default=True)
def generate_command(network, seeds, truncation_psi, class_idx, noise_mode, outdir, grid, n_points, out_file, seed,
                     device):
    """Draw samples from a checkpoint through its plugins' sampler.

    Images: one PNG per seed (seed{N}.png). Point data: a .npy file of shape [n, D] and a scatter
    plot PNG beside it.
    """
    import numpy as np
    import torch

    from ganstack.training.inference import load_model
    from ganstack.training.snapshots import grid_shape, save_image_grid, save_scatter_panels

    dev = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    model = load_model(network, device=dev)
    G = model.G
    if model.data_info["kind"] == "image" and out_file:
        raise ConfigError("--out FILE.npy is for point data; this model makes images, use --outdir.")

    def labels(n):
        c = torch.zeros([n, G.c_dim], device=dev)
        if G.c_dim:
            if class_idx is None:
                raise ConfigError(f"This model is class-conditional ({G.c_dim} classes): give --class in "
                                  f"0..{G.c_dim - 1}.")
            if not 0 <= class_idx < G.c_dim:
                raise ConfigError(f"--class {class_idx} is out of range; this model has classes 0..{G.c_dim - 1}.")
            c[:, class_idx] = 1
        elif class_idx is not None:
            click.echo("warning: --class ignored, the model is unconditional", err=True)
        return c

    G_kwargs = dict(truncation_psi=truncation_psi, noise_mode=noise_mode)
    if model.data_info["kind"] == "image":
        seed_list = parse_range(seeds)
        os.makedirs(outdir, exist_ok=True)
        imgs = []
        for s in seed_list:
            z = torch.from_numpy(np.random.RandomState(s).randn(1, G.z_dim)).float().to(dev)
            torch.manual_seed(s)
            img = model.sample(z, labels(1), **G_kwargs)
            imgs.append(img.cpu())
            save_image_grid(img, os.path.join(outdir, f"seed{s:04d}.png"), (1, 1))
        click.echo(f"Wrote {len(seed_list)} images to {outdir}/")
        if grid:
            gw, _ = grid_shape(model.data_info["resolution"])
            gw = min(gw, len(imgs))
            gh = (len(imgs) + gw - 1) // gw
            path = os.path.join(outdir, "grid.png")
            save_image_grid(torch.cat(imgs), path, (gw, gh))
            click.echo(f"Wrote {path}")
    else:
        out_file = out_file or os.path.join(outdir, "samples.npy")
        os.makedirs(os.path.dirname(os.path.abspath(out_file)), exist_ok=True)
        torch.manual_seed(seed)
        g = torch.Generator(device=dev).manual_seed(seed)
        z = torch.randn([n_points, G.z_dim], generator=g, device=dev)
        x = model.sample(z, labels(n_points), **G_kwargs).cpu().numpy()
        np.save(out_file, x)
        png = os.path.splitext(out_file)[0] + ".png"
        centers = model.data_info.get("toy", {}).get("centers")
        save_scatter_panels([(f"{n_points} samples", x)], png,
                            centers=None if centers is None else np.asarray(centers))
        click.echo(f"Wrote {out_file} ({x.shape[0]} x {x.shape[1]}) and {png}")


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
    """Console entry point: user errors print one paragraph and exit 2; no traceback."""
    try:
        cli = build_cli()
        cli.main(args=argv, prog_name="ganstack", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except GanstackError as exc:
        click.echo(f"Error: {exc}", err=True)
        if os.environ.get("GANSTACK_DEBUG"):
            traceback.print_exc()
        sys.exit(2)
    except SystemExit:
        raise
    except KeyboardInterrupt:
        click.echo("Interrupted.", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
