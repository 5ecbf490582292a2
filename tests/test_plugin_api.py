"""The plugin contract v1: declared capabilities, the generated hook reference, the README's example package,
the base optimiser, training pairs, provenance, and no per-step host syncs."""
from __future__ import annotations

import hashlib
import json
import os
import pathlib
import re
import subprocess
import sys

import pytest
import torch

from conftest import make_trainer, state_equal
from ganstack.training import checkpoint as ckpt_io
from ganstack.training.api import Capabilities, DInput, PluginError, hookimpl
from ganstack.training.api import PhaseContext

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
ENV = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")


def ganstack(*args, cwd=None, extra_path=None, timeout=300):
    env = dict(ENV)
    if extra_path:
        env["PYTHONPATH"] = extra_path + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-m", "ganstack", *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=timeout)


# -------------------------------------------------------------------------------------------------
# The author's reference

def test_readme_hook_reference_is_generated_from_the_hookspecs():
    from ganstack.training.hookdoc import extract, section
    documented = extract(README.read_text())
    assert documented, "README.md lacks the generated hook reference (python -m ganstack.training.hookdoc --write README.md)"
    assert documented == section(), ("README.md's hook reference disagrees with training/hookspecs.py; run "
                                     "python -m ganstack.training.hookdoc --write README.md")
    from ganstack.training.plugin_manager import hook_names
    for name in hook_names():
        assert f"| `{name}` |" in documented


def _readme_example_files() -> dict:
    text = README.read_text()
    files = dict(re.findall(r"<!-- example-file: (\S+) -->\n```\w*\n(.*?)```", text, re.S))
    assert set(files) == {"ganstack-energy/pyproject.toml", "ganstack-energy/ganstack_energy/__init__.py"}
    assert sum(len(body.strip().splitlines()) for body in files.values()) < 50  # a complete package, under 50 lines
    return files


def _install_readme_example(tmp_path) -> str:
    """Write the README's two files and install them (pip, offline), else register them by a dist-info."""
    for rel, body in _readme_example_files().items():
        path = tmp_path / "src" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(body)
    site = tmp_path / "site"
    r = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
                        "--no-build-isolation", "--target", str(site), str(tmp_path / "src" / "ganstack-energy")],
                       capture_output=True, text=True, timeout=300)
    if r.returncode != 0:  # no build backend offline: the same entry point and metadata, by hand
        import tomllib
        meta = tomllib.loads((tmp_path / "src" / "ganstack-energy" / "pyproject.toml").read_text())["project"]
        pkg = site / "ganstack_energy"
        pkg.mkdir(parents=True)
        (pkg / "__init__.py").write_text((tmp_path / "src/ganstack-energy/ganstack_energy/__init__.py").read_text())
        info = site / f"ganstack_energy-{meta['version']}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {meta['name']}\nVersion: {meta['version']}\n")
        eps = meta["entry-points"]["ganstack.plugins"]
        (info / "entry_points.txt").write_text("[ganstack.plugins]\n" + "".join(f"{k} = {v}\n" for k, v in eps.items()))
    return str(site)


@pytest.mark.slow
def test_readme_example_package_installs_trains_resumes_and_samples(tmp_path):
    site = _install_readme_example(tmp_path)
    r = ganstack("plugins", "list", extra_path=site)
    assert re.search(r"^energy\s+ganstack-energy 0\.1\.0\s+Energy matching", r.stdout, re.M), r.stdout + r.stderr
    r = ganstack("plugins", "show", "energy", extra_path=site)
    assert r.returncode == 0 and "requires: sample_fakes" in r.stdout and "--energy-weight FLOAT" in r.stdout
    common = ["--data", "toy:gaussians25?n=1024", "--batch", "32", "--mlp-hidden", "16", "--tick", "0.064", "--snap", "1",
              "--workers", "0", "--plugins", "energy", "--energy-weight", "0.5", "--energy-interval", "2"]
    r = ganstack("train", *common, "--kimg", "0.256", "--outdir", str(tmp_path / "straight"), extra_path=site)
    assert r.returncode == 0, r.stderr
    assert "energy/fakes" in [l for l in r.stdout.splitlines() if l.startswith("tick 1")][0]  # the statistic
    run = next((tmp_path / "straight").iterdir())
    records = [json.loads(l) for l in open(run / "stats.jsonl")]
    assert sum("energy/fakes" in rec for rec in records) >= 3  # every tick that ran the lazy term (interval 2)
    ckpt = ckpt_io.load(str(run))
    assert float(ckpt["plugin_state"]["energy"]["target"]) > 0  # the state
    assert ckpt["plugin_provenance"]["energy"] == {"dist": "ganstack-energy", "version": "0.1.0", "replaces": []}
    # Resume is exact with the plugin's state.
    r = ganstack("train", *common, "--kimg", "0.128", "--outdir", str(tmp_path / "a"), extra_path=site)
    assert r.returncode == 0, r.stderr
    r = ganstack("train", "--resume", str(next((tmp_path / "a").iterdir())), "--kimg", "0.256",
                 "--outdir", str(tmp_path / "b"), extra_path=site)
    assert r.returncode == 0, r.stderr
    resumed = ckpt_io.load(str(next((tmp_path / "b").iterdir())))
    for key in ("G", "D", "G_ema"):
        assert state_equal(resumed[key], ckpt[key]), key
    assert torch.equal(resumed["plugin_state"]["energy"]["target"], ckpt["plugin_state"]["energy"]["target"])
    # Without the package (a loss-only plugin), generate still works, with a warning.
    r = ganstack("generate", "--network", str(run), "--n", "50", "--out", str(tmp_path / "x.npy"))
    assert r.returncode == 0, r.stderr
    assert "plugin 'energy' (from ganstack-energy 0.1.0)" in r.stderr and "not installed" in r.stderr


def test_readme_snippet_replaces_G_runs_at_start_and_sets_a_schedule(capsys):
    body = re.search(r"<!-- example-snippet: replace-g -->\n```python\n(.*?)```", README.read_text(), re.S).group(1)
    ns: dict = {}
    exec(compile(body, "README.md:replace-g", "exec"), ns)
    tr = make_trainer(["lin", "clr", "smart"], {"smart": {"score": "analytic"}}, extra_plugins={"lin": ns["Linear"]},
                      kimg=0.32)
    assert type(tr.G).__name__ == "LinearG" and set(tr.optim.schedules) == {"G", "D"}
    assert "2048 points on cpu; G has" in capsys.readouterr().out
    for _ in range(10):
        tr.step()
    assert tr.G_opt.param_groups[0]["lr"] == pytest.approx(1e-5)


# -------------------------------------------------------------------------------------------------
# Capabilities: declared, checked by the manager, no plugin naming another

class TinyReplacementG(torch.nn.Module):
    """A generator without a W space that does not declare one latent per sample."""

    is_image, w_dim, num_ws = False, None, None

    def __init__(self, z_dim, c_dim, out_dim):
        super().__init__()
        self.z_dim, self.c_dim, self.out_dim = z_dim, c_dim, out_dim
        self.net = torch.nn.Linear(z_dim, out_dim)

    def forward(self, z, c, **_):
        return self.net(z)


class ReplacesG:
    """A third-party plugin that replaces G and declares nothing else."""

    capabilities = Capabilities(replaces="G")

    @hookimpl
    def build_generator(self, kwargs):
        return TinyReplacementG(kwargs["z_dim"], kwargs["c_dim"], kwargs["out_dim"])


def test_a_third_party_G_without_declarations_is_refused_by_clr_and_smart():
    with pytest.raises(PluginError, match=r"clr cannot run in this stack: it requires 'one_latent_per_sample'.*"
                                          r"generator is replaced by mine"):
        make_trainer(["mine", "clr"], extra_plugins={"mine": ReplacesG})
    with pytest.raises(PluginError, match=r"smart cannot run in this stack: it requires 'sample_fakes'.*training fakes "
                                          r"come from mine"):
        make_trainer(["mine", "smart"], {"smart": {"score": "analytic"}}, extra_plugins={"mine": ReplacesG})
    make_trainer(["mine"], extra_plugins={"mine": ReplacesG}).step()  # alone it trains

    class DeclaresAll(ReplacesG):
        capabilities = Capabilities(replaces="G", provides="one_latent_per_sample, sample_fakes")

    tr = make_trainer(["mine", "clr", "smart"], {"smart": {"score": "analytic"}}, extra_plugins={"mine": DeclaresAll})
    assert "Loss/clr/latent" in tr.step()
    # No built-in plugin names another: compatibility lives in the declarations.
    names = ("ada", "diffaug", "diffusion", "smart", "clr", "ddgan", "cmgan")
    for path in (ROOT / "plugins").rglob("*.py"):
        code = "\n".join(l for l in path.read_text().splitlines() if not l.lstrip().startswith(("#", "\"", "'")))
        own = path.stem if path.stem != "__init__" else path.parent.name
        for other in names:
            if other != own:
                assert not re.search(rf"[\"']{other}[\"']", code), f"{path.relative_to(ROOT)} names plugin {other!r}"


def test_plugins_show_lists_declarations():
    from click.testing import CliRunner

    from ganstack.training.cli import build_cli
    out = CliRunner().invoke(build_cli(), ["plugins", "show", "ddgan"]).output
    assert "replaces: D, G, sampler" in out and "d_input: pair" in out
    out = CliRunner().invoke(build_cli(), ["plugins", "show", "clr"]).output
    assert "requires: one_latent_per_sample" in out and "--clr-target w requires: w_space" in out
    out = CliRunner().invoke(build_cli(), ["plugins", "show", "core"]).output
    assert "provides: one_latent_per_sample, one_step, sample_fakes; on image data also w_space" in out


# -------------------------------------------------------------------------------------------------
# The base optimiser never changes because a plugin was enabled

class ZeroWeightTerm:
    """A loss-only plugin: a G term and a lazy G regularizer, both with weight zero."""

    @hookimpl
    def g_loss(self, fakes):
        return {"zero": 0.0 * fakes.img.sum()}

    @hookimpl
    def lazy_regularizers(self, cfg):
        from ganstack.training.api import LazyRegularizer
        return [LazyRegularizer("zero", "G", 8, lambda ctx: ctx.sample().img.sum() * 0.0)]


def _groups(opt):
    return [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]


@pytest.mark.parametrize("image", [False, True])
def test_loss_only_plugins_leave_the_optimizers_as_vanilla(image):
    vanilla = make_trainer([], image=image)
    for names, opts, extra in ((["zero"], {}, {"zero": ZeroWeightTerm}),
                               (["smart"], {"smart": {"score": "analytic"}}, {})):
        if image and names == ["smart"]:
            continue  # the analytic score is for the toy mixtures (the image case is in test_smart.py)
        tr = make_trainer(names, opts, extra_plugins=extra, image=image)
        assert _groups(tr.G_opt) == _groups(vanilla.G_opt) and _groups(tr.D_opt) == _groups(vanilla.D_opt), names
        assert tr.mb_ratio == vanilla.mb_ratio


def test_cifar_preset_applies_stylegan2_ada_lazy_correction_to_G():
    """StyleGAN2-ADA uses G_reg_interval 4 even without path length: G at lr 0.0025 * 4/5, beta2 0.99 ** (4/5)."""
    tr = make_trainer([], image=True, cfg="cifar")
    assert tr.cfg.pl_weight == 0
    g, d = tr.G_opt.param_groups[0], tr.D_opt.param_groups[0]
    assert g["lr"] == pytest.approx(0.0025 * 4 / 5) and g["betas"][1] == pytest.approx(0.99 ** 0.8)
    assert d["lr"] == pytest.approx(0.0025 * 16 / 17) and d["betas"][1] == pytest.approx(0.99 ** (16 / 17))
    assert "Greg" not in [p for p, _, _ in tr.phases(0)]  # no G regularizer: no Greg optimizer step


# Seeded 12-step toy runs, fully pinned (so preset or option-default changes elsewhere do not move them). The
# hashes were recorded with the loop before the Plugin API v1 refactor (commit 275c6d5) and must not change for
# vanilla and for plugins without regularizers. They depend on the CPU kernels, so they are checked with the torch
# version they were recorded with.
PIN_TOY = dict(data="toy:gaussians25?n=2048", cfg="toy", batch=32, mlp_hidden=32, mlp_layers=2, workers=0, kimg=1.0,
               glr=0.001, dlr=0.001, g_betas=(0.0, 0.99), d_betas=(0.0, 0.99), adam_eps=1e-8, gamma=0.0,
               r1_interval=16, pl_weight=0.0, pl_interval=4, ema_kimg=1.0, ema_rampup=None, z_dim=32,
               style_mixing=0.0, seed=0)
PIN_DIFFUSION = dict(sigma=0.05, beta_start=1e-4, beta_end=0.02, t_min=5, t_max=500, target=0.6, adaptive=True, p=0.0,
                     ada_kimg=100.0, interval=4, ts_dist="priority", t_embed="sincos", t_dim=16)
REFERENCE = {"vanilla": "8c5108ae9bd42188", "diffusion": "06e29caecf694d47"}
REFERENCE_TORCH = "2.13.0+cpu"


def _digest(tr) -> str:
    h = hashlib.sha256()
    for name in ("G", "D", "G_ema"):
        for k, v in sorted(getattr(tr, name).state_dict().items()):
            h.update(k.encode())
            h.update(v.detach().cpu().contiguous().numpy().tobytes())
    for opt in (tr.G_opt, tr.D_opt):
        for st in opt.state_dict()["state"].values():
            for _, v in sorted(st.items()):
                h.update(torch.as_tensor(v).cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


@pytest.mark.skipif(torch.__version__ != REFERENCE_TORCH or torch.get_num_threads() != 2,
                    reason="bitwise reference recorded with torch 2.13.0+cpu on 2 threads")
@pytest.mark.parametrize("which", ["vanilla", "diffusion"])
def test_toy_numerics_are_bitwise_those_of_the_loop_before_the_refactor(which):
    names, opts = ([], {}) if which == "vanilla" else (["diffusion"], {"diffusion": PIN_DIFFUSION})
    tr = make_trainer(names, opts, **PIN_TOY)
    for _ in range(12):
        tr.step()
    assert _digest(tr) == REFERENCE[which]


# -------------------------------------------------------------------------------------------------
# Training pairs: a fake derived from a real keeps that real's label

def test_ddgan_fakes_keep_the_labels_of_the_reals_they_denoise():
    tr = make_trainer(["ddgan"], data="toy:gaussians25?n=2048&labels=1", cond=True)
    x, c_real = next(tr.stream)
    seen = []
    forward = type(tr.G).forward

    def spy(self, x_t, z, t, c=None, **kw):
        seen.append(c)
        return forward(self, x_t, z, t, c, **kw)
    type(tr.G).forward = spy
    try:
        loop_labels = tr.labels(len(x), tr.gen)  # the loop's random labels for this phase
        assert not torch.equal(loop_labels, c_real)
        ctx = PhaseContext(tr.loss, "Gmain", 0, 0, DInput(x, c_real), torch.randn(len(x), tr.G.z_dim), loop_labels)
        fakes = ctx.sample()
    finally:
        type(tr.G).forward = forward
    assert fakes.from_reals
    assert torch.equal(fakes.c, c_real)  # D judges each fake with its real's label ...
    assert torch.equal(seen[-1], c_real)  # ... and G denoised it with that label
    tr.step()


def test_the_loop_refuses_fakes_from_reals_with_other_labels():
    class Mislabels:
        capabilities = Capabilities(provides="sample_fakes")

        @hookimpl
        def sampler(self, G, z, c, ctx, G_kwargs):
            if ctx is None:
                return DInput(G(z, c), c)
            return DInput(G(z, c), c, from_reals=True)  # made "from the reals" but with the loop's labels

    tr = make_trainer(["mis"], extra_plugins={"mis": Mislabels}, data="toy:gaussians25?n=2048&labels=1", cond=True)
    with pytest.raises(PluginError, match=r"sampler of mis made training fakes from this phase's reals.*must keep "
                                          r"that real's label"):
        tr.step()


def test_ddgan_cosine_lr_decay_to_1e5_resumes_exactly(tmp_path):
    kw = dict(kimg=0.32, options={"ddgan": {"lr_decay": "cosine"}})
    tr = make_trainer(["ddgan"], **kw)
    steps = 10  # the whole run: 320 images at batch 32
    lrs = []
    for _ in range(steps):
        tr.step()
        lrs.append((tr.G_opt.param_groups[0]["lr"], tr.D_opt.param_groups[0]["lr"]))
    assert lrs[-1][0] == pytest.approx(1e-5) and lrs[-1][1] == pytest.approx(1e-5)
    assert all(a > b for (a, _), (b, _) in zip(lrs, lrs[1:]))
    import math
    assert lrs[4][0] == pytest.approx(1e-5 + (1e-4 - 1e-5) * (1 + math.cos(math.pi * 5 / 10)) / 2)
    first = make_trainer(["ddgan"], **kw)
    for _ in range(5):
        first.step()
    ckpt_io.atomic_save(first.checkpoint_dict(), str(tmp_path / "c.pt"))
    resumed = make_trainer(["ddgan"], resume=ckpt_io.load(str(tmp_path / "c.pt")), **kw)
    for _ in range(5):
        resumed.step()
    assert state_equal(resumed.G.state_dict(), tr.G.state_dict()) and state_equal(resumed.D.state_dict(), tr.D.state_dict())
    assert resumed.G_opt.param_groups[0]["lr"] == tr.G_opt.param_groups[0]["lr"]
    # auto: on for image presets, off on the toy data (Appendix C.5's constant lr)
    assert make_trainer(["ddgan"]).optim.schedules == {}
    assert set(make_trainer(["ddgan"], image=True).optim.schedules) == {"G", "D"}


# -------------------------------------------------------------------------------------------------
# Provenance

def test_checkpoints_record_plugin_provenance_and_sampling_needs_only_G_and_sampler_plugins(tmp_path, capsys):
    from ganstack.training.inference import load_model, sampling_stack
    tr = make_trainer(["diffusion"])
    ckpt = tr.checkpoint_dict()
    assert ckpt["plugin_provenance"]["diffusion"]["dist"] == "ganstack"
    assert ckpt["plugin_provenance"]["diffusion"]["replaces"] == []
    # A loss-only plugin that is no longer installed: skipped with a warning.
    warnings = []
    names, options, skipped = sampling_stack(dict(ckpt, plugins=["diffusion"]), registry={}, warn=warnings.append)
    assert (names, skipped) == ([], ["diffusion"]) and "not installed" in warnings[0]
    path = tmp_path / "c.pt"
    ckpt_io.atomic_save(dict(ckpt, plugins=["diffusion", "gone"], plugin_options=dict(ckpt["plugin_options"], gone={}),
                             plugin_provenance=dict(ckpt["plugin_provenance"],
                                                    gone={"dist": "gone-pkg", "version": "1.2", "replaces": []}),
                             plugin_state=dict(ckpt["plugin_state"], gone={"x": 1})), str(path))
    model = load_model(str(path), device="cpu", warn=warnings.append)
    assert model.stack.names == ["diffusion"] and "gone-pkg 1.2" in warnings[-1]
    assert model.sample(torch.randn(4, model.G.z_dim)).shape == (4, 2)
    # A plugin that replaced G or the sampler is needed: a clear error naming the package.
    ckpt_io.atomic_save(dict(ckpt, plugins=["gone"], plugin_options={"gone": {}},
                             plugin_provenance={"gone": {"dist": "gone-pkg", "version": "1.2", "replaces": ["G"]}}),
                        str(path))
    from ganstack.stylegan_base.errors import CheckpointError
    with pytest.raises(CheckpointError, match=r"plugin 'gone' \(from gone-pkg 1.2\).*sampling needs it: it replaced "
                                              r"G. pip install 'gone-pkg==1.2'"):
        load_model(str(path), device="cpu")


# -------------------------------------------------------------------------------------------------
# No host syncs per step, and the layering

def _count_host_reads(monkeypatch):
    """Count tensor-to-host reads made by ganstack's own code (torch's Adam reads its CPU step counter itself)."""
    counts = {"n": 0, "where": []}
    for name in ("item", "tolist", "__bool__", "__float__", "__int__", "cpu", "numpy"):
        original = getattr(torch.Tensor, name)

        def counting(self, *a, _orig=original, **k):
            caller = sys._getframe(1).f_code.co_filename
            if caller.startswith(str(ROOT)) and "/tests/" not in caller:
                counts["n"] += 1
                counts["where"].append(f"{caller}:{sys._getframe(1).f_lineno}")
            return _orig(self, *a, **k)
        monkeypatch.setattr(torch.Tensor, name, counting)
    return counts


@pytest.mark.parametrize("names,opts,kw", [([], {}, {}), (["diffusion"], {}, {}),
                                           ([], {}, dict(data="toy:gaussians25?n=2048&labels=1", cond=True))])
def test_training_steps_read_nothing_back_from_the_device(monkeypatch, names, opts, kw):
    tr = make_trainer(names, opts, **kw)
    tr.step()  # the first step checks the training-pairs contract once
    counts = _count_host_reads(monkeypatch)
    for _ in range(2):  # diffusion reads r_d every 4 steps (as ADA's p), at step 4: steps 2 and 3 read nothing
        tr.step()
    assert counts["n"] == 0, counts["where"]


def test_metrics_does_not_import_training():
    bad = []
    for path in (ROOT / "metrics").rglob("*.py"):
        if re.search(r"^\s*(from|import) ganstack\.training", path.read_text(), re.M):
            bad.append(str(path.relative_to(ROOT)))
    assert not bad, f"metrics/ must not import training/: {bad}"
