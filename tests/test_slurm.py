"""Scale-out: ``ganstack ablate/train --launcher slurm`` (submitit), ``ganstack train --gpus N`` (torch.distributed.run)
and torch.distributed initialised from SLURM's environment.

Two kinds of tests:

* against a real SLURM cluster (``bash .ci/slurm-up`` starts a single-node one on localhost; CI does): a 2 x 2
  grid through a job array with one cell requeued mid-run (``scontrol requeue``), equal to the local launcher;
  a failing cell; 2-task training jobs. They are skipped, with the reason, when no cluster answers ``sinfo``.
  Run just them with ``bash .ci/slurm-up && python -m pytest -q tests/test_slurm.py``.
* the same code paths through submitit's local executor (no cluster needed), plus the small parts.
"""
from __future__ import annotations

import csv
import glob
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from conftest import state_equal
from dist_worker import assert_ranks_agree
from ganstack.training import ablate as ab
from ganstack.training import checkpoint as ckpt_io
from ganstack.training import distributed, launch

HERE = os.path.dirname(os.path.abspath(__file__))
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
ENV.pop("GANSTACK_LAUNCHED", None)
# Tiny cells: 2-D toy data, a 32-wide MLP, no per-tick scatter plots.
TOY = ["--data", "toy:gaussians25?n=2048", "--batch", "32", "--set", "mlp_hidden=32", "--set", "image_snap=1000"]
TOY_TRAIN = ["--data", "toy:gaussians25?n=2048", "--batch", "32", "--mlp-hidden", "32", "--workers", "0",
             "--kimg", "1", "--tick", "0.256", "--device", "cpu"]


def _cluster_problem():
    try:
        import submitit  # noqa: F401
    except ImportError:
        return "submitit is not installed (pip install -e '.[slurm]')"
    try:
        r = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=20)
    except FileNotFoundError:
        return "no SLURM here (sinfo not found); start a local cluster with `bash .ci/slurm-up`"
    except subprocess.TimeoutExpired:
        return "sinfo did not answer in 20 s"
    if r.returncode != 0:
        return f"no SLURM cluster answers sinfo ({r.stderr.strip()[:200]}); start one with `bash .ci/slurm-up`"
    states = r.stdout.split()
    if not any(s.rstrip("*~#").split("+")[0] in ("idle", "mixed", "allocated", "completing") for s in states):
        return f"the SLURM node is not usable (sinfo: {' '.join(states) or 'no nodes'})"
    return None


CLUSTER_PROBLEM = _cluster_problem()
needs_cluster = pytest.mark.skipif(CLUSTER_PROBLEM is not None, reason=f"real-SLURM test: {CLUSTER_PROBLEM}")
try:
    import submitit  # noqa: F401
    HAVE_SUBMITIT = True
except ImportError:
    HAVE_SUBMITIT = False
needs_submitit = pytest.mark.skipif(not HAVE_SUBMITIT, reason="submitit is not installed (pip install -e '.[slurm]')")


def ganstack(*args, env=None, timeout=900, check=True):
    r = subprocess.run([sys.executable, "-m", "ganstack", *map(str, args)], capture_output=True, text=True,
                       env=env or ENV, timeout=timeout)
    if check:
        assert r.returncode == 0, f"ganstack {' '.join(map(str, args))} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


def _rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def _final(cell_dir):
    return ckpt_io.load(ab.newest_checkpoint(cell_dir))


def _same_weights(a, b):
    return a["cur_nimg"] == b["cur_nimg"] and all(state_equal(a[k], b[k]) for k in ("G", "D", "G_ema", "G_opt", "D_opt"))


def _until(pred, timeout, what, poll=0.1):
    t0 = time.time()
    while time.time() - t0 < timeout:
        v = pred()
        if v:
            return v
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def _squeue_state(job_id):
    r = subprocess.run(["squeue", "-h", "-r", "-o", "%i %T"], capture_output=True, text=True)
    for line in r.stdout.splitlines():
        jid, _, st = line.partition(" ")
        if jid == job_id:
            return st.strip()
    return None


def _checkpoint_after_start(cell_dir, min_nimg=2000):
    """The path of a checkpoint at ``min_nimg`` or later in the cell's first run folder, if one is written."""
    for path in glob.glob(os.path.join(cell_dir, "00000-*", "network-snapshot-*.pt")):
        if ckpt_io.snapshot_nimg(path) >= min_nimg:
            return path
    return None


# ------------------------------------------------------------------------------------------------
# A real SLURM cluster

@needs_cluster
def test_slurm_grid_with_a_requeued_cell_equals_the_local_launcher(tmp_path):
    grid = ["ablate", "--stacks", "none;diffusion", "--seeds", "0-1", "--kimg", "10", "--tick", "0.5", "--snap", "4",
            *TOY]
    slurm = ["--launcher", "slurm", "--slurm-gpus-per-cell", "0", "--slurm-time", "15", "--slurm-array-parallelism", "2"]
    out = tmp_path / "slurm"
    first = ganstack(*grid, "--outdir", out, *slurm)  # submits the array and returns
    assert "Submitted 4 cell(s) as job array" in first.stdout
    jobs = json.load(open(out / "slurm" / "jobs.json"))["cells"]
    assert sorted(jobs) == ["cells/diffusion/seed0", "cells/diffusion/seed1", "cells/none/seed0", "cells/none/seed1"]
    array_ids = {j["job_id"].split("_")[0] for j in jobs.values()}
    assert len(array_ids) == 1 and sorted(j["job_id"].split("_")[1] for j in jobs.values()) == ["0", "1", "2", "3"]

    # Preempt the last cell mid-run: once it has a checkpoint past its start, requeue it as an admin would.
    victim_dir = str(out / "cells" / "diffusion" / "seed1")
    victim = jobs["cells/diffusion/seed1"]["job_id"]
    _until(lambda: _checkpoint_after_start(victim_dir), 600, f"a checkpoint of {victim_dir}")
    subprocess.run(["scontrol", "requeue", victim], check=True)
    _until(lambda: _squeue_state(victim) == "PENDING", 120, f"job {victim} to be pending again")
    # Keep it queued until the re-run below has seen it (a loaded machine must not let it finish first).
    subprocess.run(["scontrol", "hold", victim], check=True)

    status = ganstack("ablate", "--status", out).stdout
    assert "4 cells:" in status and victim in status

    # Re-running the same command collects what finished and resubmits nothing that is still queued or running.
    again_log = tmp_path / "again.log"
    with open(again_log, "w") as f:
        again = subprocess.Popen([sys.executable, "-m", "ganstack", *map(str, grid), "--outdir", str(out),
                                  *slurm, "--wait"], stdout=f, stderr=subprocess.STDOUT, text=True, env=ENV)
    _until(lambda: "still queued or running" in again_log.read_text(), 300, "the re-run to find the queued cell")
    # SLURM also holds a requeued job back for a while (BeginTime); let it start again now.
    subprocess.run(["scontrol", "release", victim], check=True)
    subprocess.run(["scontrol", "update", f"JobId={victim}", "StartTime=now"], check=True)
    assert again.wait(timeout=900) == 0, again_log.read_text()[-3000:]
    assert "Submitted" not in again_log.read_text(), again_log.read_text()
    assert "4 done" in ganstack("ablate", "--status", out).stdout

    # The requeued cell stopped with a checkpoint and resumed from it in a second run folder ...
    runs = ab.run_dirs(victim_dir)
    assert len(runs) == 2, runs
    log2 = open(os.path.join(runs[1], "log.txt")).read()
    assert "Resuming from" in log2
    resumed_at = float(log2.split("Resuming from", 1)[1].split(" at ", 1)[1].split(" kimg")[0])
    assert 0 < resumed_at < 10, "the requeue came after the cell had finished; the test did not preempt it mid-run"
    job_log = open(jobs["cells/diffusion/seed1"]["stdout"]).read()
    assert "Received SIGTERM" in job_log and "Stopped by signal after writing the checkpoint" in job_log

    # ... and the grid equals the local launcher's: the same table and bitwise the same final weights.
    local = tmp_path / "local"
    ganstack(*grid, "--outdir", local)
    assert _rows(out / "results.csv") == _rows(local / "results.csv")
    assert all(r["status"] == "done" for r in _rows(out / "results.csv"))
    for stack in ("none", "diffusion"):
        for seed in (0, 1):
            cell = os.path.join("cells", stack, f"seed{seed}")
            assert _same_weights(_final(str(out / cell)), _final(str(local / cell))), cell
    # The metric table matches exactly. The training-signals table below it averages each signal over the
    # last tick, and a resumed cell's ticks start at its resume point, so only that table may differ.
    def metric_table(path):
        return open(path).read().split("Training signals at the last tick", 1)[0]

    assert metric_table(out / "results.md") == metric_table(local / "results.md")


CRASH_PLUGIN = '''
from ganstack.api import hookimpl


class Crash:
    """Fails on the training step it is told to (a real error, not a preemption)."""

    def __init__(self):
        self.steps = 0

    @hookimpl
    def after_step(self, stats):
        self.steps += 1
        if self.steps == 3:
            raise RuntimeError("crashplug: deliberate failure at step 3")
'''


def _install_crash_plugin(root) -> dict:
    """A third-party plugin ``crash`` on PYTHONPATH (its own module and entry point), for child processes."""
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, "crashplug.py"), "wt") as f:
        f.write(CRASH_PLUGIN)
    info = os.path.join(root, "crashplug-0.1.dist-info")
    os.makedirs(info, exist_ok=True)
    with open(os.path.join(info, "METADATA"), "wt") as f:
        f.write("Metadata-Version: 2.1\nName: crashplug\nVersion: 0.1\n")
    with open(os.path.join(info, "entry_points.txt"), "wt") as f:
        f.write("[ganstack.plugins]\ncrash = crashplug:Crash\n")
    return dict(ENV, PYTHONPATH=os.pathsep.join([str(root)] + [p for p in [ENV.get("PYTHONPATH")] if p]))


def _check_failed_cell_report(out, env, crash_dir):
    status = ganstack("ablate", "--status", out, env=env).stdout
    line = [ln for ln in status.splitlines() if " crash " in f" {ln} "][0]
    assert line.split()[0] == "failed" and " log " in line, status
    log_path = line.split(" log ", 1)[1].strip()
    assert os.path.exists(log_path) and "crashplug: deliberate failure at step 3" in open(log_path).read()
    assert "RuntimeError: crashplug: deliberate failure at step 3" in status
    state = json.load(open(os.path.join(crash_dir, "cell.json")))
    assert state["status"] == "failed" and state["log"] == log_path
    md = open(os.path.join(out, "results.md")).read()
    assert "| none | 1/1 |" in md and "| crash | 0/1 |" in md and "crash seed 0 (failed)" in md
    return log_path


@needs_cluster
def test_slurm_failing_cell_is_reported_with_its_log_and_not_requeued(tmp_path):
    env = _install_crash_plugin(tmp_path / "plugin")
    out = tmp_path / "abl"
    cmd = ["ablate", "--stacks", "none;crash", "--seeds", "0", "--kimg", "0.5", "--tick", "0.128", *TOY,
           "--outdir", out, "--launcher", "slurm", "--slurm-gpus-per-cell", "0", "--slurm-time", "10", "--wait"]
    r = ganstack(*cmd, env=env, check=False)
    assert r.returncode == 1 and "1 of 2 cells failed" in r.stderr, r.stderr
    assert "1 cell(s) failed" in r.stdout and "crashplug: deliberate failure" in r.stdout
    assert "The results cover 1 of 2 cells; 1 missing" in r.stdout
    crash_dir = str(out / "cells" / "crash" / "seed0")
    _check_failed_cell_report(out, env, crash_dir)
    job = json.load(open(out / "slurm" / "jobs.json"))["cells"]["cells/crash/seed0"]
    assert job["attempts"] == 1 and _squeue_state(job["job_id"]) is None  # failed once, not requeued
    assert "Requeued" not in open(job["stdout"]).read()

    # Re-running resubmits the failed cell only (once, because the user asked), and it fails the same way.
    r2 = ganstack(*cmd, env=env, check=False)
    assert r2.returncode == 1
    assert "Skipping 1 finished cell(s)" in r2.stdout and "Submitted 1 cell(s)" in r2.stdout
    job2 = json.load(open(out / "slurm" / "jobs.json"))["cells"]["cells/crash/seed0"]
    assert job2["attempts"] == 2 and job2["job_id"] != job["job_id"]
    assert _check_failed_cell_report(out, env, crash_dir) != job["stderr"]


@pytest.fixture(scope="module")
def torchrun_reference(tmp_path_factory):
    """``ganstack train --gpus 2 --device cpu``: two Gloo ranks under torch.distributed.run."""
    out = tmp_path_factory.mktemp("torchrun")
    r = ganstack("train", *TOY_TRAIN, "--outdir", out, "--gpus", "2")
    assert "torch.distributed.run" in r.stdout
    (run,) = glob.glob(str(out / "0*"))
    return run


def _check_like_torchrun(out, reference):
    runs = glob.glob(os.path.join(str(out), "0*"))
    assert len(runs) == 1, runs  # rank 0 alone made a run folder
    opts = json.load(open(os.path.join(runs[0], "training_options.json")))
    assert opts["world_size"] == 2
    a = ckpt_io.load(ckpt_io.list_snapshots(runs[0])[-1])
    b = ckpt_io.load(ckpt_io.list_snapshots(reference)[-1])
    assert _same_weights(a, b)
    assert len(a["rng"]) == 2  # both ranks' random states are in the checkpoint
    stats = [json.loads(x) for x in open(os.path.join(runs[0], "stats.jsonl"))]
    ref = [json.loads(x) for x in open(os.path.join(reference, "stats.jsonl"))]
    drop = ("Timing", "Resources", "timestamp")
    strip = [[{k: v for k, v in s.items() if not k.startswith(drop)} for s in x] for x in (stats, ref)]
    assert strip[0] == strip[1]  # the all-reduced statistics, tick by tick


@needs_cluster
def test_slurm_two_task_training_job_matches_torchrun(tmp_path, torchrun_reference):
    out = tmp_path / "runs"
    r = ganstack("train", *TOY_TRAIN, "--outdir", out, "--launcher", "slurm", "--nodes", "1", "--gpus", "2",
                 "--slurm-time", "10", "--wait")
    assert "1 node(s) x 2 task(s)" in r.stdout and "finished" in r.stdout
    _check_like_torchrun(out, torchrun_reference)


@needs_cluster
def test_srun_two_tasks_join_one_process_group_from_slurm_env():
    """As tests/test_distributed.py, with the process group initialised from SLURM's variables (no torchrun)."""
    r = subprocess.run(["srun", "--ntasks=2", "--time=5", "--kill-on-bad-exit=1", sys.executable,
                        os.path.join(HERE, "dist_worker.py")], capture_output=True, text=True, env=ENV, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert_ranks_agree(r.stdout)


# ------------------------------------------------------------------------------------------------
# The same code paths through submitit's local executor (no cluster)

TINY = dict(data="toy:gaussians25?n=2048", kimg=12.0, tick=0.5, snap=4, batch=32, mlp_hidden=32, workers=0,
            image_snap=1000)


def _children(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


@needs_submitit
def test_local_executor_cells_checkpoint_on_usr2_requeue_and_equal_in_process_cells(tmp_path, monkeypatch):
    """submitit's timeout path: USR2 to the task, the child checkpoints, the job requeues and resumes exactly."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    opts = launch.SlurmOptions(cluster="local", time="15", gpus=0)
    out = str(tmp_path / "local-executor")
    logs = []
    try:
        ab.ablate(out, ["none"], [0, 1], dict(TINY), launcher=launch.SlurmCellLauncher(opts, poll_s=0.5),
                  log=logs.append)
        assert any("Submitted 2 cell(s)" in m for m in logs)
        jobs = launch.read_jobs(out)
        assert jobs["cluster"] == "local"
        victim = jobs["cells"]["cells/none/seed1"]
        victim_dir = os.path.join(out, "cells", "none", "seed1")
        _until(lambda: _checkpoint_after_start(victim_dir), 300, "a checkpoint of the second cell")
        (task,) = _until(lambda: _children(int(victim["job_id"])), 10, "the task of the local job")
        os.kill(task, signal.SIGUSR2)  # what the local controller (or SLURM's --signal) sends before the limit

        opts.wait = True
        res = ab.ablate(out, ["none"], [0, 1], dict(TINY), launcher=launch.SlurmCellLauncher(opts, poll_s=0.5),
                        log=logs.append)
    finally:
        for job in launch._LOCAL_JOBS.values():
            if not job.done():
                job.cancel()
    assert res["missing"] == 0 and not any(res["errors"].values())
    log = open(victim["stdout"]).read()
    assert "Caught signal SIGUSR2" in log and "Calling checkpoint method" in log and "Requeued job" in log
    assert "exit code 143 before the requeue" in log
    runs = ab.run_dirs(victim_dir)
    assert len(runs) == 2 and "Resuming from" in open(os.path.join(runs[1], "log.txt")).read()

    # The same cells trained in this process, uninterrupted: bitwise the same, the same table.
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ref = ab.ablate(str(tmp_path / "in-process"), ["none"], [0, 1], dict(TINY), log=lambda *_: None)
    finally:
        torch.set_num_threads(torch_threads)
    for c_sub, c_ref in zip(res["cells"], ref["cells"]):
        assert _same_weights(_final(c_sub.dir), _final(c_ref.dir)), c_sub.dir
    assert _rows(res["csv"]) == _rows(ref["csv"])
    st = launch.cell_statuses(out, res["cells"])
    assert [s.status for s in st] == ["done", "done"]


@needs_submitit
def test_local_executor_failing_cell_is_reported(tmp_path):
    env = _install_crash_plugin(tmp_path / "plugin")
    env["GANSTACK_SUBMITIT_CLUSTER"] = "local"
    out = tmp_path / "abl"
    cmd = ["ablate", "--stacks", "none;crash", "--seeds", "0", "--kimg", "0.5", "--tick", "0.128", *TOY,
           "--outdir", out, "--launcher", "slurm", "--slurm-gpus-per-cell", "0", "--slurm-time", "10", "--wait"]
    r = ganstack(*cmd, env=env, check=False)
    assert r.returncode == 1 and "1 of 2 cells failed" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert "1 cell(s) failed" in r.stdout and "crashplug: deliberate failure" in r.stdout
    _check_failed_cell_report(out, env, str(out / "cells" / "crash" / "seed0"))
    assert json.load(open(out / "slurm" / "jobs.json"))["cells"]["cells/crash/seed0"]["attempts"] == 1


@needs_submitit
def test_local_executor_two_task_training_job_matches_torchrun(tmp_path, torchrun_reference):
    out = tmp_path / "runs"
    env = dict(ENV, GANSTACK_SUBMITIT_CLUSTER="local")
    r = ganstack("train", *TOY_TRAIN, "--outdir", out, "--launcher", "slurm", "--gpus", "2", "--slurm-time", "10",
                 "--wait", env=env)
    assert "1 node(s) x 2 task(s)" in r.stdout and "finished" in r.stdout
    _check_like_torchrun(out, torchrun_reference)


def test_gpus_on_one_node_stops_all_ranks_with_a_checkpoint_on_ctrl_c(tmp_path):
    out = str(tmp_path / "runs")
    args = [sys.executable, "-m", "ganstack", "train", *TOY_TRAIN[:-6], "--kimg", "200", "--tick", "1",
            "--snap", "1000", "--device", "cpu", "--outdir", out, "--gpus", "2"]
    log = open(tmp_path / "out.txt", "w")
    proc = subprocess.Popen(args, env=ENV, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        stats = _until(lambda: glob.glob(os.path.join(out, "0*", "stats.jsonl")), 300, "training to start")
        _until(lambda: len(open(stats[0]).readlines()) >= 2, 300, "two ticks")
        os.killpg(proc.pid, signal.SIGINT)  # a terminal's Ctrl-C reaches the whole foreground group
        code = proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    text = open(tmp_path / "out.txt").read()
    assert code == 128 + signal.SIGINT, text[-3000:]
    assert text.count("Received SIGTERM") == 1 and "Stopped by signal after writing the checkpoint" in text
    run = glob.glob(os.path.join(out, "0*"))[0]
    nimg = [ckpt_io.snapshot_nimg(p) for p in ckpt_io.list_snapshots(run)]
    assert 0 < max(nimg) < 200_000  # a checkpoint at the stop, before the end
    assert len(ckpt_io.load(ckpt_io.list_snapshots(run)[-1])["rng"]) == 2


# ------------------------------------------------------------------------------------------------
# Small parts

def test_slurm_env_gives_torchrun_variables_only_inside_a_multi_task_step():
    step = dict(SLURM_STEP_NUM_TASKS="4", SLURM_NTASKS="4", SLURM_PROCID="3", SLURM_LOCALID="1", SLURM_JOB_ID="1234",
                SLURM_STEP_NODELIST="gpu[07-08]", SLURM_NTASKS_PER_NODE="2")
    env = distributed.slurm_env(step)
    assert env == dict(RANK="3", WORLD_SIZE="4", LOCAL_RANK="1", LOCAL_WORLD_SIZE="2", MASTER_ADDR="gpu07",
                       MASTER_PORT=str(20000 + 1234 * 7 % 20000))
    assert distributed.slurm_env(dict(step, SLURM_RESTART_COUNT="1"))["MASTER_PORT"] != env["MASTER_PORT"]
    assert distributed.slurm_env(dict(step, MASTER_PORT="29999", MASTER_ADDR="head"))["MASTER_ADDR"] == "head"
    # A batch script (no step) or a one-task step is not distributed, whatever --ntasks says.
    assert distributed.slurm_env(dict(SLURM_NTASKS="4", SLURM_PROCID="0", SLURM_JOB_ID="1")) == {}
    assert distributed.slurm_env(dict(step, SLURM_STEP_NUM_TASKS="1")) == {}
    assert [distributed.first_host(x) for x in ("vm", "n[001-004]", "a[1,3]b,c", "x,y[1-2]")] == ["vm", "n001", "a1b", "x"]


def test_slurm_time_extra_and_option_errors():
    assert [launch.parse_slurm_time(t) for t in ("90", "4:00:00", "1-12:00:00", "30:30", "2-3", "0:0:59")] == \
        [90, 240, 2160, 31, 3060, 1]
    for bad in ("", "1h", "0", "-3"):
        with pytest.raises(launch.ConfigError, match="time"):
            launch.parse_slurm_time(bad)
    assert launch.parse_extra(["qos=high", "--mail-type=END", "cpus_per_task=8"]) == dict(
        qos="high", mail_type="END", cpus_per_task=8)
    with pytest.raises(launch.ConfigError, match="KEY=VALUE"):
        launch.parse_extra(["qos"])
    with pytest.raises(launch.ConfigError, match="needs --launcher slurm"):
        launch.wants_launch(dict(launcher="local", nodes=2))
    with pytest.raises(launch.ConfigError, match="--wait is for --launcher slurm"):
        launch.wants_launch(dict(launcher="local", wait=True))
    assert not launch.wants_launch(dict(launcher="local", gpus=1))
    assert launch.wants_launch(dict(launcher="local", gpus=2))


@needs_submitit
def test_sbatch_script_of_a_cell_array(tmp_path):
    """What submitit hands sbatch for --slurm-* (written, not submitted)."""
    from submitit.slurm.slurm import _make_sbatch_string

    opts = launch.SlurmOptions(partition="gpu", time="1-00:00:00", gpus=2, array_parallelism=3,
                               extra=launch.parse_extra(["qos=high", "cpus_per_task=8", "mail-type=END"]))
    ex = opts.executor(str(tmp_path / "%j"), name="ganstack-ablate-x", tasks_per_node=2, gpus_per_node=2)
    text = _make_sbatch_string(command="true", folder=ex.folder, map_count=5, **ex.parameters)
    for line in ("--partition=gpu", "--time=1440", "--gpus-per-node=2", "--ntasks-per-node=2", "--qos=high",
                 "--cpus-per-task=8", "--mail-type=END", "--array=0-4%3", "--signal=USR2@90", "--job-name=ganstack-ablate-x"):
        assert f"#SBATCH {line}" in text, (line, text)


def test_train_command_line_is_rebuilt_without_launcher_flags():
    import click

    from ganstack.training.cli import build_cli

    cli = build_cli()
    train = cli.commands["train"]
    ctx = train.make_context("train", ["--data", "toy:ring8", "--kimg", "2", "--cond", "--gpus", "2", "--launcher",
                                       "slurm", "--slurm-extra", "qos=x", "--wait", "--outdir", "o"])
    args = launch.command_line(ctx)
    assert args == ["--data", "toy:ring8", "--kimg", "2.0", "--cond", "--outdir", "o"]
    assert isinstance(ctx, click.Context)


def test_status_of_a_local_ablation_and_of_a_lost_job(tmp_path):
    out = str(tmp_path / "abl")
    ab.ablate(out, ["none"], [0, 1], dict(TINY, kimg=0.128, tick=0.128), log=lambda *_: None)
    lines = []
    st = launch.print_status(out, log=lines.append)
    assert [s.status for s in st] == ["done", "done"] and "2 cells: 2 done" in lines[0]
    # A cell whose job left the queue without finishing is "interrupted", with its log.
    cell = st[1].cell
    ab._write_cell(cell.dir, dict(ab._read_cell(cell.dir), status="running"))
    launch._atomic_json(os.path.join(out, "slurm", launch.JOBS_FILE), dict(cluster="local", cells={
        "cells/none/seed1": dict(job_id="999999999", stderr="/x/err", stdout="/x/out")}))
    lines = []
    st = launch.print_status(out, log=lines.append)
    assert [s.status for s in st] == ["done", "interrupted"]
    text = lines[0].splitlines()
    assert text[0].endswith("2 cells: 1 done, 1 interrupted")
    assert text[2].split()[0] == "interrupted" and "job 999999999" in text[2] and "log /x/err" in text[2]
    with pytest.raises(launch.ConfigError, match="not an ablation folder"):
        launch.print_status(str(tmp_path / "nothing"))
