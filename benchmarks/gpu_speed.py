"""The GPU speed run of issue #16, prepared to run in ONE call on a GPU machine.

    PYTHONUNBUFFERED=1 python3 benchmarks/gpu_speed.py --budget-s 480        # on the GPU machine
    python benchmarks/gpu_speed.py --smoke --budget-s 150                    # tiny configs, on a CPU

It prints the device and the exact command, then measures, row by row in order of importance, each
row in its own process (a crash or a CUDA-graph error costs one row, and peak memory is per row):

* **throughput**: s/kimg (median over ticks of 16 steps = one R1 period, after a warm-up that
  compiles) and peak GPU memory of the full training loop (all phases, lazy R1 / path length, G_ema),
  batch 64, ADA on (fixed p = 0.6: an adaptive run starts at p = 0, where the pipeline is skipped),
  for the CIFAR-like 32x32 preset (cbase 32768, map 2, mbstd 32) and the paper256-like 256x256 preset
  (cbase 16384, mbstd 8), variants ``eager`` (everything off), ``compiled`` (``--compile default
  --tf32``), ``compiled-cg`` (``--compile reduce-overhead``: CUDA graphs), ``bf16`` (``--mp-res 4
  --mp-dtype bf16 --channels-last --tf32``), ``compiled+bf16``; plus kernels launched per plain step
  (torch.profiler, CUDA activity);
* **plugins**: s/kimg of ``none``, ``diffusion``, ``smart`` (lazy 8, ``--smart-omit-jacobian``, a randomly
  initialised score U-Net of EDM's CIFAR shape: 128 channels, mult 2,2,2, 4 blocks; the cost does not
  depend on its weights), ``clr`` and ``diffusion,smart,clr`` at 32x32, interleaved in one process, and
  the overhead relative to ``none`` against the goals (5 / 15 / 35 / 50 %);
* **syncs**: the host syncs of a step, with file:line (``torch.cuda.set_sync_debug_mode('warn')``).

``--budget-s`` (default 480) bounds the whole run: a row starts only when its estimated cost fits in
what is left (estimates are corrected by the rows already run), and rows that do not fit are dropped,
least important first, and listed. Results go to ``$OUT/gpu_speed.json`` when ``$OUT`` is set (else
the current folder) and a table is printed last. Goals on an H200: <= 0.9 s/kimg at 32x32 (official:
1.78 with its CUDA kernels, 3.3 with its pure-PyTorch reference ops), 1.5x the official throughput at
256x256 (official H100: 6.1 s/kimg, 17.4 GB) with no more memory.

Needs only torch and the packages ganstack imports (numpy, scipy, click, pluggy, imageio); it runs from
a plain checkout: when the ``ganstack`` distribution is not installed, the plugins' entry points are
registered from ``setup.cfg`` in a temporary folder (no pip).
"""
from __future__ import annotations

import argparse
import configparser
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GOALS = {"diffusion": 5, "smart": 15, "clr": 35, "diffusion,smart,clr": 50}
OFFICIAL = {"cifar": "official H200: 1.78 s/kimg CUDA ops, 3.3 ref ops, 8.15 GB; H100 2.21 s/kimg, 8.2 GB",
            "paper256": "official H100: 6.1 s/kimg, 17.4 GB"}

VARIANTS = {
    "eager": {},
    "compiled": dict(compile="default", tf32=True),
    "compiled-cg": dict(compile="reduce-overhead", tf32=True),
    "bf16": dict(mp_res=4, mp_dtype="bf16", channels_last=True, tf32=True),
    "compiled+bf16": dict(compile="default", mp_res=4, mp_dtype="bf16", channels_last=True, tf32=True),
    # the FIR with the channels folded into the batch (groups=1) instead of a depthwise conv (ops.py)
    "eager-foldfir": dict(fir="fold"),
}


# ------------------------------------------------------------------------------------------------
# Running from a checkout without pip

def ensure_entry_points() -> None:
    """Make ``ganstack.plugins`` entry points visible when ganstack is not installed (register them from
    setup.cfg in a temporary ``.dist-info``; also for the row subprocesses through PYTHONPATH)."""
    paths = [ROOT]
    import importlib.metadata as md
    names = {ep.name for ep in md.entry_points(group="ganstack.plugins")}
    if "ada" not in names:
        cp = configparser.ConfigParser()
        cp.read(os.path.join(ROOT, "setup.cfg"))
        tmp = tempfile.mkdtemp(prefix="ganstack-ep-")
        dist = os.path.join(tmp, "ganstack-0.0.0.dist-info")
        os.makedirs(dist)
        with open(os.path.join(dist, "METADATA"), "w") as f:
            f.write("Metadata-Version: 2.1\nName: ganstack\nVersion: 0.0.0\n")
        with open(os.path.join(dist, "entry_points.txt"), "w") as f:
            for group, body in cp["options.entry_points"].items():
                if group == "console_scripts":
                    continue
                f.write(f"[{group}]\n")
                for line in body.strip().splitlines():
                    if line.strip() and not line.strip().startswith("#"):
                        f.write(line.strip() + "\n")
        paths.append(tmp)
    for p in reversed(paths):
        if p not in sys.path:
            sys.path.insert(0, p)
    os.environ["PYTHONPATH"] = os.pathsep.join(paths + [os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    import importlib
    importlib.invalidate_caches()


# ------------------------------------------------------------------------------------------------
# Configs

def preset_kwargs(preset: str, smoke: bool) -> dict:
    if smoke:  # tiny stand-ins with the same structure (every block kind, both lazy regularizers)
        if preset == "cifar":
            return dict(data="shapes8?n=64", cfg="cifar", cbase=256, cmax=16, z_dim=16, w_dim=16, batch=4,
                        mbstd_group=2, workers=0)
        return dict(data="shapes16?n=64", cfg="paper256", cbase=256, cmax=16, z_dim=16, w_dim=16, map_depth=2,
                    batch=4, mbstd_group=2, workers=0)
    if preset == "cifar":
        return dict(data="shapes32?n=2048", cfg="cifar", batch=64, workers=0)
    return dict(data="shapes256?n=512", cfg="paper256", batch=64, workers=0)


def build_trainer(preset: str, plugins, options, speed_kw: dict, smoke: bool, device: str):
    import torch

    from ganstack.stylegan_base.datasets import open_dataset
    from ganstack.training.config import TrainConfig, resolve
    from ganstack.training.loop import Trainer
    from ganstack.training.plugin_manager import PluginStack

    from ganstack.stylegan_base import ops
    speed_kw = dict(speed_kw)
    ops.set_fir_impl(speed_kw.pop("fir", "auto"))
    kw = dict(preset_kwargs(preset, smoke), **speed_kw, device=device)
    cfg = TrainConfig(**kw)
    cfg.mark_user_set(kw)
    ds = open_dataset(cfg.data, use_labels=False)
    resolve(cfg, ds.info())
    stack = PluginStack(list(plugins), options)
    stack.configure(cfg)
    torch.manual_seed(0)
    tr = Trainer(cfg, stack, ds, run_dir=None, device=device, log=lambda *_: None)
    if device.startswith("cuda"):
        torch.backends.cudnn.benchmark = True
    return tr


def make_score_model(path: str, res: int, smoke: bool) -> str:
    """A randomly initialised EDM-preconditioned U-Net of the right shape, saved as a score checkpoint."""
    from ganstack.plugins.score_models.edm import EDMPrecond
    from ganstack.plugins.score_models.io import export_model

    kw = (dict(model_channels=8, channel_mult=[1, 2], num_blocks=1) if smoke
          else dict(model_channels=128, channel_mult=[2, 2, 2], num_blocks=4))
    arch = {"name": "unet", "kwargs": dict(img_resolution=res, img_channels=3, label_dim=0, dropout=0.0, **kw)}
    export_model(EDMPrecond(arch), path, dict(kind="image", resolution=res, num_channels=3, label_dim=0,
                                                name=f"shapes{res}"))
    return path


# ------------------------------------------------------------------------------------------------
# Measurements (run inside a row's subprocess)

def _sync(device):
    import torch
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_ticks(tr, device: str, warmup: int, tick_steps: int, min_ticks: int, max_s: float) -> list:
    """s/kimg of each tick of ``tick_steps`` steps, after ``warmup`` steps, for at most ``max_s`` s."""
    for _ in range(warmup):
        tr.step()
    _sync(device)
    ticks = []
    t_end = time.perf_counter() + max_s
    while len(ticks) < min_ticks or (time.perf_counter() < t_end and len(ticks) < 3 * min_ticks):
        t0 = time.perf_counter()
        n0 = tr.cur_nimg
        for _ in range(tick_steps):
            tr.step()
        _sync(device)
        ticks.append((time.perf_counter() - t0) / (tr.cur_nimg - n0) * 1000)
        if time.perf_counter() > t_end and len(ticks) >= min_ticks:
            break
    return ticks


def kernels_per_step(tr, device: str) -> dict:
    """Kernels (and host-side launches) of one plain step, by torch.profiler."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    # a plain step: no lazy phase due
    periods = [r.interval for r in tr.regularizers if r.interval > 1] or [1]
    while any(tr.batch_idx % k == 0 for k in periods):
        tr.step()
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.startswith("cuda") else [])
    with profile(activities=acts) as prof:
        tr.step()
        _sync(device)
    out = {}
    if device.startswith("cuda"):
        evs = prof.events()
        out["gpu_kernels"] = sum(1 for e in evs if e.device_type == torch.autograd.DeviceType.CUDA
                                 and not e.name.startswith(("Memcpy", "Memset")))
        out["launch_calls"] = sum(1 for e in evs if e.name in ("cudaLaunchKernel", "cuLaunchKernel",
                                                              "cudaLaunchKernelExC", "cuLaunchKernelEx"))
        out["graph_launches"] = sum(1 for e in evs if e.name in ("cudaGraphLaunch", "cuGraphLaunch"))
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    import bench_op_counts
    out.update(bench_op_counts.count_events(list(prof.events())))
    return out


def row_throughput(spec: dict) -> dict:
    import torch

    from ganstack.training import speed
    device, smoke = spec["device"], spec["smoke"]
    plugins = ["ada"]
    options = {"ada": {"p": "0.6", "adaptive": "false"}}
    t0 = time.perf_counter()
    tr = build_trainer(spec["preset"], plugins, options, VARIANTS[spec["variant"]], smoke, device)
    warm = spec["warmup"]
    for _ in range(warm):
        tr.step()
    _sync(device)
    warm_s = time.perf_counter() - t0
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    ticks = time_ticks(tr, device, 0, spec["tick_steps"], spec["min_ticks"], spec["max_s"])
    mem = torch.cuda.max_memory_allocated() / 2 ** 30 if device.startswith("cuda") else float("nan")
    res = dict(preset=spec["preset"], variant=spec["variant"], s_per_kimg=statistics.median(ticks), ticks=ticks,
               peak_mem_gb=mem, warmup_s=warm_s, batch=tr.cfg.batch, options=VARIANTS[spec["variant"]],
               speed=speed.describe_speed(tr))
    try:
        res["per_step"] = kernels_per_step(tr, device)
    except Exception as exc:  # noqa: BLE001 - a profile failure must not lose the timing
        res["per_step"] = {"error": f"{type(exc).__name__}: {exc}"}
    return res


def row_plugins(spec: dict) -> dict:
    device, smoke = spec["device"], spec["smoke"]
    tmp = tempfile.mkdtemp(prefix="gpu-speed-")
    res = int(preset_kwargs("cifar", smoke)["data"].split("?")[0][len("shapes"):])
    score = make_score_model(os.path.join(tmp, "score.pt"), res, smoke)
    stacks = [("none", []), ("diffusion", ["diffusion"]), ("smart", ["smart"]), ("clr", ["clr"]),
              ("diffusion,smart,clr", ["diffusion", "smart", "clr"])]
    smart_opts = {"score": score, "interval": "8", "omit_jacobian": "true"}
    trainers = {}
    for label, names in stacks:
        opts = {"smart": smart_opts} if "smart" in names else {}
        trainers[label] = build_trainer("cifar", names, opts, VARIANTS[spec["variant"]], smoke, device)
    for tr in trainers.values():
        for _ in range(spec["warmup"]):
            tr.step()
    _sync(device)
    times = {label: [] for label in trainers}
    t_end = time.perf_counter() + spec["max_s"]
    rounds = 0
    while rounds < spec["min_rounds"] or (time.perf_counter() < t_end and rounds < 3 * spec["min_rounds"]):
        for label, tr in trainers.items():  # interleaved: drifts hit every stack alike
            t0 = time.perf_counter()
            n0 = tr.cur_nimg
            for _ in range(spec["tick_steps"]):
                tr.step()
            _sync(device)
            times[label].append((time.perf_counter() - t0) / (tr.cur_nimg - n0) * 1000)
        rounds += 1
        if time.perf_counter() > t_end and rounds >= spec["min_rounds"]:
            break
    base = statistics.median(times["none"])
    rows = []
    for label, ts in times.items():
        med = statistics.median(ts)
        rows.append(dict(stack=label, s_per_kimg=med, ticks=ts, overhead_pct=(med / base - 1) * 100,
                         goal_pct=GOALS.get(label)))
    return dict(variant=spec["variant"], rows=rows, rounds=rounds)


def row_syncs(spec: dict) -> dict:
    """Host syncs of two steps (one with every lazy phase, one plain) with their file:line."""
    import warnings

    import torch
    device, smoke = spec["device"], spec["smoke"]
    tr = build_trainer("cifar", ["ada"], {"ada": {"p": "0.6", "adaptive": "false"}}, {}, smoke, device)
    tr.step()
    found: dict = {}
    if device.startswith("cuda"):
        old_show = warnings.showwarning

        def show(message, category, filename, lineno, file=None, line=None):
            stack = traceback.extract_stack()[:-1]
            where = next((f"{os.path.relpath(fr.filename, ROOT)}:{fr.lineno} ({fr.name})" for fr in reversed(stack)
                          if fr.filename.startswith(ROOT) and "gpu_speed.py" not in fr.filename),
                         f"{filename}:{lineno}")
            found[where] = found.get(where, 0) + 1

        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.showwarning = show
            torch.cuda.set_sync_debug_mode("warn")
            try:
                tr.batch_idx = 16  # every lazy phase due
                tr.step()
                tr.step()
                torch.cuda.synchronize()
            finally:
                torch.cuda.set_sync_debug_mode("default")
                warnings.showwarning = old_show
    else:
        from ganstack.training import speed
        with speed.record_host_syncs() as events:
            tr.batch_idx = 16
            tr.step()
            tr.step()
        for what, where in events:
            key = f"{os.path.relpath(where.split(':')[0], ROOT)}:{where.split(':', 1)[1]} [{what}]"
            found[key] = found.get(key, 0) + 1
    return dict(steps=2, syncs=dict(sorted(found.items(), key=lambda kv: -kv[1])))


ROW_FUNCS = {"throughput": row_throughput, "plugins": row_plugins, "syncs": row_syncs}


# ------------------------------------------------------------------------------------------------
# The plan and the budget

def make_plan(smoke: bool, device: str) -> list[dict]:
    """Rows in order of importance, with a first estimate of their cost in seconds (start-up included)."""
    if smoke:
        base = dict(device=device, smoke=True, warmup=2, tick_steps=2, min_ticks=2, max_s=3)
        est = {"eager": 25, "compiled": 45, "compiled-cg": 45, "bf16": 25, "compiled+bf16": 45, "eager-foldfir": 25}
        plug = dict(base, kind="plugins", variant="eager", min_rounds=2, est=50)
    else:
        base = dict(device=device, smoke=False, warmup=12, tick_steps=16, min_ticks=4, max_s=25)
        est = {"eager": 45, "compiled": 160, "compiled-cg": 200, "bf16": 50, "compiled+bf16": 180, "eager-foldfir": 45}
        plug = dict(base, kind="plugins", variant="eager", min_rounds=4, max_s=40, est=110)

    def tp(preset, variant, extra_est=0):
        return dict(base, kind="throughput", preset=preset, variant=variant, est=est[variant] + extra_est)

    big = 0 if smoke else 30  # 256x256: slower steps
    plan = [
        tp("cifar", "eager"),
        tp("cifar", "compiled"),
        plug,
        tp("paper256", "eager", big),
        dict(base, kind="syncs", est=30),
        tp("paper256", "bf16", big),
        tp("cifar", "compiled-cg"),
        tp("paper256", "compiled+bf16", big),
        tp("cifar", "eager-foldfir"),
        tp("cifar", "bf16"),
        tp("cifar", "compiled+bf16"),
        tp("paper256", "compiled", big),
        dict(plug, variant="compiled", est=plug["est"] + 5 * est["compiled"]),
    ]
    return plan


def row_name(row: dict) -> str:
    if row["kind"] == "throughput":
        return f"throughput {row['preset']} {row['variant']}"
    if row["kind"] == "plugins":
        return f"plugins ({row['variant']})"
    return "syncs"


def run_row(row: dict, timeout: float) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--row", json.dumps(row)]
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=max(5, timeout), env=dict(os.environ))
    except subprocess.TimeoutExpired as exc:
        tail = (exc.stdout or b"")[-800:] if isinstance(exc.stdout, bytes) else (exc.stdout or "")[-800:]
        return dict(status="timeout", seconds=time.perf_counter() - t0, log=str(tail))
    secs = time.perf_counter() - t0
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("ROW-RESULT ")]
    if p.returncode != 0 or not lines:
        return dict(status="failed", seconds=secs, log=(p.stdout + p.stderr)[-3000:])
    return dict(status="ok", seconds=secs, result=json.loads(lines[-1][len("ROW-RESULT "):]))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--budget-s", type=float, default=480, help="total seconds for all rows (default 480)")
    ap.add_argument("--smoke", action="store_true", help="tiny configs on the CPU (tests the script)")
    ap.add_argument("--device", default=None, help="default: cuda if available (cpu with --smoke)")
    ap.add_argument("--only", default=None, help="comma list of row names to keep (e.g. 'throughput cifar eager')")
    ap.add_argument("--row", default=None, help=argparse.SUPPRESS)  # internal: run one row
    args = ap.parse_args(argv)

    ensure_entry_points()
    if args.smoke:
        # quick CPU test of the script: compiled rows trace and capture graphs (dynamo + AOTAutograd) but
        # skip inductor's code generation, which takes minutes on a small CPU
        os.environ.setdefault("GANSTACK_COMPILE_BACKEND", "aot_eager")
    if args.row:
        spec = json.loads(args.row)
        if spec["device"] == "cpu":
            import torch
            torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or torch.get_num_threads()))
        res = ROW_FUNCS[spec["kind"]](spec)
        print("ROW-RESULT " + json.dumps(res, default=float), flush=True)
        return

    t_start = time.perf_counter()
    import torch
    device = args.device or ("cpu" if args.smoke or not torch.cuda.is_available() else "cuda")
    if device.startswith("cuda"):
        name = torch.cuda.get_device_name(0)
        props = torch.cuda.get_device_properties(0)
        dev_desc = f"{name} ({props.total_memory / 2 ** 30:.0f} GiB, {props.multi_processor_count} SMs)"
    else:
        dev_desc = f"cpu ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"
    command = "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(__file__, os.getcwd())] + sys.argv[1:])
    print(f"device:  {dev_desc}")
    print(f"command: {command}")
    print(f"torch {torch.__version__}, budget {args.budget_s:.0f} s{' (smoke: tiny configs)' if args.smoke else ''}",
          flush=True)

    plan = make_plan(args.smoke, device)
    if args.only:
        keep = {s.strip() for s in args.only.split(",")}
        plan = [r for r in plan if row_name(r) in keep]
    elif args.smoke:  # one row of each kind, so the CPU test stays short
        keep = {"throughput cifar eager", "throughput cifar compiled", "throughput cifar bf16", "plugins (eager)",
                "syncs", "throughput paper256 eager"}
        plan = [r for r in plan if row_name(r) in keep]
    results = dict(device=dev_desc, command=command, torch=torch.__version__, smoke=args.smoke,
                   budget_s=args.budget_s, throughput=[], plugins=[], plugins_compiled=[], syncs=None,
                   dropped=[], failed=[])
    scale = 1.0  # measured / estimated cost of the rows run so far
    for row in plan:
        left = args.budget_s - (time.perf_counter() - t_start)
        need = row["est"] * scale
        name = row_name(row)
        if need > left:
            results["dropped"].append(dict(row=name, estimated_s=round(need), left_s=round(left)))
            print(f"-- dropped {name}: needs ~{need:.0f} s, {left:.0f} s left", flush=True)
            continue
        print(f"-- {name} (estimated {need:.0f} s, {left:.0f} s left)", flush=True)
        out = run_row(row, timeout=min(left, 1.6 * need + 30))
        scale = max(0.5, min(3.0, 0.5 * scale + 0.5 * out["seconds"] / row["est"]))
        if out["status"] != "ok":
            results["failed"].append(dict(row=name, status=out["status"], seconds=round(out["seconds"]),
                                          log=out.get("log", "")[-1500:]))
            print(f"   {out['status']} after {out['seconds']:.0f} s\n{out.get('log', '')[-1500:]}", flush=True)
            continue
        r = out["result"]
        r["row_s"] = out["seconds"]
        if row["kind"] == "throughput":
            results["throughput"].append(r)
            ps = r.get("per_step", {})
            print(f"   {r['preset']:<9} {r['variant']:<14} {r['s_per_kimg']:8.3f} s/kimg  peak {r['peak_mem_gb']:6.2f} GB  "
                  f"kernels/step {ps.get('gpu_kernels', ps.get('kernels', '?'))}  warm-up {r['warmup_s']:.0f} s  "
                  f"[{r['speed']}]", flush=True)
        elif row["kind"] == "plugins":
            key = "plugins" if row["variant"] == "eager" else "plugins_compiled"
            results[key] = r["rows"]
            for pr in r["rows"]:
                goal = f"(goal <= {pr['goal_pct']}%)" if pr["goal_pct"] is not None else ""
                print(f"   {pr['stack']:<20} {pr['s_per_kimg']:8.3f} s/kimg  overhead {pr['overhead_pct']:+6.1f}% {goal}",
                      flush=True)
        else:
            results["syncs"] = r
            for where, n in r["syncs"].items():
                print(f"   {n:4d} x {where}", flush=True)
        results["total_s"] = time.perf_counter() - t_start
        write_results(results, quiet=True)  # after every row: a run cut short keeps what it measured
    results["total_s"] = time.perf_counter() - t_start
    write_results(results)
    print_summary(results)


def write_results(results: dict, quiet: bool = False) -> None:
    out_dir = os.environ.get("OUT") or os.getcwd()
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "gpu_speed.json")
    with open(path + ".tmp", "w") as f:
        json.dump(results, f, indent=1, default=float)
    os.replace(path + ".tmp", path)
    if not quiet:
        print(f"\nresults: {path}")


def print_summary(res: dict) -> None:
    print(f"\n== {res['device']}  |  {res['command']}  |  torch {res['torch']}  |  {res['total_s']:.0f} s ==")
    print("| preset | variant | s/kimg (median) | peak GPU mem GB | kernels per plain step | options |")
    print("|---|---|---|---|---|---|")
    for r in res["throughput"]:
        ps = r.get("per_step", {})
        print(f"| {r['preset']} | {r['variant']} | {r['s_per_kimg']:.3f} | {r['peak_mem_gb']:.2f} | "
              f"{ps.get('gpu_kernels', ps.get('kernels', '?'))} | {r['speed']} |")
    for preset, text in OFFICIAL.items():
        print(f"  {preset}: {text}")
    for key in ("plugins", "plugins_compiled"):
        if res[key]:
            print(f"\n| stack ({'eager' if key == 'plugins' else 'compiled'}) | s/kimg | overhead vs none | goal |")
            print("|---|---|---|---|")
            for pr in res[key]:
                goal = f"<= {pr['goal_pct']}%" if pr["goal_pct"] is not None else ""
                print(f"| {pr['stack']} | {pr['s_per_kimg']:.3f} | {pr['overhead_pct']:+.1f}% | {goal} |")
    if res["dropped"]:
        print("\ndropped for the budget (least important last in the plan): "
              + "; ".join(d["row"] for d in res["dropped"]))
    if res["failed"]:
        print("failed: " + "; ".join(f"{d['row']} ({d['status']})" for d in res["failed"]))


if __name__ == "__main__":
    main()
