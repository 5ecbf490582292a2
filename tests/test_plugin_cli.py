"""Plugin discovery through the entry-point group and the ``ganstack plugins`` commands."""
import os
import subprocess
import sys
import textwrap

import pytest

PLUGIN_SRC = '''
"""Scales fake and real images by a constant (a third-party example)."""
from ganstack.training.api import Option, hookimpl


class Scale:
    """Multiplies what D sees by --scale-factor."""

    @hookimpl
    def add_options(self):
        return [Option("factor", float, 1.0, "multiplier", min=0.0)]

    @hookimpl
    def configure(self, opts):
        self.factor = opts.factor

    @hookimpl
    def augment_d_input(self, x):
        return x.replace(img=x.img * self.factor)
'''


def make_distribution(root, name="ganstack_scale", version="0.3.1", entry="scale = ganstack_scale:Scale"):
    """A minimal installed distribution: a module plus a .dist-info with entry_points.txt."""
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, f"{name}.py"), "w") as f:
        f.write(PLUGIN_SRC)
    info = os.path.join(root, f"{name}-{version}.dist-info")
    os.makedirs(info)
    with open(os.path.join(info, "METADATA"), "w") as f:
        f.write(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    with open(os.path.join(info, "entry_points.txt"), "w") as f:
        f.write(f"[ganstack.plugins]\n{entry}\n")
    return root


def run(args, extra_path=None):
    env = dict(os.environ)
    if extra_path:
        env["PYTHONPATH"] = extra_path + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-m", "ganstack", *args], capture_output=True, text=True, env=env,
                          timeout=300)


def test_third_party_plugin_is_discovered_listed_and_trains(tmp_path):
    root = make_distribution(str(tmp_path / "site"))
    r = run(["plugins", "list"], root)
    assert r.returncode == 0, r.stderr
    line = [l for l in r.stdout.splitlines() if l.startswith("scale ")]
    assert line and "ganstack_scale 0.3.1" in line[0] and "Multiplies what D sees" in line[0]
    r = run(["plugins", "show", "scale"], root)
    assert r.returncode == 0 and "--scale-factor FLOAT" in r.stdout and "augment_d_input" in r.stdout
    assert "default: 1.0; float in [0, inf]" in r.stdout
    r = run(["train", "--plugins", "scale", "--scale-factor", "0.5", "--kimg", "0.1", "--batch", "32",
             "--outdir", str(tmp_path / "runs")], root)
    assert r.returncode == 0, r.stderr
    assert "scale: factor=0.5" in r.stdout
    r = run(["train", "--plugins", "scale", "--scale-factor", "-1", "--outdir", str(tmp_path / "runs")], root)
    assert r.returncode == 2 and "out of range" in r.stderr and "Traceback" not in r.stderr
    # Without the distribution on the path the plugin is unknown, and the error lists what exists.
    r = run(["train", "--plugins", "scale", "--outdir", str(tmp_path / "runs")])
    assert r.returncode == 2 and "Unknown plugin 'scale'" in r.stderr


def test_options_for_a_plugin_that_is_not_enabled(tmp_path):
    root = make_distribution(str(tmp_path / "site"))
    r = run(["train", "--scale-factor", "2", "--outdir", str(tmp_path / "runs")], root)
    assert r.returncode == 2 and "not enabled" in r.stderr


def test_two_distributions_claiming_one_name_is_an_error(tmp_path):
    root = make_distribution(str(tmp_path / "site"))
    make_distribution(str(tmp_path / "site"), name="other_scale", version="1.0", entry="scale = other_scale:Scale")
    r = run(["plugins", "list"], root)
    assert "register the plugin name 'scale'" in (r.stdout + r.stderr)


def test_plugins_show_core_lists_its_hooks():
    r = run(["plugins", "show", "core"])
    assert r.returncode == 0
    assert "sampler" in r.stdout and "lazy_regularizers" in r.stdout
