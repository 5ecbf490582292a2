"""Metric mathematics against closed forms and direct computations, and the whole metric pipeline
(sampler hook, uint8 quantisation, full-dataset real statistics, disk cache, NFE counting, detector
loading) with a small stand-in feature network of the StyleGAN2-ADA TorchScript interface."""
from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import torch

from conftest import make_trainer
from ganstack.metrics import detectors, digits, features, formulas, registry
from ganstack.metrics.toy import mixture_metrics
from ganstack.stylegan_base.datasets import open_dataset
from ganstack.training.api import DInput, hookimpl


# -------------------------------------------------------------------------------------------------
# Mathematics

def _random_spd(rng, d):
    a = rng.standard_normal([d, d])
    return a @ a.T / d + 0.1 * np.eye(d)


def _sqrtm_sym(a):
    w, v = np.linalg.eigh(a)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def test_frechet_distance_matches_closed_form():
    rng = np.random.default_rng(0)
    d = 6
    # Diagonal covariances: FID = |mu1 - mu2|^2 + sum_i (sqrt(s1_i) - sqrt(s2_i))^2.
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    s1, s2 = rng.uniform(0.1, 2, d), rng.uniform(0.1, 2, d)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(s1) - np.sqrt(s2)) ** 2)
    assert formulas.frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(expected, rel=1e-9)
    # General covariances: tr (C1 C2)^(1/2) = tr (C1^(1/2) C2 C1^(1/2))^(1/2) (symmetric route).
    c1, c2 = _random_spd(rng, d), _random_spd(rng, d)
    r1 = _sqrtm_sym(c1)
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(c1 + c2 - 2 * _sqrtm_sym(r1 @ c2 @ r1))
    assert formulas.frechet_distance(mu1, c1, mu2, c2) == pytest.approx(expected, rel=1e-7)
    assert formulas.frechet_distance(mu1, c1, mu1, c1) == pytest.approx(0, abs=1e-7)


def test_feature_stats_mean_cov_and_npz_roundtrip(tmp_path):
    x = np.random.default_rng(1).standard_normal([257, 5]).astype(np.float32)
    s = formulas.FeatureStats(capture_all=True, capture_mean_cov=True, max_items=250)
    for chunk in np.array_split(x, 7):
        s.append(chunk)
    assert s.num_items == 250 and s.is_full()
    mean, cov = s.get_mean_cov()
    np.testing.assert_allclose(mean, x[:250].astype(np.float64).mean(0), atol=1e-12)
    np.testing.assert_allclose(cov, np.cov(x[:250].astype(np.float64), rowvar=False, bias=True), atol=1e-10)
    s.save(str(tmp_path / "s.npz"))
    t = formulas.FeatureStats.load(str(tmp_path / "s.npz"))
    np.testing.assert_array_equal(t.get_all(), x[:250])
    np.testing.assert_allclose(t.get_mean_cov()[1], cov)


def _mmd2_direct(x, y):
    """Unbiased MMD^2 with k(a, b) = (a.b / d + 1)^3 by explicit loops (StyleGAN2-ADA's estimator)."""
    d = x.shape[1]
    m = len(x)

    def k(a, b):
        return (float(np.dot(a, b)) / d + 1) ** 3
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j)
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j)
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m))
    return (xx + yy) / (m * (m - 1)) - 2 * xy / (m * m)


def test_kid_matches_direct_computation():
    rng = np.random.default_rng(2)
    real = rng.standard_normal([20, 3])
    fake = rng.standard_normal([20, 3]) + 0.7
    # With the subset as large as the sets, every subset is a permutation: the estimator is the full MMD^2.
    kid = formulas.kernel_distance(real, fake, num_subsets=3, max_subset_size=20)
    assert kid == pytest.approx(_mmd2_direct(fake, real), rel=1e-10)
    # Subsets of 8: the mean over subsets equals the direct estimate on those same subsets.
    rng_a, rng_b = np.random.default_rng(5), np.random.default_rng(5)
    kid = formulas.kernel_distance(real, fake, num_subsets=4, max_subset_size=8, rng=rng_a)
    direct = []
    for _ in range(4):
        xi = rng_b.choice(20, 8, replace=False)
        yi = rng_b.choice(20, 8, replace=False)
        direct.append(_mmd2_direct(fake[xi], real[yi]))
    assert kid == pytest.approx(np.mean(direct), rel=1e-10)
    # Unbiased: near zero for one distribution, clearly positive for a shifted one.
    a, b = rng.standard_normal([1000, 4]), rng.standard_normal([1000, 4])
    same = formulas.kernel_distance(a, b, num_subsets=10, max_subset_size=300)
    shifted = formulas.kernel_distance(a, b + 0.5, num_subsets=10, max_subset_size=300)
    assert abs(same) < 0.1 * shifted and shifted > 0


def test_precision_recall_on_known_point_sets():
    rng = np.random.default_rng(3)
    cluster_a = rng.standard_normal([200, 2]) * 0.1
    cluster_b = rng.standard_normal([200, 2]) * 0.1 + 10
    real = np.concatenate([cluster_a, cluster_b])
    # Fakes cover cluster A only: every fake is real-looking, half the reals are missed.
    fake = cluster_a + rng.standard_normal(cluster_a.shape) * 1e-4
    p, r = formulas.precision_recall(real, fake, k=3)
    assert p == 1.0 and r == 0.5
    assert formulas.precision_recall(real, real, k=3) == (1.0, 1.0)
    assert formulas.precision_recall(real, real + 100, k=3) == (0.0, 0.0)
    # k-NN radii against a brute-force loop.
    pts = rng.standard_normal([30, 3])
    radii = formulas.knn_radii(torch.tensor(pts, dtype=torch.float32), k=3).numpy()
    brute = [sorted(np.linalg.norm(pts - p_, axis=1))[3] for p_ in pts]
    np.testing.assert_allclose(radii, brute, rtol=1e-5)


def test_inception_score_and_categorical_kl_closed_forms():
    k = 8
    onehot = np.eye(k)[np.tile(np.arange(k), 10)]  # every split sees every class equally often
    mean, std = formulas.inception_score(onehot, num_splits=10)
    assert mean == pytest.approx(k) and std == pytest.approx(0, abs=1e-12)
    assert formulas.inception_score(np.full([50, k], 1 / k), num_splits=5)[0] == pytest.approx(1.0)
    assert formulas.categorical_kl(np.full(1000, 26)) == pytest.approx(0, abs=1e-12)
    collapsed = np.zeros(1000)
    collapsed[7] = 26000
    assert formulas.categorical_kl(collapsed) == pytest.approx(math.log(1000))
    half = np.r_[np.full(500, 2), np.zeros(500)]
    assert formulas.categorical_kl(half) == pytest.approx(math.log(2))


def test_toy_mixture_metrics_on_exact_and_collapsed_samples():
    ds = open_dataset("toy:gaussians25?n=5000")
    info = ds.info()["toy"]
    centers, std = np.asarray(info["centers"]), info["std"]
    good = mixture_metrics(ds.points, centers, std)
    # Within 3 std in 2-D: P(chi2_2 <= 9) = 1 - exp(-4.5) of exact samples.
    assert good["modes_covered"] == 25 and good["modes_loose"] == 25 and good["kl_modes"] < 1e-3
    assert good["hq_share"] == pytest.approx(1 - math.exp(-4.5), abs=0.005)
    collapsed = mixture_metrics(np.repeat(centers[3:4], 100, 0), centers, std)
    assert collapsed["modes_covered"] == 1 and collapsed["kl_modes"] == pytest.approx(math.log(25))
    assert registry.direction("kl_modes") == -1 and registry.direction("modes_covered") == 1
    assert registry.direction("modes_loose") == 0 and registry.direction("mode_threshold") == 0
    assert registry.direction("fid50k_full") == -1 and registry.direction("pr50k3_full_recall") == 1
    assert registry.direction("nfe") == 0 and registry.direction("is50k_std") == 0


@pytest.mark.parametrize("name", ["gaussians25", "grid49", "ring8"])
def test_toy_metric_is_calibrated_noise_scores_zero_real_all_collapse_its_modes(name):
    from ganstack.metrics.toy import uniform_box_samples

    ds = open_dataset(f"toy:{name}?n=20000")
    info = ds.info()["toy"]
    centers, std = np.asarray(info["centers"]), info["std"]
    m = len(centers)
    noise = mixture_metrics(uniform_box_samples(centers, std, 2500, seed=1), centers, std)
    assert noise["modes_covered"] == 0 and noise["hq_share"] < 0.05
    if name == "gaussians25":  # why the loose count is only a secondary figure
        assert noise["modes_loose"] >= 15
    real = mixture_metrics(ds.points[:2500], centers, std)
    assert real["modes_covered"] == m and real["hq_share"] > 0.97
    keep = np.isin(ds.modes, [0, 5, 7])
    collapsed = mixture_metrics(ds.points[keep][:2500], centers, std)
    assert collapsed["modes_covered"] == 3 and collapsed["kl_modes"] == pytest.approx(math.log(m / 3), abs=0.02)
    # A generator that smears 90% of its mass between the modes covers none, however evenly it spreads.
    rng = np.random.default_rng(0)
    smeared = np.concatenate([ds.points[:250], uniform_box_samples(centers, std, 2250, seed=2)])[rng.permutation(2500)]
    assert mixture_metrics(smeared, centers, std)["modes_covered"] == 0
    # The threshold is a quarter of the ideal share: a mode at 1/5 of its share is not covered, at 1/3 it is.
    share = np.full(m, 1.0)
    share[0], share[1] = 0.2, 0.34
    idx = np.concatenate([np.nonzero(ds.modes == k)[0][:int(round(share[k] * 100))] for k in range(m)])
    partial = mixture_metrics(ds.points[idx], centers, std)
    assert partial["modes_covered"] == m - 1 and partial["mode_threshold"] == math.ceil(len(idx) / (4 * m))


# -------------------------------------------------------------------------------------------------
# The pipeline, with a stand-in detector of the StyleGAN2-ADA TorchScript interface

class StandInDetector(torch.nn.Module):
    """uint8 [N, 3, H, W] -> 48 pooled features (return_features) or 10-way probabilities."""

    def __init__(self):
        super().__init__()
        self.head = torch.nn.Linear(48, 10)
        torch.nn.init.normal_(self.head.weight, std=0.5)

    def forward(self, img: torch.Tensor, return_features: bool = False, no_output_bias: bool = False) -> torch.Tensor:
        assert img.dtype == torch.uint8
        x = img.to(torch.float32) / 255.0
        feat = torch.nn.functional.adaptive_avg_pool2d(x, 4).flatten(1)
        if return_features:
            return feat
        logits = feat @ self.head.weight.t()
        if not no_output_bias:
            logits = logits + self.head.bias
        return torch.softmax(logits, dim=1)


@pytest.fixture
def stand_in(tmp_path, monkeypatch):
    torch.manual_seed(0)
    path = tmp_path / "stand-in-detector.pt"
    torch.jit.script(StandInDetector()).save(str(path))
    monkeypatch.setenv("GANSTACK_CACHE", str(tmp_path / "cache"))
    for var in ("GANSTACK_INCEPTION", "GANSTACK_VGG16", "GANSTACK_INCEPTION_SHA256", "GANSTACK_VGG16_SHA256"):
        monkeypatch.delenv(var, raising=False)
    detectors._loaded.clear()
    return str(path)


class TwoStepSampler:
    """A sampler that evaluates G twice per sample (like a 2-step DDGAN chain)."""

    @hookimpl
    def sampler(self, G, z, c, G_kwargs):
        x = G(z, c, **G_kwargs)
        return DInput(img=0.5 * (x + G(z.flip(0), c, **G_kwargs)), c=c)


def test_fid_kid_pr_is_pipeline_with_stand_in_detector(stand_in, tmp_path):
    tr = make_trainer([], image=True, data="shapes16?n=80", mirror=True)
    tr.step()
    opts = registry.MetricOptions(detectors={"inception": stand_in, "vgg16": stand_in}, batch=64, log=lambda *_: None)
    kw = dict(G=tr.G_ema, stack=tr.stack, dataset=tr.dataset, device="cpu", opts=opts)
    res = registry.compute("fid64_full", **kw)

    # Independent recomputation: full unmirrored dataset, fakes through the sampler, quantised to uint8.
    det = torch.jit.load(stand_in)
    full = open_dataset("shapes16?n=80")
    fakes = registry.draw_samples(tr.G_ema, tr.stack, 64, "cpu", seed=0, batch=64)
    fake_u8 = (fakes * 127.5 + 128).clamp(0, 255).to(torch.uint8)
    with torch.no_grad():
        real = det(full.get_batch(np.arange(len(full)))[0], return_features=True).double().numpy()
        fake = det(fake_u8, return_features=True).double().numpy()
        probs = det(fake_u8, no_output_bias=True).double().numpy()
    expected = formulas.frechet_distance(fake.mean(0), np.cov(fake, rowvar=False, bias=True),
                                         real.mean(0), np.cov(real, rowvar=False, bias=True))
    assert res["fid64_full"] == pytest.approx(expected, rel=1e-5)
    assert res["num_real"] == 80 and res["nfe"] == 1.0  # mirror off for *_full; one G call per sample
    assert res["detector_sha256"] == detectors.file_sha256(stand_in)

    # The detector was cached, the real statistics too; a second run reads them and agrees.
    assert os.path.isfile(os.path.join(os.environ["GANSTACK_CACHE"], "detectors", "inception-2015-12-05.pt"))
    stats_dir = os.path.join(os.environ["GANSTACK_CACHE"], "gan-metrics")
    cached = os.listdir(stats_dir)
    assert len(cached) == 1
    mtime = os.stat(os.path.join(stats_dir, cached[0])).st_mtime_ns
    assert registry.compute("fid64_full", **kw)["fid64_full"] == res["fid64_full"]
    assert os.listdir(stats_dir) == cached and os.stat(os.path.join(stats_dir, cached[0])).st_mtime_ns == mtime

    kid = registry.compute("kid64_full", **kw)
    expected_kid = formulas.kernel_distance(real, fake, num_subsets=100, max_subset_size=1000,
                                            rng=np.random.default_rng(0))
    assert kid["kid64_full"] == pytest.approx(expected_kid, rel=1e-4)
    pr = registry.compute("pr64_3_full", **kw)
    assert (pr["pr64_3_full_precision"], pr["pr64_3_full_recall"]) == pytest.approx(
        formulas.precision_recall(real, fake, k=3), abs=1e-6)
    is_ = registry.compute("is64", **kw)
    assert is_["is64_mean"] == pytest.approx(formulas.inception_score(probs, 10)[0], rel=1e-5)


def test_nfe_is_counted_from_generator_calls(stand_in):
    tr = make_trainer(["two"], extra_plugins={"two": TwoStepSampler})
    res = registry.compute("toy", G=tr.G_ema, stack=tr.stack, dataset=tr.dataset, device="cpu")
    assert res["nfe"] == 2.0 and res["num_modes"] == 25
    tr = make_trainer([])
    assert registry.compute("toy", G=tr.G_ema, stack=tr.stack, dataset=tr.dataset, device="cpu")["nfe"] == 1.0


def test_missing_wrong_and_pickled_detectors_fail_clearly(stand_in, tmp_path, monkeypatch):
    with pytest.raises(detectors.DetectorError, match=r"inception-2015-12-05\.pt.*GANSTACK_INCEPTION"):
        detectors.locate("inception")
    with pytest.raises(detectors.DetectorError, match="does not exist"):
        detectors.locate("inception", str(tmp_path / "nowhere.pt"))
    monkeypatch.setenv("GANSTACK_INCEPTION_SHA256", "0" * 64)
    with pytest.raises(detectors.DetectorError, match="another or a corrupted file"):
        detectors.locate("inception", stand_in)
    monkeypatch.setenv("GANSTACK_INCEPTION_SHA256", detectors.file_sha256(stand_in))
    path, digest, verified = detectors.locate("inception", stand_in)
    assert verified and digest == detectors.file_sha256(path)
    monkeypatch.delenv("GANSTACK_INCEPTION_SHA256")
    pkl = tmp_path / "inception-2015-12-05.pkl"
    pkl.write_bytes(b"not trusted")
    with pytest.raises(detectors.DetectorError, match="runs code when loaded"):
        detectors.locate("inception", str(pkl))
    # The environment variable works as well as the flag, and the file:// URL form is accepted.
    monkeypatch.setenv("GANSTACK_INCEPTION", "file://" + stand_in)
    assert detectors.locate("inception")[1] == detectors.file_sha256(stand_in)


def test_real_stats_cache_key_changes_with_the_data(tmp_path):
    from PIL import Image

    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, [8, 8, 3], dtype=np.uint8)).save(folder / f"{i}.png")
    key = lambda ds, ext="det:a": features.stats_cache_path(ds, "det", ext, dict(max_items=None), str(tmp_path))
    before = key(open_dataset(str(folder)))
    assert key(open_dataset(str(folder))) == before  # same content, same key
    img = np.asarray(Image.open(folder / "2.png")).copy()
    img[0, 0, 0] ^= 1  # one bit of one pixel
    Image.fromarray(img).save(folder / "2.png")
    after = key(open_dataset(str(folder)))
    assert after != before
    assert key(open_dataset(str(folder)), "det:b") != after  # another feature network
    assert key(open_dataset("shapes16?n=64&seed=0")) != key(open_dataset("shapes16?n=64&seed=1"))


# -------------------------------------------------------------------------------------------------
# Digits

def test_stacked_mode_index_and_histogram():
    class ByBrightness(torch.nn.Module):
        """Classifies a channel as digit round(9 * brightness)."""

        def forward(self, x, return_features=False):
            level = ((x.mean((1, 2, 3)) + 1) / 2 * 9).round().long()
            return torch.nn.functional.one_hot(level, 10).float()

    digits_rgb = torch.tensor([[3, 0, 7], [9, 9, 9], [0, 0, 0], [3, 0, 7]])
    img = (digits_rgb[:, :, None, None].float() / 9 * 255).round().to(torch.uint8).expand(-1, -1, 32, 32)
    assert digits.classify_channels(ByBrightness(), img).tolist() == digits_rgb.tolist()
    assert digits.mode_of(digits_rgb).tolist() == [307, 999, 0, 307]
    counts = digits.mode_histogram(ByBrightness(), [img[:2], img[2:]], 3)
    assert len(counts) == 1000 and counts[307] == 2 and counts[999] == 1 and counts[0] == 1 and counts.sum() == 4


def test_stacked_modes_count_only_confident_samples_and_a_real_share_of_them():
    class Sure(torch.nn.Module):
        """Digit round(9 * brightness), with probability 0.9 on dark-to-mid channels and 0.3 on the rest."""

        def forward(self, x, return_features=False):
            b = (x.mean((1, 2, 3)) + 1) / 2
            level = (b * 9).round().long()
            p = torch.where(b <= 0.5, 0.9, 0.3)[:, None]
            probs = torch.nn.functional.one_hot(level, 10).float() * p + (1 - p) / 9 * (
                1 - torch.nn.functional.one_hot(level, 10).float())
            return probs.log()

    def img(rgb, n):
        return (torch.tensor(rgb).float()[None, :, None, None] / 9 * 255).round().to(torch.uint8).expand(n, 3, 8, 8)

    # 1000 samples, ideal 1 per mode, threshold 0.25 -> 1: 6 samples in mode 123 (sure), 4 in mode 999 (one
    # channel unsure), the rest spread over 990 modes with their blue channel unsure (noise-like).
    noise = torch.cat([img([k // 100 % 5, k // 10 % 5, 5 + k % 5], 1) for k in range(990)])
    batch = torch.cat([img([1, 2, 3], 6), img([2, 2, 9], 4), noise])
    counts, hq = digits.mode_histograms(Sure(), [batch[:500], batch[500:]], 3)
    assert counts.sum() == 1000 and hq.sum() == 6 and hq[123] == 6
    m = digits.stacked_mode_metrics(counts, hq)
    assert m["modes_covered"] == 1 and m["hq_share"] == pytest.approx(0.006) and m["mode_threshold"] == 1
    assert m["modes_protocol"] == int((counts > 0).sum()) > 100  # the papers' count: the unsure samples pass it
    assert digits.stacked_mode_metrics(counts, hq, min_share=1.0)["modes_covered"] == 1
    assert digits.stacked_mode_metrics(counts * 10, hq * 10, min_share=1.0)["modes_covered"] == 1
    with pytest.raises(ValueError, match="min_share"):
        digits.stacked_mode_metrics(counts, hq, min_share=0)


def _bar_digits(n, seed=0):
    """Ten synthetic 'digits': class k is a bright vertical bar at column 3k + 1 on a dark 32x32 field."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n)
    img = np.zeros([n, 1, 32, 32], np.uint8)
    for i, k in enumerate(labels):
        img[i, 0, 4:28, 3 * k + 1: 3 * k + 3] = 255
    return img, labels.astype(np.int64)


def test_classifier_training_learns_and_reports_held_out_accuracy(tmp_path):
    images, labels = _bar_digits(300)
    net, info = digits.train_classifier(images, labels, holdout=100, epochs=3, batch=20, log=lambda *_: None)
    assert info["train_size"] == 200 and info["holdout"] == 100
    assert info["accuracy"] > 0.9  # chance is 0.1
    path = str(tmp_path / "clf.pt")
    digits.save_classifier(net, info, path)
    loaded, digest = digits.load_classifier(path)
    x = digits.to_input(torch.from_numpy(images[:50]))
    assert torch.equal(loaded(x).argmax(1), net.eval()(x).argmax(1)) and digest == detectors.file_sha256(path)
    with pytest.raises(digits.ClassifierError, match="ganstack train-classifier"):
        digits.load_classifier(str(tmp_path / "missing.pt"))


def test_stackedmnist_and_digits_fid_run_through_the_sampler(tmp_path, monkeypatch):
    monkeypatch.setenv("GANSTACK_CACHE", str(tmp_path / "cache"))
    torch.manual_seed(0)
    net = digits.DigitClassifier()  # untrained weights are enough to check the protocol
    path = str(tmp_path / "clf.pt")
    digits.save_classifier(net, {}, path)
    tr = make_trainer([], image=True, data="shapes16?n=64")  # RGB: each channel is classified on its own
    opts = registry.MetricOptions(classifier=path, batch=128, log=lambda *_: None)
    kw = dict(G=tr.G_ema, stack=tr.stack, dataset=tr.dataset, device="cpu", opts=opts)
    res = registry.compute("stackedmnist128", **kw)
    fakes = features.quantize(registry.draw_samples(tr.G_ema, tr.stack, 128, "cpu", seed=0, batch=128))
    counts = np.bincount(digits.mode_of(digits.classify_channels(net.eval(), fakes)).numpy(), minlength=1000)
    assert res["num_modes"] == 1000 and res["num_samples"] == 128 and res["nfe"] == 1.0
    assert res["modes_protocol"] == int((counts > 0).sum())
    assert res["kl_uniform"] == pytest.approx(formulas.categorical_kl(counts))
    prob = torch.softmax(net.eval()(digits.to_input(fakes.reshape(-1, 1, 16, 16))), 1).max(1).values.reshape(128, 3)
    sure = (prob.min(1).values >= digits.CONFIDENCE).numpy()
    assert res["hq_share"] == pytest.approx(sure.mean())
    fid = registry.compute("digits_fid128", **kw)
    real = digits.channel_features(net, open_dataset("shapes16?n=64").get_batch(np.arange(64))[0]).double().numpy()
    fake = digits.channel_features(net, fakes).double().numpy()
    assert real.shape[1] == 3 * 128
    expected = formulas.frechet_distance(fake.mean(0), np.cov(fake, rowvar=False, bias=True),
                                         real.mean(0), np.cov(real, rowvar=False, bias=True))
    assert fid["digits_fid"] == pytest.approx(expected, rel=1e-4) and fid["num_real"] == 64


# -------------------------------------------------------------------------------------------------
# Command line

def test_metrics_command_appends_json_lines_beside_the_checkpoint(stand_in, tmp_path, capsys, monkeypatch):
    from ganstack.training.cli import main

    run = tmp_path / "run"
    run.mkdir()
    tr = make_trainer([], run_dir=str(run))
    tr.step()
    ckpt = tr.save_checkpoint()
    main(["metrics", "--network", str(run), "--metrics", "toy", "--device", "cpu"])
    main(["metrics", "--network", ckpt, "--metrics", "toy", "--device", "cpu", "--seed", "1"])
    lines = [json.loads(s) for s in open(run / "metric-toy.jsonl")]
    assert len(lines) == 2 and lines[0]["snapshot"] == os.path.basename(ckpt)
    assert lines[0]["results"]["num_modes"] == 25 and lines[0]["results"]["nfe"] == 1.0
    assert lines[0]["kimg"] == pytest.approx(tr.cur_nimg / 1000)
    assert lines[0]["results"]["hq_share"] != lines[1]["results"]["hq_share"]  # --seed changes the draws
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(["metrics", "--network", ckpt, "--metrics", "fid50k_full", "--device", "cpu", "--detector", stand_in])
    assert exc.value.code == 2 and "measures images" in capsys.readouterr().err

    # An image model without the Inception file: exit 2 and one message saying what and where.
    monkeypatch.setenv("GANSTACK_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.delenv("GANSTACK_INCEPTION", raising=False)
    img_run = tmp_path / "img"
    img_run.mkdir()
    img_ckpt = make_trainer([], image=True, run_dir=str(img_run)).save_checkpoint()
    with pytest.raises(SystemExit) as exc:
        main(["metrics", "--network", img_ckpt, "--metrics", "fid50k_full", "--device", "cpu"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "inception-2015-12-05.pt" in err and "GANSTACK_INCEPTION" in err
    assert "Traceback" not in err
