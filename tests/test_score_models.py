"""Score models shared by smart and cmgan: VP<->EDM conversions, exact scores, EDM pieces, checkpoints,
and the ``ganstack train-score`` trainer."""
from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch

from ganstack.plugins.score_models import (EDMLoss, EDMPrecond, EmpiricalScore, GaussianMixtureScore, VPSchedule,
                                  check_compatible, denoised_from_eps, edm_to_vp, ema_beta, eps_from_denoised,
                                  load_score_model, make_score_model, precond_coefficients, score_from_denoised,
                                  vp_to_edm)
from ganstack.plugins.score_models import io as score_io
from ganstack.stylegan_base.errors import CheckpointError

torch.set_num_threads(min(2, os.cpu_count() or 1))


# ------------------------------------------------------------------------------------------------
# Schedules and conversions

def test_linear_schedule_is_ddpm():
    s = VPSchedule("linear", 1000)
    assert s.betas[0].item() == pytest.approx(1e-4) and s.betas[-1].item() == pytest.approx(0.02)
    # alphas_cumprod[t] = prod_{i <= t} (1 - beta_i): DDPM's value at the last step.
    assert s.alphas_cumprod[-1].item() == pytest.approx(4.0358e-5, rel=1e-3)
    t = torch.arange(1000)
    assert torch.allclose(s.alpha(t, like=torch.zeros(1, dtype=torch.float64)).square()
                          + s.sigma(t, like=torch.zeros(1, dtype=torch.float64)).square(),
                          torch.ones(1000, dtype=torch.float64))


def test_cosine_schedule_telescopes_to_alpha_bar():
    s = VPSchedule("cosine", 1000)

    def f(u):
        return math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2
    for t in (0, 40, 50, 500, 900):  # no beta is clipped there, so the product telescopes
        assert s.alphas_cumprod[t].item() == pytest.approx(f((t + 1) / 1000) / f(0), rel=1e-9)
    assert s.betas.max().item() == pytest.approx(0.999)


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_vp_edm_round_trip(kind):
    s = VPSchedule(kind)
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(6, 3, 4, 4, generator=g, dtype=torch.float64)
    eps = torch.randn(6, 3, 4, 4, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 40, 50, 60, 500, 998])
    alpha, sigma_t = s.alpha(t, like=x0), s.sigma(t, like=x0)
    x_t = alpha.view(-1, 1, 1, 1) * x0 + sigma_t.view(-1, 1, 1, 1) * eps
    x, sigma = vp_to_edm(x_t, alpha, sigma_t)
    # The EDM sample is x0 + sigma * eps with the same eps, at sigma = sigma_t / alpha_t.
    assert torch.allclose(x, x0 + sigma * eps, atol=1e-9)
    assert torch.allclose(sigma.flatten(), s.edm_sigma(t, like=x0), rtol=1e-12)
    back, alpha2, sigma2 = edm_to_vp(x, sigma.flatten())
    assert torch.allclose(back, x_t, atol=1e-12)
    assert torch.allclose(alpha2.flatten(), alpha, rtol=1e-12) and torch.allclose(sigma2.flatten(), sigma_t, rtol=1e-12)
    assert torch.equal(s.t_from_edm_sigma(s.edm_sigma(t, like=x0)), t)
    # D = x - sigma eps and eps = (x - D) / sigma are inverses; the score is -eps / sigma.
    D = denoised_from_eps(x, sigma.flatten(), eps)
    assert torch.allclose(D, x0, atol=1e-9)
    assert torch.allclose(eps_from_denoised(x, sigma.flatten(), D), eps, atol=1e-9)
    assert torch.allclose(score_from_denoised(x, sigma.flatten(), D), -eps / sigma, atol=1e-8)


def test_model_eps_in_vp_form_matches_edm_form():
    s = VPSchedule("cosine")
    model = GaussianMixtureScore([[0.0, 0.0], [2.0, -1.0], [-1.0, 1.5]], 0.2).double()
    x_t = torch.randn(5, 2, dtype=torch.float64)
    t = torch.tensor([3, 40, 50, 200, 700])
    a, st = s.alpha(t, like=x_t).unsqueeze(1), s.sigma(t, like=x_t).unsqueeze(1)
    expected = (x_t / a - model.denoise(x_t / a, st / a)) / (st / a)
    assert torch.allclose(model.eps(x_t, t, schedule=s), expected, atol=1e-12)
    # VP score w.r.t. x_t is -eps / sigma_t; EDM score w.r.t. x is alpha times that.
    assert torch.allclose(model.score(x_t / a, st / a), -model.eps(x_t, t, schedule=s) / (st / a), atol=1e-10)


# ------------------------------------------------------------------------------------------------
# Exact scores

def _finite_difference_score(model, x, sigma, c=None, h=1e-5):
    grad = torch.zeros_like(x)
    for j in range(x.shape[1]):
        e = torch.zeros_like(x)
        e[:, j] = h
        grad[:, j] = (model.log_density(x + e, sigma, c) - model.log_density(x - e, sigma, c)) / (2 * h)
    return grad


@pytest.mark.parametrize("sigma", [0.05, 0.3, 2.0])
def test_mixture_score_matches_finite_differences_of_log_density(sigma):
    centers = np.array([[-1.0, 0.0, 0.5], [1.0, 1.0, -0.5], [0.0, -2.0, 1.0], [2.0, 2.0, 2.0]])
    model = GaussianMixtureScore(centers, std=[0.1, 0.3, 0.05, 0.2], weights=[0.1, 0.4, 0.3, 0.2]).double()
    x = torch.from_numpy(np.random.default_rng(0).normal(size=(16, 3)) * 1.5)
    fd = _finite_difference_score(model, x, sigma)
    assert torch.allclose(model.score(x, sigma), fd, rtol=1e-5, atol=1e-6)
    # Conditional: the label picks one component, whose diffused score is (mu - x) / (s^2 + sigma^2).
    cond = GaussianMixtureScore(centers, std=[0.1, 0.3, 0.05, 0.2], conditional=True).double()
    c = torch.nn.functional.one_hot(torch.arange(16) % 4, 4).double()
    k = torch.arange(16) % 4
    var = (cond.std[k] ** 2 + sigma ** 2).unsqueeze(1)
    assert torch.allclose(cond.score(x, sigma, c), (cond.centers[k] - x) / var, atol=1e-10)
    assert torch.allclose(cond.score(x, sigma, c), _finite_difference_score(cond, x, sigma, c), rtol=1e-5, atol=1e-6)


def test_toy_grid49_score_from_dataset_info():
    from ganstack.stylegan_base.datasets import open_dataset
    info = open_dataset("toy:grid49?n=490").info()
    model = make_score_model("analytic", info)
    assert model.centers.shape == (49, 2) and model.std[0].item() == pytest.approx(0.01)
    # Near a grid point the denoiser shrinks towards it by s^2 / (s^2 + sigma^2) (= 0.1 at sigma 0.03).
    x = torch.tensor([[1.02, -2.03], [0.01, 2.98]])
    mu = torch.tensor([[1.0, -2.0], [0.0, 3.0]])
    assert torch.allclose(model.denoise(x, 0.03), mu + 0.1 * (x - mu), atol=1e-6)
    with pytest.raises(CheckpointError, match="built-in Gaussian mixture"):
        make_score_model("analytic", open_dataset("shapes16?n=8").info())


def test_empirical_score_is_the_zero_width_mixture_and_chunking_is_exact():
    g = torch.Generator().manual_seed(1)
    data = torch.randn(300, 2, generator=g) * 2
    x = torch.randn(40, 2, generator=g) * 2
    mix = GaussianMixtureScore(data.double(), 0.0)
    ref = mix.denoise(x.double(), 0.4).float()
    for chunk in (7, 64, 10000):
        emp = EmpiricalScore(data, chunk=chunk)
        assert torch.allclose(emp.denoise(x, 0.4), ref, atol=1e-5)
    # High-dimensional data (the float64 matrix-product path), per-sample sigma, against brute force.
    imgs = torch.rand(50, 1, 8, 8, generator=g) * 2 - 1
    q = imgs[:6] + 0.1 * torch.randn(6, 1, 8, 8, generator=g)
    sig = torch.tensor([0.05, 0.1, 0.2, 0.4, 0.8, 1.6])
    emp = EmpiricalScore(imgs, chunk=16)
    d2 = (q.reshape(6, 1, -1).double() - imgs.reshape(1, 50, -1).double()).square().sum(-1)
    w = torch.softmax(-d2 / (2 * sig.double().unsqueeze(1) ** 2), dim=1)
    brute = (w @ imgs.reshape(50, -1).double()).reshape(q.shape).float()
    assert emp.kind == "image" and emp.img_resolution == 8
    assert torch.allclose(emp.denoise(q, sig), brute, atol=1e-5)
    # Conditional: only points of the requested class contribute.
    labels = torch.nn.functional.one_hot(torch.arange(300) % 3, 3)
    emp = EmpiricalScore(data, labels=labels, chunk=50)
    c = torch.nn.functional.one_hot(torch.full([40], 2), 3).float()
    sub = GaussianMixtureScore(data[2::3].double(), 0.0)
    assert torch.allclose(emp.denoise(x, 0.4, c), sub.denoise(x.double(), 0.4).float(), atol=1e-5)


def test_heun_sampler_with_the_exact_score_reproduces_the_mixture():
    from ganstack.plugins.score_models import edm_sample, karras_sigmas
    from ganstack.stylegan_base.datasets import open_dataset
    sig = karras_sigmas(18)
    assert sig[0].item() == pytest.approx(80.0) and sig[-2].item() == pytest.approx(0.002) and sig[-1] == 0
    info = open_dataset("toy:ring8?n=80").info()
    model = GaussianMixtureScore.from_data_info(info)
    x = edm_sample(model, torch.randn(800, 2, generator=torch.Generator().manual_seed(0)))
    d = torch.cdist(x.double(), model.centers)
    nearest = d.min(1)
    assert nearest.values.mean().item() < 3 * 0.02  # on the modes (std 0.02)
    counts = torch.bincount(nearest.indices, minlength=8).double() / 800
    assert (counts - 1 / 8).abs().max().item() < 0.05  # every mode gets its share


# ------------------------------------------------------------------------------------------------
# EDM pieces

def test_precond_coefficients_are_edms():
    sigma = torch.tensor([0.002, 0.1, 0.5, 1.0, 80.0], dtype=torch.float64)
    c_skip, c_out, c_in, c_noise = precond_coefficients(sigma, 0.5)
    assert torch.allclose(c_skip, 0.25 / (sigma ** 2 + 0.25))
    assert torch.allclose(c_out, sigma * 0.5 / (sigma ** 2 + 0.25).sqrt())
    assert torch.allclose(c_in, 1 / (sigma ** 2 + 0.25).sqrt())
    assert torch.allclose(c_noise, sigma.log() / 4)
    # EDM's loss weight makes the effective target unit-weighted: lambda(sigma) c_out^2 = 1.
    weight = (sigma ** 2 + 0.25) / (sigma * 0.5) ** 2
    assert torch.allclose(weight * c_out ** 2, torch.ones_like(sigma))


def test_edm_denoiser_and_loss_match_direct_computation():
    torch.manual_seed(0)
    model = EDMPrecond({"name": "mlp", "kwargs": dict(point_dim=2, label_dim=3, hidden=16, num_layers=2)})
    torch.nn.init.normal_(model.net.fc_out.weight)  # make F non-zero
    x = torch.randn(8, 2)
    c = torch.nn.functional.one_hot(torch.arange(8) % 3, 3).float()
    sigma = torch.rand(8) + 0.1
    s = sigma.unsqueeze(1)
    c_skip, c_out, c_in, c_noise = precond_coefficients(s)
    direct = c_skip * x + c_out * model.net(c_in * x, c_noise.flatten(), c)
    assert torch.allclose(model.denoise(x, sigma, c), direct, atol=1e-6)
    # EDMLoss with the same random draws, by hand.
    torch.manual_seed(5)
    loss = EDMLoss()(model, x, c)
    torch.manual_seed(5)
    rnd = torch.randn(8, 1)
    sig = (rnd * 1.2 - 1.2).exp()
    n = torch.randn_like(x) * sig
    weight = (sig ** 2 + 0.25) / (sig * 0.5) ** 2
    assert torch.allclose(loss, weight * (model.denoise(x + n, sig, c) - x) ** 2, atol=1e-6)
    with pytest.raises(ValueError, match="needs labels"):
        model.denoise(x, sigma)


def test_unet_shapes_and_zero_init_is_identity_at_low_noise():
    model = EDMPrecond({"name": "unet", "kwargs": dict(img_resolution=8, img_channels=3, model_channels=8,
                                                          channel_mult=[1, 2], num_blocks=1)})
    x = torch.randn(2, 3, 8, 8)
    out = model.denoise(x, torch.tensor([0.3, 1.0]))
    assert out.shape == x.shape
    # F is zero at init (zero output conv): D = c_skip x.
    assert torch.allclose(out, x * (0.25 / (torch.tensor([0.3, 1.0]) ** 2 + 0.25)).view(2, 1, 1, 1), atol=1e-6)


def test_ema_half_life():
    # After `half-life` images the old weights count for one half.
    beta = ema_beta(batch=64, cur_nimg=10 ** 9, halflife_kimg=6.4, rampup_ratio=0.05)
    assert beta ** (6400 / 64) == pytest.approx(0.5)
    assert ema_beta(64, cur_nimg=1000, halflife_kimg=500, rampup_ratio=0.05) == pytest.approx(0.5 ** (64 / 50))


# ------------------------------------------------------------------------------------------------
# Checkpoints

def _tiny_unet(res=8, label_dim=0):
    torch.manual_seed(0)
    return EDMPrecond({"name": "unet", "kwargs": dict(img_resolution=res, img_channels=3, label_dim=label_dim,
                                                       model_channels=8, channel_mult=[1, 2], num_blocks=1)})


def test_checkpoint_round_trip_and_frozen(tmp_path):
    model = _tiny_unet()
    torch.nn.init.normal_(model.net.conv_out.weight, std=0.1)
    path = str(tmp_path / "score.pt")
    score_io.export_model(model, path, {"kind": "image", "resolution": 8, "num_channels": 3})
    loaded = load_score_model(path)
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(loaded.denoise(x, 0.5), model.denoise(x, 0.5))
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())


def test_checkpoint_errors(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist.*train-score"):
        load_score_model(str(tmp_path / "missing.pt"))
    with pytest.raises(CheckpointError, match="holds no score-snapshot"):
        load_score_model(str(tmp_path))
    run = tmp_path / "runs" / "00000-x"
    run.mkdir(parents=True)
    score_io.export_model(_tiny_unet(), str(run / "score-snapshot-000001.pt"))
    with pytest.raises(CheckpointError, match="did you mean the run folder .*00000-x"):
        load_score_model(str(tmp_path / "runs"))
    assert load_score_model(str(run)).img_resolution == 8  # a run folder: its newest snapshot
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="could not be read as a score checkpoint"):
        load_score_model(str(junk))
    gan = tmp_path / "gan.pt"
    torch.save({"format": "ganstack.checkpoint", "version": 1}, gan)
    with pytest.raises(CheckpointError, match="GAN training checkpoint"):
        load_score_model(str(gan))
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(3)}, other)
    with pytest.raises(CheckpointError, match="not a ganstack score model"):
        load_score_model(str(other))

    path = str(tmp_path / "score8.pt")
    score_io.export_model(_tiny_unet(8), path)
    model = load_score_model(path)
    info16 = {"kind": "image", "resolution": 16, "num_channels": 3, "label_dim": 0, "name": "x"}
    with pytest.raises(CheckpointError, match=r"works at 8x8, but the GAN makes 16x16.*--smart-resize"):
        check_compatible(model, info16, use_labels=False, who="--smart-score")
    check_compatible(model, info16, use_labels=False, resize="area")  # explicit resizing is allowed
    with pytest.raises(CheckpointError, match="3-channel images, but the dataset has 1"):
        check_compatible(model, dict(info16, resolution=8, num_channels=1), use_labels=False, resize="area")
    with pytest.raises(CheckpointError, match="scores image data but the GAN is trained on points"):
        check_compatible(model, {"kind": "points", "point_dim": 2}, use_labels=False)
    cond_path = str(tmp_path / "cond.pt")
    score_io.export_model(_tiny_unet(8, label_dim=10), cond_path)
    cond = load_score_model(cond_path)
    info8 = dict(info16, resolution=8, label_dim=10)
    with pytest.raises(CheckpointError, match="class-conditional.*unconditional"):
        check_compatible(cond, info8, use_labels=False)
    with pytest.raises(CheckpointError, match="takes 10 labels but the dataset has 3"):
        check_compatible(cond, dict(info8, label_dim=3), use_labels=True)
    check_compatible(cond, info8, use_labels=True)


# ------------------------------------------------------------------------------------------------
# ganstack train-score

def _score_trainer(resume=None, run_dir=None, **kw):
    from ganstack.plugins.score_models.train import ScoreTrainConfig, ScoreTrainer, resolve_config
    from ganstack.stylegan_base.datasets import open_dataset
    opts = dict(data="toy:ring8?n=512", batch=64, channels=32, blocks=2, workers=0, lr_rampup_kimg=0.0,
                pictures=False, tick=0.128)
    opts.update(kw)
    cfg = ScoreTrainConfig(**opts)
    ds = open_dataset(cfg.data)
    resolve_config(cfg, ds.info())
    return ScoreTrainer(cfg, ds, run_dir=run_dir, resume=resume, device="cpu", log=lambda *_: None)


def _fixed_denoising_error(model):
    g = torch.Generator().manual_seed(0)
    from ganstack.stylegan_base.datasets import open_dataset
    x = torch.as_tensor(open_dataset("toy:ring8?n=512").points[:256])
    sigma = torch.tensor([0.05, 0.2, 0.5, 1.0]).repeat(64)
    noisy = x + torch.randn(x.shape, generator=g) * sigma.unsqueeze(1)
    with torch.no_grad():
        return (model.denoise(noisy, sigma) - x).square().mean().item()


def test_train_score_learns_and_resumes_exactly(tmp_path):
    from ganstack.stylegan_base.datasets import open_dataset
    best = _fixed_denoising_error(make_score_model("analytic", open_dataset("toy:ring8?n=64").info()))
    tr = _score_trainer()
    before = _fixed_denoising_error(tr.net)
    for _ in range(50):
        tr.step()
    # Most of the way from the initial error to that of the exact denoiser (0.174 here).
    assert _fixed_denoising_error(tr.net) - best < 0.5 * (before - best)

    straight = _score_trainer()
    for _ in range(6):
        straight.step()
    half = _score_trainer()
    for _ in range(3):
        half.step()
    torch.save(dict(half.checkpoint_dict(), format=score_io.FORMAT, version=score_io.VERSION), tmp_path / "c.pt")
    resumed = _score_trainer(resume=score_io.read_checkpoint(str(tmp_path / "c.pt")))
    for _ in range(3):
        resumed.step()
    from conftest import state_equal
    assert state_equal(straight.net.state_dict(), resumed.net.state_dict())
    assert state_equal(straight.ema.state_dict(), resumed.ema.state_dict())
    assert resumed.cur_nimg == straight.cur_nimg == 6 * 64


def test_train_score_command_sigterm_checkpoint_and_resume(tmp_path, monkeypatch):
    import signal

    from ganstack.plugins.score_models.train import ScoreTrainer
    from ganstack.training.cli import main

    args = ["train-score", "--data", "toy:ring8?n=512", "--kimg", "0.64", "--batch", "64", "--channels", "16",
            "--blocks", "1", "--tick", "0.128", "--snap", "100", "--workers", "0", "--no-pictures",
            "--lr-rampup", "0"]
    main(args + ["--outdir", str(tmp_path / "straight")])
    straight_dir = str(next((tmp_path / "straight").iterdir()))
    straight = score_io.read_checkpoint(straight_dir)

    real_step = ScoreTrainer.step

    def step_then_signal(self):
        out = real_step(self)
        if self.cur_nimg == 4 * 64:
            os.kill(os.getpid(), signal.SIGTERM)  # handled: finish the step, checkpoint, exit 128 + 15
        return out
    monkeypatch.setattr(ScoreTrainer, "step", step_then_signal)
    with pytest.raises(SystemExit) as exc:
        main(args + ["--outdir", str(tmp_path / "stopped")])
    assert exc.value.code == 128 + signal.SIGTERM
    stopped_dir = str(next((tmp_path / "stopped").iterdir()))
    assert score_io.read_checkpoint(stopped_dir)["training"]["cur_nimg"] == 4 * 64
    monkeypatch.setattr(ScoreTrainer, "step", real_step)
    with pytest.raises(SystemExit) as exc:  # changing a fixed option on resume is refused (exit 2)
        main(["train-score", "--resume", stopped_dir, "--lr", "0.5", "--outdir", str(tmp_path / "resumed")])
    assert exc.value.code == 2
    main(["train-score", "--resume", stopped_dir, "--outdir", str(tmp_path / "resumed")])
    resumed = score_io.read_checkpoint(str(next((tmp_path / "resumed").iterdir())))
    from conftest import state_equal
    assert state_equal(straight["model"], resumed["model"]) and state_equal(straight["training"]["net"],
                                                                            resumed["training"]["net"])
    # The run folder is a valid --smart-score for the same data, and refused for other data.
    from ganstack.stylegan_base.datasets import open_dataset
    model = make_score_model(straight_dir, open_dataset("toy:ring8?n=64").info())
    assert model.point_dim == 2 and not model.training
    with pytest.raises(CheckpointError, match="scores points data|scores 2-D points"):
        make_score_model(straight_dir, open_dataset("shapes8?n=4").info())
