"""StyleGAN2-ADA's ``train.py`` flags on ``ganstack train`` (issue #13 section 2).

A command line copied from StyleGAN2-ADA either means the same here or stops with one line that says what
ganstack does instead; it never silently trains another model:

* ``--aug ada|noaug|fixed``, ``--p``, ``--target``, ``--augpipe`` become the ``ada`` plugin and its options
  (``--aug ada`` is ``ada`` in ``--plugins``; ``--aug fixed --p P`` is ada at the fixed probability P). Without
  them ganstack trains without augmentation, where StyleGAN2-ADA's default is ADA on: :func:`augment_line` says
  so at start-up.
* ``--subset N`` is ``--max-size N``; ``--fp32=1`` is ganstack's default (FP32, ``--amp off``).
* ``--fp32=0`` is ``--mp-res 4 --mp-dtype fp16``, ``--nhwc=1`` is ``--channels-last``, ``--allow-tf32=1`` is
  ``--tf32``; ``--nobench=0`` and ``--allow-tf32=0`` have no exact equivalent and are refused with what ganstack
  does.

The boolean ``--mirror=1`` / ``--cond=1`` forms and ``-n`` live with the options they belong to (training/cli.py).
"""
from __future__ import annotations

from typing import Optional

import click

from ganstack.stylegan_base.cli_support import FINITE_FLOAT, int_range
from ganstack.training.api import ConfigError

ADA = "ada"  # the plugin StyleGAN2-ADA's augmentation flags map onto
AUG_MODES = ("ada", "noaug", "fixed")

# StyleGAN2-ADA speed flags: {flag value: the ganstack options it means, or None (refused)} and what ganstack does.
SPEED_FLAGS = {
    "fp32": ("--fp32", {True: {}, False: {"mp_res": 4, "mp_dtype": "fp16"}},
             "--fp32=0 is StyleGAN2-ADA's FP16 in the 4 highest resolutions with conv clamping at 256, which is "
             "ganstack's --mp-res 4 --mp-dtype fp16 (CUDA only); ganstack's default is FP32"),
    "nhwc": ("--nhwc", {True: {"channels_last": True}, False: {}},
             "--nhwc=1 is ganstack's --channels-last"),
    "nobench": ("--nobench", {True: {}, False: None},
                "ganstack leaves cuDNN benchmarking off (PyTorch's default), as --nobench=1 does, so that seeded "
                "runs stay reproducible, and has no option to turn it on"),
    "allow_tf32": ("--allow-tf32", {True: {"tf32": True}, False: None},
                   "--allow-tf32=1 is ganstack's --tf32; without --tf32 ganstack leaves PyTorch's TF32 defaults "
                   "(cuDNN convolutions may use TF32 on Ampere and newer GPUs), so the exact --allow-tf32=0 of "
                   "StyleGAN2-ADA has no equivalent: drop it"),
}


def _bool_option(flag: str, name: str, help: str) -> click.Option:
    """StyleGAN2-ADA's ``--flag=1`` / ``--flag=0``; ``--flag`` alone means 1."""
    return click.Option([flag, name], type=click.BOOL, is_flag=False, flag_value=True, default=None,
                        metavar="[BOOL]", help=help)


def click_options(augpipes=None) -> list[click.Option]:
    """The StyleGAN2-ADA flags of ``train`` (their values go to :func:`apply`)."""
    return [
        click.Option(["--aug", "sg_aug"], type=click.Choice(AUG_MODES), default=None,
                     help="StyleGAN2-ADA's augmentation mode: ada (= ada in --plugins), fixed (ada at the fixed "
                          "probability --p) or noaug. Without it ganstack trains WITHOUT augmentation, where "
                          "StyleGAN2-ADA's default is ada."),
        click.Option(["--p", "sg_p"], type=FINITE_FLOAT, default=None,
                     help="With --aug fixed: the augmentation probability (= --ada-p P --ada-adaptive false)."),
        click.Option(["--target", "sg_target"], type=FINITE_FLOAT, default=None,
                     help="With --aug ada: the ADA target (= --ada-target)."),
        click.Option(["--augpipe", "sg_augpipe"], type=click.Choice(list(augpipes)) if augpipes else str,
                     default=None, help="With --aug ada or fixed: the augmentation pipeline (= --ada-augpipe)."),
        click.Option(["--subset", "sg_subset"], type=int_range(1), default=None,
                     help="StyleGAN2-ADA's name for --max-size N (use at most N images)."),
        _bool_option("--fp32", "sg_fp32", "StyleGAN2-ADA's --fp32=1 is ganstack's default (FP32); --fp32=0 is "
                                          "--mp-res 4 --mp-dtype fp16."),
        _bool_option("--nhwc", "sg_nhwc", "--nhwc=0 is ganstack's default; --nhwc=1 is --channels-last."),
        _bool_option("--nobench", "sg_nobench", "--nobench=1 is ganstack's behaviour (no cuDNN benchmarking); "
                                                "--nobench=0 is refused."),
        _bool_option("--allow-tf32", "sg_allow_tf32", "--allow-tf32=1 is --tf32; --allow-tf32=0 is refused "
                                                        "(ganstack leaves PyTorch's TF32 defaults)."),
    ]


def _param(opt: str) -> str:
    return f"plugin__{ADA}__{opt}"


def _given(value) -> bool:
    return value is not None


def apply(kwargs: dict, user_set: set, stack_names) -> tuple[Optional[str], set]:
    """Translate the StyleGAN2-ADA flags in ``kwargs`` (the train command's parsed values) in place.

    ``stack_names(text) -> list`` parses ``--plugins``. Returns the ``--plugins`` value to use and the
    TrainConfig options they set (to be marked as given by the user). Raises ConfigError for contradictions.
    """
    extra_user = set()
    aug, p, target, pipe = (kwargs.pop(k, None) for k in ("sg_aug", "sg_p", "sg_target", "sg_augpipe"))
    subset = kwargs.pop("sg_subset", None)
    speed = {k: kwargs.pop(f"sg_{k}", None) for k in SPEED_FLAGS}

    for key, (flag, meaning, what) in SPEED_FLAGS.items():
        v = speed[key]
        if v is None:
            continue
        ours = meaning[bool(v)]
        if ours is None:
            raise ConfigError(f"{flag}={int(bool(v))} (StyleGAN2-ADA) has no ganstack equivalent: {what}.")
        for name, value in ours.items():
            if name in user_set and kwargs.get(name) != value:
                raise ConfigError(f"{flag}={int(bool(v))} and --{name.replace('_', '-')} {kwargs.get(name)} "
                                  f"contradict ({what}). Give one of them.")
            kwargs[name] = value
            extra_user.add(name)
    if speed["fp32"] and "amp" in user_set and kwargs.get("amp") != "off":
        raise ConfigError(f"--fp32=1 and --amp {kwargs['amp']} contradict: --fp32=1 means FP32 (--amp off, "
                          f"ganstack's default). Give one of them.")

    if subset is not None:
        if "max_size" in user_set and kwargs.get("max_size") != subset:
            raise ConfigError(f"--subset {subset} and --max-size {kwargs['max_size']} contradict (--subset is "
                              f"StyleGAN2-ADA's name for --max-size). Give one of them.")
        kwargs["max_size"] = subset
        extra_user.add("max_size")

    plugins = kwargs.get("plugins")
    if not any(_given(v) for v in (aug, p, target, pipe)):
        return plugins, extra_user
    if kwargs.get("resume"):
        raise ConfigError("--aug, --p, --target and --augpipe start a run's augmentation; a --resume run keeps the "
                          "augmentation of its checkpoint. Drop them (they may not change on resume).")
    names = stack_names(plugins) if plugins is not None else []
    how = {"ada": "--aug ada", "fixed": "--aug fixed --p P"}
    if aug is None:
        flag = "--p" if _given(p) else "--target" if _given(target) else "--augpipe"
        want = "--aug fixed" if flag == "--p" else "--aug ada" if flag == "--target" else "--aug ada (or --aug fixed --p P)"
        raise ConfigError(f"{flag} is an option of StyleGAN2-ADA's augmentation, whose default there is --aug ada; "
                          f"ganstack trains without augmentation unless asked. Add {want}.")
    if aug == "noaug":
        if ADA in names:
            raise ConfigError(f"--aug noaug and --plugins {plugins} contradict: the stack includes {ADA}. Drop "
                              f"{ADA} from --plugins, or drop --aug noaug.")
        for flag, v in (("--p", p), ("--target", target), ("--augpipe", pipe)):
            if _given(v):
                raise ConfigError(f"{flag} cannot be given with --aug noaug (as in StyleGAN2-ADA): there is no "
                                  f"augmentation to configure. Use {how['ada']} or {how['fixed']}.")
        return plugins, extra_user
    set_opts = {}
    if aug == "fixed":
        if not _given(p):
            raise ConfigError("--aug fixed needs --p P, the fixed augmentation probability in [0, 1] (as in "
                              "StyleGAN2-ADA).")
        if _given(target):
            raise ConfigError("--target can only be given with --aug ada (as in StyleGAN2-ADA): with --aug fixed "
                              "the probability does not adapt.")
        set_opts.update(p=p, adaptive="false")
    else:
        if _given(p):
            raise ConfigError("--p can only be given with --aug fixed (as in StyleGAN2-ADA); with --aug ada the "
                              "probability adapts from 0 (its start value is --ada-p).")
        set_opts["adaptive"] = "true"
        if _given(target):
            set_opts["target"] = target
    if _given(pipe):
        set_opts["augpipe"] = pipe
    for opt, value in set_opts.items():
        mine = kwargs.get(_param(opt))
        if mine is not None and str(mine).strip().lower() != str(value).strip().lower():
            flag = {"p": "--p", "adaptive": f"--aug {aug}", "target": "--target", "augpipe": "--augpipe"}[opt]
            raise ConfigError(f"{flag} and --{ADA}-{opt} {mine} contradict ({flag} means --{ADA}-{opt} {value}). "
                              f"Give one of them.")
        kwargs[_param(opt)] = str(value)
    if ADA not in names:
        names = [ADA] + names  # image augmentation first, before any other pre-D transform
    return ",".join(names), extra_user


def augment_line(stack) -> str:
    """The start-up line on augmentation: StyleGAN2-ADA users expect ADA on by default; here it is off."""
    if ADA not in stack.names:
        return ("Augment:      none: ADA is off (StyleGAN2-ADA's default is --aug ada; enable it with --aug ada or "
                "--plugins ada)")
    o = stack.options[ADA].as_dict()
    if o.get("adaptive", True):
        return f"Augment:      ADA on, adaptive: target {o.get('target')}, augpipe {o.get('augpipe')}, p from {o.get('p')}"
    return f"Augment:      ADA on, fixed p {o.get('p')}, augpipe {o.get('augpipe')}"
