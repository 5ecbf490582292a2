"""Where training processes run: here, under ``torch.distributed.run`` on this node, or on SLURM.

Launchers are thin. ganstack writes no scheduler: SLURM jobs and job arrays go through
`submitit <https://github.com/facebookincubator/submitit>`_ (``pip install 'ganstack[slurm]'``), and
several processes on one node through ``torch.distributed.run`` (what ``torchrun`` runs).

* ``ganstack train ... --gpus N`` on one node spawns ``python -m torch.distributed.run --standalone
  --nproc_per_node=N -m ganstack train ...``: the very path ``torchrun`` takes.
* ``ganstack train ... --launcher slurm --nodes M --gpus N`` submits one SLURM job of M x N tasks. Each
  task runs ``python -m ganstack train ...``; :func:`ganstack.training.distributed.init_from_env`
  joins the process group from SLURM's variables (rank, world size, first node as master).
* ``ganstack ablate ... --launcher slurm`` submits the unfinished cells as one job array, one cell per
  array task (:class:`SlurmCellLauncher`); ``--launcher local`` (the default) runs them here
  (:class:`LocalCellLauncher`).

**Preemption, time limits, requeue.** Every SLURM task is a small supervisor process (a
``submitit.helpers.Checkpointable``) that runs the training in a child process and waits for it:

* Time limit: submitit asks SLURM for ``--signal=USR2@90``. SLURM signals every process of the job;
  the child ignores USR2 (it is started with USR2 ignored) and the supervisor's submitit handler calls
  :meth:`SupervisedJob.checkpoint`, which sends the child one SIGTERM and waits. ganstack's loop
  finishes its step, writes a checkpoint and exits with 143; only then does submitit requeue the job.
* Preemption, ``scontrol requeue``, ``scancel``: SLURM sends SIGTERM to every process of the job. The
  child writes its checkpoint and exits 143 as above; submitit's supervisor ignores SIGTERM and exits
  after it. A requeued job starts the supervisor again, which resumes from the newest checkpoint
  (``--resume``), bitwise exactly.
* A real error (the child exits with another code) is not requeued: the cell is marked ``failed`` in
  its ``cell.json`` with the error and the path of its log, and the job ends FAILED.

State lives on disk, not in the scheduler (``squeue`` forgets finished jobs within ``MinJobAge``, and
``sacct`` needs an accounting database that many small clusters do not run): a cell is done when its
``cell.json`` says so; ``<outdir>/slurm/jobs.json`` maps each cell to its newest job and log files.
"""
from __future__ import annotations

import getpass
import json
import math
import os
import pickle
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Optional

import click

from ganstack.training.api import ConfigError

LAUNCHERS = ("local", "slurm")
JOBS_FILE = "jobs.json"
STOP_CODES = (128 + signal.SIGTERM, 128 + signal.SIGINT, 128 + signal.SIGUSR1)  # the loop's "checkpoint written, stopped"
DEFAULT_TIME = "4:00:00"
SLURM_LIVE = {  # squeue %T -> what a cell is doing
    "PENDING": "queued", "REQUEUED": "queued", "REQUEUE_HOLD": "queued", "REQUEUE_FED": "queued",
    "RESV_DEL_HOLD": "queued", "SUSPENDED": "queued", "CONFIGURING": "running", "RUNNING": "running",
    "COMPLETING": "running", "SIGNALING": "running", "STAGE_OUT": "running", "STOPPED": "running",
    "RESIZING": "running", "PREEMPTED": "queued",
}


def require_submitit():
    try:
        import submitit
    except ImportError:
        raise ConfigError("--launcher slurm needs submitit: pip install 'ganstack[slurm]' "
                          "(or run without --launcher slurm to train here).") from None
    return submitit


# ------------------------------------------------------------------------------------------------
# Options shared by `ganstack train` and `ganstack ablate`

def parse_slurm_time(text) -> int:
    """SLURM's time formats (``90``, ``MM:SS``, ``HH:MM:SS``, ``D-HH``, ``D-HH:MM``, ``D-HH:MM:SS``)
    in whole minutes, rounded up."""
    s = str(text).strip()
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", s)
    if not m or not s:
        raise ConfigError(f"--slurm-time {text!r} is not a SLURM time limit; write minutes (90), HH:MM:SS "
                          f"(4:00:00) or D-HH:MM:SS (1-12:00:00).")
    days, a, b, c = m.groups()
    if days is not None:  # D-HH[:MM[:SS]]
        secs = int(days) * 86400 + int(a) * 3600 + int(b or 0) * 60 + int(c or 0)
    elif c is not None:  # HH:MM:SS
        secs = int(a) * 3600 + int(b) * 60 + int(c)
    elif b is not None:  # MM:SS
        secs = int(a) * 60 + int(b)
    else:
        secs = int(a) * 60
    if secs <= 0:
        raise ConfigError(f"--slurm-time {text!r} is zero; give the time limit of one job, e.g. 4:00:00.")
    return max(1, math.ceil(secs / 60))


def parse_extra(items) -> dict:
    """``--slurm-extra KEY=VALUE`` -> ``{key: value}`` (``mail-type`` and ``mail_type`` alike)."""
    out = {}
    for text in items or ():
        key, sep, value = str(text).partition("=")
        key = key.strip().lstrip("-").replace("-", "_")
        if not sep or not key:
            raise ConfigError(f"--slurm-extra {text!r} is not KEY=VALUE (for example --slurm-extra qos=high "
                              f"or --slurm-extra cpus_per_task=8).")
        value = value.strip()
        out[key] = int(value) if re.fullmatch(r"\d+", value) else value
    return out


@dataclass
class SlurmOptions:
    partition: Optional[str] = None
    time: str = DEFAULT_TIME
    gpus: int = 0                  # per cell (ablate) or per node (train)
    array_parallelism: Optional[int] = None
    extra: dict = field(default_factory=dict)
    wait: bool = False
    cluster: str = "slurm"         # "local": submitit's LocalExecutor (tests, a machine without SLURM)
    max_num_timeout: int = 20      # requeues after a time limit (each one resumes, so progress is kept)

    def executor(self, folder: str, name: str, nodes: int = 1, tasks_per_node: int = 1, gpus_per_node: int = 0):
        """A submitit executor with these options; SLURM's own keys in ``extra`` go to sbatch."""
        submitit = require_submitit()
        timeout_min = parse_slurm_time(self.time)
        if self.cluster == "local":
            ex = submitit.LocalExecutor(folder, max_num_timeout=self.max_num_timeout)
            params = dict(timeout_min=timeout_min, tasks_per_node=tasks_per_node, gpus_per_node=gpus_per_node)
            params.update({k: v for k, v in self.extra.items() if k in ("signal_delay_s", "timeout_min", "setup")})
            ex.update_parameters(**params)
            return ex
        if self.cluster != "slurm":
            raise ConfigError(f"Unknown submitit cluster {self.cluster!r}; use slurm or local.")
        try:
            ex = submitit.SlurmExecutor(folder, max_num_timeout=self.max_num_timeout)
        except RuntimeError as exc:  # no srun on PATH
            raise ConfigError(f"--launcher slurm: {exc} (sbatch/srun/squeue must be on PATH; "
                              f"on a machine without SLURM use --launcher local).") from None
        valid = ex._valid_parameters()
        params = dict(job_name=name, time=timeout_min, nodes=nodes, ntasks_per_node=tasks_per_node)
        if gpus_per_node:
            params["gpus_per_node"] = gpus_per_node
        if self.partition:
            params["partition"] = self.partition
        if self.array_parallelism:
            params["array_parallelism"] = int(self.array_parallelism)
        additional = {}
        for key, value in self.extra.items():
            if key in valid:
                params[key] = value
            else:
                additional[key.replace("_", "-")] = value
        if additional:
            params["additional_parameters"] = additional
        try:
            ex.update_parameters(**params)
        except ValueError as exc:
            raise ConfigError(f"--slurm-extra: {str(exc).splitlines()[0]}") from None
        return ex


def _slurm_option_specs(for_ablate: bool) -> list:
    """``(declarations, click keyword arguments)`` of the ``--launcher`` and ``--slurm-*`` flags."""
    specs = [
        (["--launcher"], dict(type=click.Choice(LAUNCHERS), default="local", show_default=True,
                              help="Where to run: here, or SLURM through submitit (pip install 'ganstack[slurm]').")),
        (["--slurm-partition"], dict(default=None, help="SLURM partition [default: the cluster's].")),
        (["--slurm-time"], dict(default=DEFAULT_TIME, show_default=True,
                                help="Time limit of one job; at the limit it checkpoints and is requeued.")),
        (["--slurm-extra"], dict(multiple=True, metavar="KEY=VALUE",
                                 help="Any other sbatch option, e.g. qos=high, account=lab, cpus_per_task=8, "
                                      "mem=32G, signal_delay_s=120 (repeatable).")),
        (["--wait"], dict(is_flag=True, default=False,
                          help="With --launcher slurm: wait for the job(s) to end, then report.")),
    ]
    if for_ablate:
        specs += [
            (["--slurm-gpus-per-cell"], dict(type=int, default=1, show_default=True,
                                             help="GPUs of each cell (one task per GPU; 0 = a CPU cell).")),
            (["--slurm-array-parallelism"], dict(type=int, default=None,
                                                 help="At most this many cells run at once [default: all].")),
            (["--status", "status_dir"], dict(default=None, metavar="OUTDIR",
                                              help="Show the cells of an ablation folder (done, running, queued, "
                                                   "failed with their logs) and exit.")),
        ]
    return specs


def ablate_options(f):
    """Decorator: the launcher flags of ``ganstack ablate``."""
    for decls, kw in reversed(_slurm_option_specs(for_ablate=True)):
        f = click.option(*decls, **kw)(f)
    return f


def slurm_options_from(kwargs: dict, gpus: int, cluster: Optional[str] = None) -> SlurmOptions:
    return SlurmOptions(partition=kwargs.get("slurm_partition"), time=kwargs.get("slurm_time") or DEFAULT_TIME,
                        gpus=gpus, array_parallelism=kwargs.get("slurm_array_parallelism"),
                        extra=parse_extra(kwargs.get("slurm_extra")), wait=bool(kwargs.get("wait")),
                        cluster=cluster or os.environ.get("GANSTACK_SUBMITIT_CLUSTER", "slurm"))


# ------------------------------------------------------------------------------------------------
# A child process that several code paths (the main thread, a signal handler) may wait for

class Child:
    """A child process reaped with ``os.waitpid`` only, so that a signal handler may wait for it while
    the main thread is waiting too (``Popen.wait`` holds a lock a handler would deadlock on)."""

    def __init__(self, argv, env=None, cwd=None):
        # SLURM signals every process of the job; the supervisor decides what submitit's signal means.
        preempt = getattr(signal, "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2"), signal.SIGUSR2)

        def ignore_preempt_signal():
            signal.signal(preempt, signal.SIG_IGN)
        self.proc = subprocess.Popen(argv, env=env, cwd=cwd, preexec_fn=ignore_preempt_signal)
        self.pid = self.proc.pid
        self.returncode: Optional[int] = None

    def poll(self) -> Optional[int]:
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:  # reaped by the other waiter
                return self.returncode
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
                if self.returncode < 0:  # killed by a signal: report it as a shell does
                    self.returncode = 128 - self.returncode
                self.proc.returncode = self.returncode
        return self.returncode

    def wait(self, poll_s: float = 0.2) -> int:
        while self.poll() is None:
            time.sleep(poll_s)
        return self.returncode

    def stop(self) -> int:
        """One SIGTERM (the loop checkpoints and exits), then wait."""
        if self.poll() is None:
            try:
                os.kill(self.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        return self.wait()


def _job_environment():
    """``(job id, global rank, stdout path, stderr path)`` of the submitit task we run in."""
    import submitit
    env = submitit.JobEnvironment()
    paths = env.paths
    return env.job_id, env.global_rank, str(paths.stdout), str(paths.stderr)


def _child_env() -> dict:
    env = dict(os.environ, PYTHONUNBUFFERED="1", GANSTACK_LAUNCHED="1")
    cpus = os.environ.get("SLURM_CPUS_PER_TASK")
    if cpus and "OMP_NUM_THREADS" not in os.environ:
        env["OMP_NUM_THREADS"] = cpus
    if os.environ.get("SUBMITIT_EXECUTOR") == "local":
        # submitit's local executor sets no SLURM variables: hand the child torchrun's instead.
        import submitit
        jenv = submitit.JobEnvironment()
        if jenv.num_tasks > 1:
            d = submitit.helpers.TorchDistributedEnvironment()
            env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(d.master_port), RANK=str(d.rank),
                       WORLD_SIZE=str(d.world_size), LOCAL_RANK=str(d.local_rank),
                       LOCAL_WORLD_SIZE=str(d.local_world_size))
    return env


try:
    from submitit.helpers import Checkpointable as _Checkpointable
except ImportError:  # submitit is optional; the SLURM classes are only built when it is installed
    class _Checkpointable:
        pass


class SupervisedJob(_Checkpointable):
    """A submitit task that runs ``command()`` in a child process and turns SLURM's signals into
    ganstack's checkpoint-and-stop (see the module docstring)."""

    def __init__(self, cwd: str):
        self.cwd = cwd
        self._child: Optional[Child] = None
        self._stopping = False

    def command(self) -> list:
        raise NotImplementedError

    def finished(self, code: int):
        """Called with the child's exit code; returns the task's result or raises."""
        raise NotImplementedError

    def __call__(self):
        self._child = None
        self._stopping = False
        argv = self.command()
        if argv is None:  # nothing to do (the work is already done)
            return self.finished(0)
        if self._stopping:
            raise SystemExit(128 + signal.SIGTERM)
        self._child = Child(argv, env=_child_env(), cwd=self.cwd)
        code = self._child.wait()
        return self.finished(code)

    def checkpoint(self, *args, **kwargs):
        """submitit's timeout/preemption handler (rank 0 only): make the child checkpoint, then requeue."""
        from submitit.helpers import DelayedSubmission
        self._stopping = True
        code = self._child.stop() if self._child is not None else 0
        print(f"ganstack: the training process stopped with exit code {code} before the requeue.", flush=True)
        if code not in (0,) + STOP_CODES:
            return None  # a real error: submitit reports the job as failed instead of requeuing it
        return DelayedSubmission(self, *args, **kwargs)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_child"] = None
        return state


# ------------------------------------------------------------------------------------------------
# Ablation cells

CELL_BUSY_CODE = 75  # the cell child's exit status when another process holds the cell (EX_TEMPFAIL)


def _cell_key(outdir: str, cell) -> str:
    return os.path.relpath(cell.dir, outdir)


class CellJob(SupervisedJob):
    """One ablation cell as a submitit task: ``python -m ganstack.training.launch cell SPEC``."""

    def __init__(self, cell, settings: dict, device: Optional[str], cwd: str):
        super().__init__(cwd)
        self.cell = cell
        self.settings = dict(settings)
        self.device = device

    def command(self):
        from ganstack.training import ablate as ab
        if ab._read_cell(self.cell.dir).get("status") == "done":
            return None
        os.makedirs(self.cell.dir, exist_ok=True)
        spec = os.path.join(self.cell.dir, "launch-spec.pkl")
        tmp = f"{spec}.tmp-{os.getpid()}"
        with open(tmp, "wb") as f:
            pickle.dump(dict(cell=self.cell, settings=self.settings, device=self.device), f)
        os.replace(tmp, spec)
        return [sys.executable, "-m", "ganstack.training.launch", "cell", spec]

    def finished(self, code: int):
        from ganstack.training import ablate as ab
        job_id, rank, out, err = _job_environment()
        state = ab._read_cell(self.cell.dir)
        if code == 0 and state.get("status") == "done":
            return "done"
        if code == CELL_BUSY_CODE:  # another ablation trains this cell: leave its cell.json alone
            raise RuntimeError(f"cell {self.cell.stack.label} seed {self.cell.seed} was not run: another process is "
                               f"training it ({self.cell.dir}/{ab.LOCK_FILE} is locked). Re-run the command after "
                               f"that one ends to collect it. Log: {err}")
        if code in STOP_CODES:
            print(f"ganstack: cell {self.cell.dir} stopped by a signal after writing its checkpoint; a requeued or "
                  f"resubmitted job resumes it.", flush=True)
            raise SystemExit(code)
        if rank == 0:
            error = state.get("error") if state.get("status") == "failed" else None
            error = error or (f"the training process exited with code {code}"
                              + (f" (killed by {signal.Signals(code - 128).name})" if 128 < code < 160 else ""))
            ab._write_cell(self.cell.dir, dict(state, status="failed", error=error, log=err, stdout=out,
                                               job_id=job_id, finished=time.time()))
        raise RuntimeError(f"cell {self.cell.stack.label} seed {self.cell.seed} failed: "
                           f"{ab._read_cell(self.cell.dir).get('error')}. Log: {err}")


def _run_cell_child(spec_path: str) -> int:
    """The child of a :class:`CellJob`: train the cell, record a failure in its ``cell.json``."""
    import traceback

    from ganstack.training import ablate as ab

    with open(spec_path, "rb") as f:
        spec = pickle.load(f)
    cell = spec["cell"]
    try:
        ab.run_cell(cell, spec["settings"], device=spec["device"])
    except ab.CellBusy as exc:
        print(f"ganstack: {exc}", flush=True)
        return CELL_BUSY_CODE
    except SystemExit:
        raise
    except KeyboardInterrupt:
        return 128 + signal.SIGINT
    except Exception as exc:  # noqa: BLE001 - recorded for --status, then reported by the supervisor
        traceback.print_exc()
        ab._write_cell(cell.dir, dict(ab._read_cell(cell.dir), status="failed",
                                      error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc()))
        return 1
    return 0


class LocalCellLauncher:
    """Today's behaviour: cells run in this process, or ``jobs`` at a time in worker processes."""

    def __init__(self, jobs: int = 1, devices=None):
        self.jobs = jobs
        self.devices = devices

    def run(self, cells, settings: dict, outdir: str, log=click.echo) -> dict:
        from ganstack.training.ablate import run_grid
        return run_grid(cells, settings, jobs=self.jobs, devices=self.devices, log=log)


def _atomic_json(path: str, data) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wt") as f:
        json.dump(data, f, indent=2)
    os.replace(tmp, path)


def read_jobs(outdir: str) -> dict:
    try:
        with open(os.path.join(outdir, "slurm", JOBS_FILE)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


_LOCAL_JOBS: dict = {}  # submitit LocalJob objects submitted by this process, by job id


def queue_states(job_ids, cluster: str = "slurm") -> dict:
    """``{job id: "queued" | "running"}`` for the jobs that are still in the queue."""
    job_ids = [j for j in job_ids if j]
    if not job_ids:
        return {}
    if cluster == "local":
        out = {}
        for j in job_ids:
            base = j.split("_")[0]
            job = _LOCAL_JOBS.get(base)
            if job is not None:
                alive = not job.done()
            else:
                try:
                    with open(f"/proc/{int(base)}/stat") as f:
                        alive = f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
                except (OSError, ValueError, IndexError):
                    alive = False
            if alive:
                out[j] = "running"
        return out
    try:
        user = getpass.getuser()
    except Exception:  # noqa: BLE001
        user = None
    cmd = ["squeue", "-h", "-r", "-o", "%i|%T"] + (["-u", user] if user else [])
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ConfigError(f"Could not ask SLURM for the queue ({' '.join(cmd)}): {exc}") from None
    if r.returncode != 0:
        raise ConfigError(f"Could not ask SLURM for the queue ({' '.join(cmd)}): {r.stderr.strip()}")
    states = {}
    for line in r.stdout.splitlines():
        jid, _, st = line.strip().partition("|")
        states[jid] = SLURM_LIVE.get(st.strip().split()[0] if st.strip() else "", None)
    return {j: states[j] for j in job_ids if states.get(j)}


@dataclass
class CellStatus:
    cell: object
    status: str            # done | running | queued | failed | interrupted | not run
    job_id: Optional[str] = None
    log: Optional[str] = None
    error: Optional[str] = None


def cell_statuses(outdir: str, cells, jobs: Optional[dict] = None, strict: bool = True) -> list[CellStatus]:
    """What each cell is doing: its ``cell.json`` (done/failed) and, for submitted cells, the queue.

    When the queue cannot be read, ``strict`` raises (nothing may be resubmitted blindly); otherwise the
    submitted cells that are not finished are reported as ``unknown``.
    """
    from ganstack.training.ablate import _read_cell

    jobs = read_jobs(outdir) if jobs is None else jobs
    recorded = jobs.get("cells", {})
    queue_error = None
    try:
        live = queue_states([recorded.get(_cell_key(outdir, c), {}).get("job_id") for c in cells],
                            jobs.get("cluster", "slurm")) if recorded else {}
    except ConfigError as exc:
        if strict:
            raise
        live, queue_error = {}, str(exc)
    out = []
    for c in cells:
        state = _read_cell(c.dir)
        rec = recorded.get(_cell_key(outdir, c), {})
        jid = rec.get("job_id")
        st = state.get("status")
        if st == "done":
            out.append(CellStatus(c, "done", jid, rec.get("stderr")))
        elif jid and jid in live:
            out.append(CellStatus(c, live[jid], jid, rec.get("stderr")))
        elif st == "failed":
            out.append(CellStatus(c, "failed", state.get("job_id", jid), state.get("log", rec.get("stderr")),
                                  state.get("error")))
        elif jid and queue_error:
            out.append(CellStatus(c, "unknown", jid, rec.get("stderr"), queue_error))
        elif jid:
            # Submitted, no longer in the queue, neither done nor failed: cancelled, killed, or lost with its node.
            out.append(CellStatus(c, "interrupted", jid, rec.get("stderr"),
                                  f"job {jid} left the queue before the cell finished"))
        else:
            out.append(CellStatus(c, st or "not run", None, None))
    return out


def format_status(statuses: list[CellStatus], outdir: str) -> str:
    counts = {}
    for s in statuses:
        counts[s.status] = counts.get(s.status, 0) + 1
    order = ["done", "running", "queued", "failed", "interrupted", "unknown", "not run"]
    head = ", ".join(f"{counts[k]} {k}" for k in order if counts.get(k)) or "no cells"
    lines = [f"{outdir}: {len(statuses)} cells: {head}"]
    w = max((len(s.cell.stack.label) for s in statuses), default=5)
    for s in statuses:
        line = f"  {s.status:<11s} {s.cell.stack.label:<{w}s}  seed {s.cell.seed:<4d}"
        if s.job_id:
            line += f"  job {s.job_id}"
        if s.status in ("failed", "interrupted") and s.log:
            line += f"  log {s.log}"
        lines.append(line)
        if s.status in ("failed", "unknown") and s.error:
            lines.append(f"      {s.error}")
    return "\n".join(lines)


class SlurmCellLauncher:
    """Cells as one SLURM job array (one cell per array task) through submitit.

    ``run`` submits every cell that is neither done nor still queued/running (so re-running the same
    ``ganstack ablate`` command resubmits exactly the unfinished and failed cells), then returns, or
    with ``wait`` polls until none of the grid's jobs is left in the queue.
    """

    def __init__(self, options: SlurmOptions, poll_s: float = 5.0):
        self.options = options
        self.poll_s = poll_s

    def run(self, cells, settings: dict, outdir: str, log=click.echo) -> dict:
        opts = self.options
        jobs = read_jobs(outdir)
        if jobs.get("cells") and jobs.get("cluster", "slurm") != opts.cluster:
            jobs = {}
        jobs.setdefault("cluster", opts.cluster)
        recorded = jobs.setdefault("cells", {})
        statuses = cell_statuses(outdir, cells, jobs)
        done = [s for s in statuses if s.status == "done"]
        busy = [s for s in statuses if s.status in ("queued", "running")]
        todo = [s for s in statuses if s.status not in ("done", "queued", "running")]
        if done:
            log(f"Skipping {len(done)} finished cell(s).")
        if busy:
            log(f"{len(busy)} cell(s) still queued or running: " + ", ".join(
                f"{s.cell.stack.label} seed {s.cell.seed} (job {s.job_id})" for s in busy))
        if todo:
            gpus = max(0, int(opts.gpus))
            tasks = max(1, gpus)
            device = None if gpus else "cpu"
            folder = os.path.join(outdir, "slurm", "%j")
            ex = opts.executor(folder, name=f"ganstack-ablate-{os.path.basename(os.path.abspath(outdir))}",
                               tasks_per_node=tasks, gpus_per_node=gpus)
            fns = [CellJob(s.cell, settings, device, os.getcwd()) for s in todo]
            try:
                submitted = ex.submit_array(fns)
            except Exception as exc:  # noqa: BLE001 - sbatch's own message says what was wrong
                hint = (f" Cells ask for {gpus} GPU(s) each; for CPU cells pass --slurm-gpus-per-cell 0."
                        if gpus and "gres" in str(exc).lower() else "")
                raise ConfigError(f"Submitting {len(fns)} cell(s) to SLURM failed: {str(exc).strip()}.{hint}") from None
            now = time.time()
            for s, job in zip(todo, submitted):
                if opts.cluster == "local":
                    _LOCAL_JOBS[job.job_id.split("_")[0]] = job
                key = _cell_key(outdir, s.cell)
                attempts = recorded.get(key, {}).get("attempts", 0) + 1
                recorded[key] = dict(job_id=job.job_id, stdout=str(job.paths.stdout), stderr=str(job.paths.stderr),
                                     submitted=now, attempts=attempts, previous=s.status)
            _atomic_json(os.path.join(outdir, "slurm", JOBS_FILE), jobs)
            array = submitted[0].job_id.split("_")[0] if submitted else "?"
            what = f"job array {array}" if opts.cluster == "slurm" else "jobs of submitit's local executor"
            log(f"Submitted {len(submitted)} cell(s) as {what}: "
                + ", ".join(f"{s.cell.stack.label} seed {s.cell.seed} -> {j.job_id}" for s, j in zip(todo, submitted)))
            log(f"Logs: {os.path.join(outdir, 'slurm')}/<job>/  Status: ganstack ablate --status {outdir}")
        if opts.wait:
            statuses = self.wait(outdir, cells, log)
        else:
            statuses = cell_statuses(outdir, cells)
        for s in statuses:
            if s.status in ("failed", "interrupted"):
                log(f"  {s.status.upper()}: {s.cell.stack.label} seed {s.cell.seed} (job {s.job_id}): {s.error}\n"
                    f"    log: {s.log}")
        return {s.cell.dir: (None if s.status == "done" else
                             f"{s.error or s.status} (log: {s.log})" if s.status in ("failed", "interrupted") else s.status)
                for s in statuses if s.status in ("done", "failed", "interrupted")}

    def wait(self, outdir: str, cells, log=click.echo) -> list[CellStatus]:
        log("Waiting for the cells (Ctrl-C stops waiting; the jobs go on, and --status shows them) ...")
        last = None
        while True:
            statuses = cell_statuses(outdir, cells)
            counts = {}
            for s in statuses:
                counts[s.status] = counts.get(s.status, 0) + 1
            summary = ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
            if summary != last:
                log(f"  [{time.strftime('%H:%M:%S')}] {summary}")
                last = summary
            if not any(s.status in ("queued", "running") for s in statuses):
                return statuses
            time.sleep(self.poll_s)


def make_cell_launcher(kwargs: dict, jobs: int, devices):
    if kwargs.get("launcher", "local") == "slurm":
        require_submitit()
        options = slurm_options_from(kwargs, gpus=kwargs.get("slurm_gpus_per_cell", 1))
        parse_slurm_time(options.time)  # bad input fails before anything is trained or submitted
        return SlurmCellLauncher(options)
    if kwargs.get("wait"):
        raise ConfigError("--wait is for --launcher slurm; the local launcher always runs the cells to the end.")
    return LocalCellLauncher(jobs=jobs, devices=devices)


def print_status(outdir: str, log=click.echo) -> list[CellStatus]:
    """``ganstack ablate --status OUTDIR``."""
    from ganstack.training.ablate import StackSpec, plan

    path = os.path.join(outdir, "ablation.json")
    try:
        with open(path) as f:
            info = json.load(f)
    except (OSError, ValueError):
        raise ConfigError(f"{outdir} is not an ablation folder (no readable {path}); give the --outdir of a "
                          f"`ganstack ablate` run.") from None
    stacks = [StackSpec(list(s["plugins"]), dict(s.get("options", {}))) for s in info["stacks"]]
    cells = plan(outdir, stacks, info["seeds"])
    statuses = cell_statuses(outdir, cells, strict=False)
    log(format_status(statuses, outdir))
    return statuses


# ------------------------------------------------------------------------------------------------
# `ganstack train --gpus N` and `ganstack train --launcher slurm`

TRAIN_LAUNCH_PARAMS = ("launcher", "nodes", "gpus", "slurm_partition", "slurm_time", "slurm_extra", "wait")


def train_click_options():
    opts = [
        click.Option(["--gpus"], type=int, default=None,
                     help="Processes (GPUs) per node: N > 1 launches torch.distributed.run with N ranks "
                          "(with --device cpu: N Gloo ranks on the CPU) [default: 1]."),
        click.Option(["--nodes"], type=int, default=None, help="Nodes, with --launcher slurm [default: 1]."),
    ]
    return opts + [click.Option(decls, **kw) for decls, kw in _slurm_option_specs(for_ablate=False)]


def wants_launch(kwargs: dict) -> bool:
    """True when ``ganstack train`` must launch other processes instead of training in this one."""
    if os.environ.get("GANSTACK_LAUNCHED") == "1":
        return False  # we are the process a launcher started
    launcher = kwargs.get("launcher") or "local"
    gpus, nodes = kwargs.get("gpus"), kwargs.get("nodes")
    if gpus is not None and gpus < 1:
        raise ConfigError(f"--gpus {gpus}: give at least 1 process per node.")
    if nodes is not None and nodes < 1:
        raise ConfigError(f"--nodes {nodes}: give at least 1 node.")
    if launcher == "local":
        if nodes and nodes > 1:
            raise ConfigError(f"--nodes {nodes} needs --launcher slurm. Without SLURM, start torchrun on each node "
                              f"(torchrun --nnodes={nodes} --nproc_per_node=N --rdzv-backend=c10d "
                              f"--rdzv-endpoint=HOST:29500 -m ganstack train ...; see README 'Multi-GPU').")
        if kwargs.get("wait"):
            raise ConfigError("--wait is for --launcher slurm.")
        world = os.environ.get("WORLD_SIZE")
        if world is not None and int(world) > 1:  # already under torchrun: nothing changes
            if gpus and gpus > 1 and gpus != int(world):
                raise ConfigError(f"--gpus {gpus} under torchrun with WORLD_SIZE={world}: drop --gpus (torchrun's "
                                  f"--nproc_per_node sets the processes).")
            return False
        return bool(gpus and gpus > 1)
    return True


def command_line(ctx: click.Context, skip=TRAIN_LAUNCH_PARAMS) -> list[str]:
    """The options of ``ctx`` that were given (not defaults), as command-line arguments."""
    from click.core import ParameterSource

    args = []
    for p in ctx.command.params:
        if not isinstance(p, click.Option) or p.name in skip:
            continue
        if ctx.get_parameter_source(p.name) in (ParameterSource.DEFAULT, None):
            continue
        value = ctx.params.get(p.name)
        flag = max(p.opts, key=len) if any(o.startswith("--") for o in p.opts) else p.opts[0]
        if p.is_flag and not p.count:
            if value:
                args.append(flag)
            elif p.secondary_opts:
                args.append(p.secondary_opts[0])
            continue
        if isinstance(p.type, click.types.BoolParamType) and isinstance(value, bool):  # --cond / --mirror=0
            args.append(flag if value else f"{flag}=0")
            continue
        values = value if p.multiple else [value]
        for v in values:
            if v is None:
                continue
            if isinstance(v, (tuple, list)):
                args += [flag] + [str(x) for x in v]
            else:
                args += [flag, str(v)]
    return args


def _torchrun_argv(nproc: int, train_args: list[str]) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1",
            f"--nproc_per_node={nproc}", "-m", "ganstack", "train"] + train_args


def run_torchrun(nproc: int, train_args: list[str], log=click.echo) -> int:
    """``ganstack train --gpus N`` on this node: torch.distributed.run with N ranks, in its own session so
    that one Ctrl-C reaches each rank exactly once (through torchrun's SIGTERM); a second one kills."""
    argv = _torchrun_argv(nproc, train_args)
    log(f"Launching {nproc} processes: {' '.join(argv[1:])}")
    env = dict(os.environ, GANSTACK_LAUNCHED="1")
    proc = subprocess.Popen(argv, env=env, start_new_session=True)
    got = []

    def forward(signum, frame):
        got.append(signum)
        try:
            if len(got) == 1:
                os.kill(proc.pid, signal.SIGTERM)  # torchrun passes it on to every rank once
            else:
                os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    old = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        code = proc.wait()
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    if got:
        log("Stopped by signal; the ranks wrote a checkpoint first. Resume with --resume RUN_FOLDER.")
        return 128 + int(got[0])
    return code


class TrainJob(SupervisedJob):
    """One task of a ``ganstack train --launcher slurm`` job: ``python -m ganstack train ...``, resumed
    from the newest checkpoint of the run folders this job made when it is requeued."""

    def __init__(self, train_args: list[str], outdir: str, cwd: str):
        super().__init__(cwd)
        self.train_args = list(train_args)
        self.outdir = outdir
        self.before = set(_run_folders(outdir))

    def my_runs(self) -> list[str]:
        return [d for d in _run_folders(self.outdir) if d not in self.before]

    def command(self):
        from ganstack.training import checkpoint as ckpt_io
        args = list(self.train_args)
        best = None
        for rd in self.my_runs():
            for path in ckpt_io.list_snapshots(os.path.join(self.outdir, rd)):
                nimg = ckpt_io.snapshot_nimg(path)
                if best is None or nimg >= best[0]:
                    best = (nimg, path)
        if best is not None:
            args = _drop_option(args, "--resume") + ["--resume", best[1]]
        return [sys.executable, "-m", "ganstack", "train"] + args

    def finished(self, code: int):
        if code in STOP_CODES:
            raise SystemExit(code)
        if code != 0:
            _, _, _, err = _job_environment()
            raise RuntimeError(f"ganstack train exited with code {code}; log: {err}")
        runs = self.my_runs()
        return os.path.join(self.outdir, runs[-1]) if runs else None


def _run_folders(outdir: str) -> list[str]:
    try:
        return sorted(d for d in os.listdir(outdir) if re.match(r"^\d{5}-", d))
    except OSError:
        return []


def _drop_option(args: list[str], name: str) -> list[str]:
    out, skip = [], False
    for a in args:
        if skip:
            skip = False
            continue
        if a == name:
            skip = True
            continue
        if a.startswith(name + "="):
            continue
        out.append(a)
    return out


def submit_train(train_args: list[str], outdir: str, nodes: int, tasks_per_node: int, use_gpus: bool,
                 options: SlurmOptions, log=click.echo):
    """Submit one job of ``nodes x tasks_per_node`` tasks; returns the submitit job."""
    outdir = os.path.abspath(outdir)
    args = _drop_option(train_args, "--outdir") + ["--outdir", outdir]
    ex = options.executor(os.path.join(outdir, "slurm", "%j"), name="ganstack-train", nodes=nodes,
                          tasks_per_node=tasks_per_node, gpus_per_node=tasks_per_node if use_gpus else 0)
    try:
        job = ex.submit(TrainJob(args, outdir, os.getcwd()))
    except Exception as exc:  # noqa: BLE001
        raise ConfigError(f"Submitting the training job to SLURM failed: {exc}") from None
    if options.cluster == "local":
        _LOCAL_JOBS[job.job_id] = job
    log(f"Submitted job {job.job_id}: {nodes} node(s) x {tasks_per_node} task(s) "
        f"({'one GPU each' if use_gpus else 'CPU'}), time limit {options.time}.")
    paths = job.task(0).paths if job.num_tasks > 1 else job.paths
    log(f"Logs of rank 0: {paths.stdout} and {os.path.basename(str(paths.stderr))}; the run folder goes to {outdir}")
    return job


def wait_train(job, cluster: str, log=click.echo, poll_s: float = 5.0) -> int:
    """Wait for a submitted training job to leave the queue; returns 0 when rank 0 succeeded."""
    from submitit.core import utils as sutils
    while queue_states([job.job_id], cluster):
        time.sleep(poll_s)
    paths = job.task(0).paths if job.num_tasks > 1 else job.paths
    result = paths.result_pickle
    if not os.path.exists(result):
        log(f"Job {job.job_id} ended without a result (killed or cancelled); see {job.paths.stderr}")
        return 1
    outcome, value = sutils.pickle_load(result)
    if outcome == "success":
        log(f"Job {job.job_id} finished: {value}")
        return 0
    log(f"Job {job.job_id} failed; see {job.paths.stderr}\n{str(value).strip().splitlines()[-1]}")
    return 1


def launch_train(ctx: click.Context, kwargs: dict, log=click.echo) -> None:
    """``ganstack train`` with ``--gpus N > 1`` or ``--launcher slurm``: start the processes instead."""
    train_args = command_line(ctx)
    gpus = kwargs.get("gpus") or 1
    if (kwargs.get("launcher") or "local") == "local":
        device = kwargs.get("device") or "auto"
        if device != "cpu":
            import torch
            have = torch.cuda.device_count()
            if device.startswith("cuda") or (device == "auto" and have):
                if have < gpus:
                    raise ConfigError(f"--gpus {gpus}: this machine has {have} CUDA device(s). Use --gpus {have}, "
                                      f"or --device cpu for {gpus} CPU processes (Gloo).")
            elif device == "auto":
                raise ConfigError(f"--gpus {gpus}: this machine has no CUDA device. Add --device cpu to run "
                                  f"{gpus} CPU processes (Gloo), or use --launcher slurm.")
        sys.exit(run_torchrun(gpus, train_args, log=log))
    require_submitit()
    nodes = kwargs.get("nodes") or 1
    options = slurm_options_from(kwargs, gpus=gpus)
    parse_slurm_time(options.time)
    use_gpus = (kwargs.get("device") or "auto") != "cpu"
    job = submit_train(train_args, kwargs.get("outdir") or "training-runs", nodes, gpus, use_gpus, options, log=log)
    if options.wait:
        sys.exit(wait_train(job, options.cluster, log=log))


# ------------------------------------------------------------------------------------------------

def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) == 2 and argv[0] == "cell":
        return _run_cell_child(argv[1])
    print("usage: python -m ganstack.training.launch cell SPEC.pkl  (started by ganstack's SLURM launcher)",
          file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["SlurmOptions", "SlurmCellLauncher", "LocalCellLauncher", "CellJob", "TrainJob", "print_status",
           "cell_statuses", "launch_train", "wants_launch", "run_torchrun", "parse_slurm_time"]
