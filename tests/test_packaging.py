"""The installed import names are ganstack's own (no top-level ``training``/``metrics`` to collide with a
StyleGAN2-ADA checkout), and setup.cfg installs every package folder."""
from __future__ import annotations

import configparser
import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
FOLDERS = ("stylegan_base", "training", "plugins", "metrics")


def test_setup_cfg_lists_every_package_folder():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    listed = set(cfg["options"]["packages"].split())
    on_disk = {"ganstack"} | {"ganstack." + str(p.parent.relative_to(ROOT)).replace("/", ".")
                              for top in FOLDERS for p in (ROOT / top).rglob("__init__.py")}
    assert on_disk - listed == set(), f"setup.cfg [options] packages misses {sorted(on_disk - listed)}"
    mapping = dict(line.split(" = ") for line in cfg["options"]["package_dir"].strip().splitlines())
    assert mapping == {f"ganstack.{t}": t for t in FOLDERS}


def test_no_code_imports_the_bare_folder_names():
    bad = []
    pattern = re.compile(r"^\s*(from|import) (%s)\b" % "|".join(FOLDERS), re.M)
    for path in ROOT.rglob("*.py"):
        if ".git" in path.parts or "build" in path.parts:
            continue
        for m in pattern.finditer(path.read_text()):
            bad.append(f"{path.relative_to(ROOT)}: {m.group(0).strip()}")
    assert not bad, "import through the ganstack namespace instead: " + "; ".join(bad)


def test_ganstack_imports_beside_a_stylegan2_ada_checkout(tmp_path):
    # A StyleGAN2-ADA checkout has top-level `training` and `metrics` packages of its own.
    for name in ("training", "metrics", "torch_utils"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text("OFFICIAL = True\n")
    code = ("import training, metrics; assert training.OFFICIAL and metrics.OFFICIAL\n"
            "from ganstack.training.api import hookimpl\n"
            "from ganstack.api import Option, DInput\n"
            "import ganstack.training.loop, ganstack.metrics.registry\n"
            "print('ok')\n")
    env = {"PYTHONPATH": f"{tmp_path}:{ROOT}", "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, env=env)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
