"""Score models shared by the ``smart`` and ``cmgan`` plugins (no model hub needed: everything is offline).

The interface
-------------
Every score model is a :class:`ScoreModel` (a ``torch.nn.Module``) with one method to implement::

    D = model.denoise(x, sigma, c=None)     # EDM form: D(x; sigma) ~ E[x0 | x = x0 + sigma * n]

and derived helpers::

    model.eps_edm(x, sigma, c)              # (x - D) / sigma
    model.score(x, sigma, c)                # (D - x) / sigma^2 = grad_x log p_sigma(x)
    model.eps(x_t, t, c, schedule)          # VP form: eps_theta(x_t, t), integer t of a VPSchedule

``sigma`` is a number, a per-sample ``[N]`` tensor or a broadcastable tensor; ``c`` is ``[N, label_dim]``
(one-hot) for conditional models, else None. Attributes ``kind`` ('image' | 'points'),
``img_resolution``, ``img_channels``, ``point_dim``, ``label_dim``, ``sigma_data`` say what a model accepts.

Implementations
---------------
* :class:`GaussianMixtureScore` - the exact denoiser of a diffused Gaussian mixture (the built-in
  ``toy:*`` datasets: ``GaussianMixtureScore.from_data_info(dataset.info())``).
* :class:`EmpiricalScore` - the exact denoiser of the diffused empirical distribution of any point
  file or small image set (a softmax-weighted mean of the data, chunked).
* :class:`EDMPrecond` - a trained EDM-preconditioned network (a small U-Net for images, an MLP for
  points), made by ``ganstack train-score`` and loaded with :func:`load_score_model`.

:func:`karras_sigmas` (EDM's rho = 7 noise levels) and :func:`edm_sample` (deterministic Heun sampling of
the probability-flow ODE, EDM Algorithm 1) work with any of them.

VP <-> EDM
----------
:class:`VPSchedule` (``'linear'``: DDPM beta 1e-4..0.02; ``'cosine'``: Nichol & Dhariwal) gives
``alpha_t``, ``sigma_t`` and the EDM level ``sigma = sigma_t / alpha_t`` of integer steps; the functions
:func:`vp_to_edm`, :func:`edm_to_vp`, :func:`eps_from_denoised`, :func:`denoised_from_eps` and
:func:`score_from_denoised` convert between the forms (see :mod:`ganstack.plugins.score_models.schedules`).

Checkpoints
-----------
:func:`load_score_model(path)` returns the frozen (eval, no-grad) EMA denoiser of a file or run
folder written by ``ganstack train-score``; :func:`check_compatible` raises a clear
:class:`~ganstack.stylegan_base.errors.CheckpointError` when it does not fit the GAN's data (resolution,
channels, point dimension, labels). :func:`make_score_model` is the one entry point the plugins use
to turn a user's option ('analytic', 'empirical' or a path) into a model.
"""
from __future__ import annotations

from ganstack.plugins.score_models.analytic import EmpiricalScore, GaussianMixtureScore
from ganstack.plugins.score_models.base import ScoreModel, default_schedule
from ganstack.plugins.score_models.edm import (EDMLoss, EDMPrecond, MLPNet, UNet, edm_sample, ema_beta, karras_sigmas,
                                      precond_coefficients, update_ema)
from ganstack.plugins.score_models.io import check_compatible, load_score_model, read_checkpoint
from ganstack.plugins.score_models.schedules import (SCHEDULES, VPSchedule, denoised_from_eps, edm_to_vp,
                                            eps_from_denoised, score_from_denoised, vp_to_edm)

BUILTIN_SCORES = ("analytic", "empirical")


def check_score_spec(spec: str, who: str = "--score") -> None:
    """Fail at start-up (and under ``--dry-run``) when ``spec`` is neither a built-in score nor an existing score
    checkpoint or ``train-score`` run folder; the model itself is loaded when training starts."""
    if spec not in BUILTIN_SCORES:
        from ganstack.plugins.score_models.io import resolve_path
        resolve_path(spec, what=f"{who} score model")


def make_score_model(spec: str, data_info: dict, use_labels: bool = False, resize: str = "off",
                     device="cpu", dataset_spec=None, who: str = "--score"):
    """A frozen score model for a GAN trained on ``data_info`` (a dataset's ``info()``).

    ``spec`` is ``'analytic'`` (the exact mixture score of a built-in ``toy:*`` dataset),
    ``'empirical'`` (the ideal denoiser of the training set itself, opened from ``dataset_spec``) or
    the path of a ``train-score`` checkpoint or run folder. Raises ``CheckpointError`` /
    ``PluginError`` with a message that says what would work.
    """
    from ganstack.stylegan_base.errors import CheckpointError

    if spec == "analytic":
        if not (data_info.get("toy") or {}).get("centers"):
            raise CheckpointError(f"{who} analytic is the exact score of a built-in Gaussian mixture (toy:gaussians25, "
                                  f"toy:grid49, toy:ring8), but the dataset {data_info.get('name')!r} is not one. "
                                  f"Use {who} empirical (the exact score of the training points) or a checkpoint "
                                  f"from `ganstack train-score`.")
        conditional = bool(use_labels and data_info.get("label_dim"))
        model = GaussianMixtureScore.from_data_info(data_info, conditional=conditional)
    elif spec == "empirical":
        from ganstack.stylegan_base.datasets import open_dataset
        ds = open_dataset(dataset_spec or data_info.get("spec"), use_labels=use_labels,
                          max_size=data_info.get("max_size"),
                          mirror=bool(data_info.get("mirror")) and data_info.get("kind") == "image")
        model = EmpiricalScore.from_dataset(ds)
    else:
        model = load_score_model(spec, device="cpu")
        check_compatible(model, data_info, use_labels, resize=resize, who=who)
    model.eval().requires_grad_(False)
    return model.to(device)


__all__ = [
    "ScoreModel", "GaussianMixtureScore", "EmpiricalScore", "EDMPrecond", "EDMLoss", "UNet", "MLPNet",
    "VPSchedule", "SCHEDULES", "vp_to_edm", "edm_to_vp", "eps_from_denoised", "denoised_from_eps",
    "score_from_denoised", "precond_coefficients", "ema_beta", "update_ema", "edm_sample", "karras_sigmas",
    "load_score_model",
    "read_checkpoint", "check_compatible", "check_score_spec", "make_score_model", "default_schedule", "BUILTIN_SCORES",
]
