"""Training options and the StyleGAN2-ADA configuration presets.

:class:`TrainConfig` holds every option of a run. It is filled in three layers: the dataclass
defaults, then the preset chosen by ``--cfg`` (resolved against the dataset and the number of GPUs,
exactly as StyleGAN2-ADA's ``train.py`` does), then the options the user gave explicitly. Plugins may
change options in their ``configure`` hook, but only those the user did not set
(:meth:`TrainConfig.is_user_set`).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Optional

from ganstack.training.api import ConfigError
from ganstack.training.options import RunOptions

# StyleGAN2-ADA (Karras et al. 2020), train.py: cfg_specs.
#   mb: total batch, mbstd: minibatch-std group, fmaps: channel_base / 32768, lrate: G and D lr,
#   gamma: R1 weight, ema: G_ema half-life in kimg, ramp: ema rampup, map: mapping depth.
PRESETS = {
    "cifar":     dict(ref_gpus=2, kimg=100000, mb=64, mbstd=32, fmaps=1,   lrate=0.0025, gamma=0.01, ema=500, ramp=0.05, map=2),
    "paper256":  dict(ref_gpus=8, kimg=25000,  mb=64, mbstd=8,  fmaps=0.5, lrate=0.0025, gamma=1,    ema=20,  ramp=None, map=8),
    "paper512":  dict(ref_gpus=8, kimg=25000,  mb=64, mbstd=8,  fmaps=1,   lrate=0.0025, gamma=0.5,  ema=20,  ramp=None, map=8),
    "paper1024": dict(ref_gpus=8, kimg=25000,  mb=32, mbstd=4,  fmaps=1,   lrate=0.002,  gamma=2,    ema=10,  ramp=None, map=8),
    "stylegan2": dict(ref_gpus=8, kimg=25000,  mb=32, mbstd=4,  fmaps=1,   lrate=0.002,  gamma=10,   ema=10,  ramp=None, map=8),
    # The 2-D experiments: D is the MLP of Diffusion-GAN Sec. 4 / SMaRt Sec. 4.2 (two 128-unit LeakyReLU
    # hidden layers), G PacGAN's 4 x 400 ReLU + BatchNorm (mlp_g, see MLP_GENERATORS). Not a StyleGAN2-ADA
    # preset; batch 64, lr 1e-3 and Adam betas (0.5, 0.999) chosen on the calibrated toy metric
    # (README "The toy preset").
    "toy":       dict(ref_gpus=1, kimg=750,    mb=64,  mbstd=0, fmaps=0,   lrate=0.001,  gamma=0.0,  ema=1,   ramp=None, map=0,
                      betas=(0.5, 0.999), mlp_g="pacgan"),
}
# The toy generator (``--mlp-g``). "paper": mlp_layers x mlp_hidden LeakyReLU(0.2), the same MLP as D
# (Diffusion-GAN Sec. 4, SMaRt Sec. 4.2). "pacgan": 4 x 400 ReLU + BatchNorm (PacGAN App. / VEEGAN's 2-D
# generator), the toy preset's: the paper MLP put most samples along the square's border instead of on
# the modes (benchmarks/toy_rootcause.py, README "The toy preset"). D is always the paper MLP.
# BatchNorm normalises over each forward's batch: with --batch-gpu below the per-GPU batch, or several GPUs,
# G sees the statistics of each round's part of the batch (as minibatch-std groups do in the image D), and
# the running statistics (used by G_ema in eval mode) are each rank's own; rank 0's are saved.
MLP_GENERATORS = {
    "paper": None,
    "pacgan": dict(hidden=400, num_hidden_layers=4, activation="relu", batchnorm=True),
}
MAX_BATCH = 1 << 20  # a sanity bound: StyleGAN2-ADA uses 32-64, the 2-D MLP experiments a few hundred
STYLEGAN2_BETAS = (0.0, 0.99)  # Adam betas of every image preset (StyleGAN2-ADA train.py)
IMAGE_PRESETS = ("auto", "stylegan2", "paper256", "paper512", "paper1024", "cifar")
ALL_PRESETS = IMAGE_PRESETS + ("toy",)


@dataclass
class TrainConfig(RunOptions):
    """Every option of a training run (saved in checkpoints).

    Names follow StyleGAN2-ADA / StyleGAN3 ``train.py`` where the concept exists there.
    ``None`` means "take it from the preset".
    """

    # data: data, cond, mirror, max_size (RunOptions)
    # preset and length
    cfg: str = "auto"
    kimg: Optional[float] = None
    seed: int = 0
    batch: Optional[int] = None
    batch_gpu: Optional[int] = None
    # optimisation (Adam eps 1e-8; betas from the preset: (0, 0.99) for StyleGAN2's, (0.5, 0.999) for toy)
    glr: Optional[float] = None
    dlr: Optional[float] = None
    g_betas: Optional[tuple] = None
    d_betas: Optional[tuple] = None
    adam_eps: float = 1e-8
    ema_kimg: Optional[float] = None
    ema_rampup: Optional[float] = None
    # loss and regularization
    gamma: Optional[float] = None
    r1_interval: int = 16
    pl_weight: Optional[float] = None
    pl_interval: int = 4
    pl_batch_shrink: int = 2
    pl_decay: float = 0.01
    style_mixing: Optional[float] = None
    # architecture
    z_dim: Optional[int] = None
    w_dim: int = 512
    map_depth: Optional[int] = None
    cbase: Optional[int] = None
    cmax: int = 512
    mbstd_group: Optional[int] = None
    d_architecture: Optional[str] = None
    g_architecture: str = "skip"
    conv_clamp: Optional[float] = None
    mlp_hidden: int = 128
    mlp_layers: int = 2
    mlp_g: Optional[str] = None  # point data: "pacgan" (toy preset) or "paper"; see MLP_GENERATORS
    # fine-tuning start (training/transfer.py): weights of a pickle or checkpoint; D layers that do not train
    init: Optional[str] = None
    freezed: int = 0
    # run control
    tick: Optional[float] = None
    snap: int = 50
    image_snap: Optional[int] = None
    keep: int = 5
    workers: int = 2
    metrics: tuple = ()
    device: str = "auto"
    amp: str = "off"
    tensorboard: bool = False
    allow_nonfinite: bool = False
    # speed (training/speed.py): switchable one by one, all off by default
    compile: str = "off"
    mp_res: int = 0
    mp_dtype: str = "bf16"
    channels_last: bool = False
    tf32: bool = False
    sync_debug: bool = False
    threads: Optional[int] = None
    # resolved, not options
    ref_gpus: int = 1

    TUPLE_FIELDS = ("g_betas", "d_betas", "metrics")


def resolve(cfg: TrainConfig, data_info: dict, world_size: int = 1) -> TrainConfig:
    """Fill every ``None`` option from the preset, as StyleGAN2-ADA's ``train.py`` does, and validate.

    ``data_info`` is the dataset's ``info()`` (``kind``, ``resolution``, ...). Raises
    :class:`~ganstack.training.api.ConfigError` for impossible combinations.
    """
    kind = data_info["kind"]
    name = cfg.cfg
    if name == "auto" and kind == "points":
        name = cfg.cfg = "toy"
    if name not in ALL_PRESETS:
        raise ConfigError(f"--cfg {cfg.cfg!r} is not a preset; choose one of {', '.join(ALL_PRESETS)}.")
    if kind == "points" and name != "toy":
        raise ConfigError(f"--cfg {name} is an image preset but {cfg.data!r} is point data; use --cfg toy (or auto).")
    if kind == "image" and name == "toy":
        raise ConfigError(f"--cfg toy is the MLP preset for 2-D point data but {cfg.data!r} holds images; "
                          f"use --cfg auto, cifar, paper256, paper512, paper1024 or stylegan2.")
    if name == "auto":
        res = data_info["resolution"]
        spec = dict(ref_gpus=world_size, kimg=25000, ramp=None, map=2)
        spec["mb"] = max(min(world_size * min(4096 // res, 32), 64), world_size)
        spec["mbstd"] = min(spec["mb"] // world_size, 4)
        spec["fmaps"] = 1 if res >= 512 else 0.5
        spec["lrate"] = 0.002 if res >= 1024 else 0.0025
        spec["gamma"] = 0.0002 * (res ** 2) / spec["mb"]
        spec["ema"] = spec["mb"] * 10 / 32
    else:
        spec = dict(PRESETS[name])

    def fill(attr, value):
        if getattr(cfg, attr) is None:
            setattr(cfg, attr, value)

    fill("kimg", spec["kimg"])
    fill("batch", spec["mb"])
    fill("glr", spec["lrate"])
    fill("dlr", spec["lrate"])
    fill("gamma", spec["gamma"])
    fill("ema_kimg", spec["ema"])
    fill("ema_rampup", spec["ramp"])
    fill("g_betas", tuple(spec.get("betas", STYLEGAN2_BETAS)))
    fill("d_betas", tuple(spec.get("betas", STYLEGAN2_BETAS)))
    cfg.ref_gpus = spec["ref_gpus"]
    if kind == "image":
        fill("map_depth", spec["map"])
        fill("cbase", int(spec["fmaps"] * 32768))
        fill("mbstd_group", spec["mbstd"])
        fill("z_dim", 512)
        fill("style_mixing", 0.0 if name == "cifar" else 0.9)
        fill("pl_weight", 0.0 if name == "cifar" else 2.0)
        fill("d_architecture", "orig" if name == "cifar" else "resnet")
        fill("tick", 4.0)
    else:
        fill("z_dim", 32)
        fill("style_mixing", 0.0)
        fill("pl_weight", 0.0)
        fill("map_depth", 0)
        fill("mbstd_group", 0)
        fill("mlp_g", spec.get("mlp_g", "paper"))
        fill("tick", 20.0)
    if cfg.image_snap is None:
        cfg.image_snap = cfg.snap
    if kind == "image" and cfg.mp_res and cfg.conv_clamp is None:
        cfg.conv_clamp = 256.0  # reduced-precision blocks clamp their convs, as StyleGAN2-ADA's configs do
    validate(cfg, data_info, world_size)
    return cfg


def validate(cfg: TrainConfig, data_info: dict, world_size: int = 1) -> None:
    """Range and consistency checks with messages that say what would be right."""
    def need(ok, msg):
        if not ok:
            raise ConfigError(msg)

    # Options given through the API or ``ablate --set`` have not passed the CLI's click types: check them here.
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        for x in (v if isinstance(v, tuple) else (v,)):
            if isinstance(x, float) and not math.isfinite(x):
                raise ConfigError(f"--{f.name.replace('_', '-')} must be a finite number, got {x}.")
    ints = ("batch", "batch_gpu", "z_dim", "w_dim", "cbase", "cmax", "mlp_hidden", "mlp_layers", "workers",
            "mbstd_group", "map_depth", "pl_interval", "r1_interval", "pl_batch_shrink", "snap", "image_snap", "keep",
            "freezed")
    for name in ints:
        v = getattr(cfg, name)
        need(v is None or (isinstance(v, int) and not isinstance(v, bool) and abs(v) <= 2 ** 31 - 1),
             f"--{name.replace('_', '-')} must be a whole number, got {v!r}.")
    for name in ("kimg", "glr", "dlr", "gamma", "pl_weight", "style_mixing", "ema_kimg", "tick", "adam_eps"):
        v = getattr(cfg, name)
        need(isinstance(v, (int, float)) and not isinstance(v, bool), f"--{name.replace('_', '-')} must be a number, got {v!r}.")
    for name, lo in (("z_dim", 1), ("w_dim", 1), ("cmax", 1), ("mlp_hidden", 1), ("mlp_layers", 1), ("workers", 0),
                     ("mbstd_group", 0), ("map_depth", 0), ("freezed", 0)):
        need(getattr(cfg, name) >= lo, f"--{name.replace('_', '-')} must be >= {lo}, got {getattr(cfg, name)}.")
    need(isinstance(cfg.seed, int) and 0 <= cfg.seed <= 2 ** 32 - 1, f"--seed must be in 0..{2 ** 32 - 1}, got {cfg.seed!r}.")
    need(cfg.max_size is None or (isinstance(cfg.max_size, int) and cfg.max_size >= 1),
         f"--max-size must be a positive whole number, got {cfg.max_size!r}.")
    if data_info["kind"] == "image":
        need(cfg.cbase >= 1, f"--cbase must be >= 1, got {cfg.cbase}.")
    need(cfg.kimg > 0, f"--kimg must be positive, got {cfg.kimg}.")
    need(cfg.batch >= 1, f"--batch must be at least 1, got {cfg.batch}.")
    need(cfg.batch <= MAX_BATCH, f"--batch {cfg.batch} is larger than any GAN recipe uses (at most {MAX_BATCH:,}); "
                                 f"a batch this size would not fit in memory.")
    need(cfg.batch % world_size == 0,
         f"--batch {cfg.batch} must be divisible by the number of GPUs ({world_size}).")
    per_gpu = cfg.batch // world_size
    if cfg.batch_gpu is None:
        cfg.batch_gpu = per_gpu
    need(1 <= cfg.batch_gpu <= per_gpu and per_gpu % cfg.batch_gpu == 0,
         f"--batch-gpu {cfg.batch_gpu} must divide the per-GPU batch {per_gpu} (= --batch / GPUs).")
    need(data_info["kind"] == "image" or cfg.mlp_g in MLP_GENERATORS,
         f"--mlp-g must be one of {', '.join(MLP_GENERATORS)} (the toy generator), got {cfg.mlp_g!r}.")
    if data_info["kind"] == "image" and cfg.mbstd_group:
        need(cfg.batch_gpu % min(cfg.mbstd_group, cfg.batch_gpu) == 0,
             f"--mbstd-group {cfg.mbstd_group} must divide --batch-gpu {cfg.batch_gpu}.")
    for name in ("glr", "dlr"):
        need(getattr(cfg, name) > 0, f"--{name} must be positive, got {getattr(cfg, name)}.")
    need(cfg.gamma >= 0, f"--gamma must be >= 0, got {cfg.gamma}.")
    need(cfg.pl_weight >= 0, f"--pl-weight must be >= 0, got {cfg.pl_weight}.")
    need(0 <= cfg.style_mixing <= 1, f"--style-mixing is a probability in [0, 1], got {cfg.style_mixing}.")
    need(cfg.r1_interval >= 1 and cfg.pl_interval >= 1, "--r1-interval and --pl-interval must be >= 1.")
    need(cfg.pl_batch_shrink >= 1 and cfg.batch_gpu % cfg.pl_batch_shrink == 0 or cfg.pl_weight == 0,
         f"--batch-gpu {cfg.batch_gpu} must be divisible by the path-length batch shrink {cfg.pl_batch_shrink}.")
    need(cfg.ema_kimg >= 0, f"--ema must be >= 0 kimg, got {cfg.ema_kimg}.")
    need(cfg.tick > 0, f"--tick must be positive (kimg per tick), got {cfg.tick}.")
    need(cfg.snap >= 1 and cfg.image_snap >= 1, f"--snap must be >= 1 tick, got {cfg.snap}.")
    need(cfg.keep >= 0, f"--keep must be >= 0 (0 keeps every checkpoint), got {cfg.keep}.")
    need(cfg.amp in ("off", "bf16", "fp16"), f"--amp must be off, bf16 or fp16, got {cfg.amp!r}.")
    from ganstack.training.speed import check_config as _check_speed
    speed_error = _check_speed(cfg, data_info)
    need(speed_error is None, speed_error or "")
    need(cfg.threads is None or cfg.threads >= 1, f"--threads must be >= 1, got {cfg.threads}.")
    for b in (cfg.g_betas, cfg.d_betas):
        need(len(b) == 2 and all(0 <= x < 1 for x in b), f"Adam betas must be two numbers in [0, 1), got {b}.")
    if data_info["kind"] == "image":
        need(cfg.d_architecture in ("orig", "skip", "resnet"),
             f"--d-architecture must be orig, skip or resnet, got {cfg.d_architecture!r}.")
        need(2 <= cfg.map_depth <= 8, f"--map-depth must be in [2, 8] (StyleGAN2), got {cfg.map_depth}.")
    if cfg.device != "auto":
        from ganstack.stylegan_base.cli_support import check_device
        check_device(cfg.device)
    if cfg.cond:
        need(data_info.get("label_dim", 0) > 0,
             f"--cond needs labels, but {cfg.data!r} has none (add a dataset.json with labels).")
