"""Engine time of the paper's finite-sum sweep against its limiting operation (issue 14).

    python -m benchmarks.bench_finite_sum [--size paper|ci] [--device auto|cpu|cuda]
                                          [--reps 2] [--graph auto] [--budget-s 300] [--out FILE.json]

The jobs are those of ``python -m experiments.sweep linreg_finite_sum
linreg_finite_sum_page size=paper`` (what scripts/gpu_sweeps.sh runs for the figure; the
Hydra presets expanded by :func:`experiments.sweep.expand_command`, built by
:func:`experiments.build.build_job`, grouped into engine calls and batched as
:func:`experiments.sweep.run_sweep` does: at paper size Bernoulli-LoRA-SGD, 100 runs x
20,000 steps, and -PAGE, 60 runs x 6,733 steps, batch 100 of N = 10,000, d = 4096);
nothing is written. Each repetition times every
group's engine call (GPU-synchronised), after one short warm-up call per group.

The floor is the operation no implementation of these steps can avoid: gathering each
step's minibatch rows and the minibatch GEMMs, i.e. ``problem.minibatch_grad`` at the
group's batch shape, once per SGD step and twice per PAGE step (at both points), timed
alone (on CUDA replayed from a captured graph, so without launch cost) with fixed
indices. The report gives, per repetition, the engine time, the floor, their ratio, and
the spread (min, median, max) over repetitions (the floor is measured before the first
and after every repetition), with the machine it ran on.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from benchmarks.common import write_json


#: the presets of the finite-sum figure (scripts/gpu_sweeps.sh, FIGURE[linreg_finite_sum])
PRESETS = ("linreg_finite_sum", "linreg_finite_sum_page")


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def machine(device) -> dict:
    info = {"torch": torch.__version__, "python": platform.python_version(), "cpu": platform.processor()
            or platform.machine(), "threads": torch.get_num_threads()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def groups(size, device):
    """``[(name, method, problem, seeds, cfg)]``: the sweep's engine calls."""
    from experiments.build import build_job
    from experiments.sweep import _batched, _group_key, expand_command

    cfgs = [c for c, _ in expand_command([*PRESETS, f"size={size}", f"device={device.type}"])]
    by_key = {}
    for cfg in cfgs:
        job = build_job(cfg)
        by_key.setdefault(_group_key(cfg, job), []).append((cfg, job))
    out = []
    for members in by_key.values():
        jobs = [job for _, job in members]
        seeds = [s for job in jobs for s in job.seeds]
        method = _batched(jobs) if len(jobs) > 1 else jobs[0].method
        out.append((members[0][0]["estimator"]["name"], method, jobs[0].problem, seeds, members[0][0]))
    return out


def engine_s(method, problem, seeds, cfg, graph, steps=None):
    from solvers.engine import run

    device = problem.W0.device
    _sync(device)
    t = time.perf_counter()
    run(method, problem, problem.W0, seeds, steps=steps or cfg["steps"], eval_every=cfg["eval_every"],
        track_every_step=cfg["track_every_step"], graph=graph)
    _sync(device)
    return time.perf_counter() - t


def floor_s(method, problem, seeds, cfg, calls_per_step, chunk=50):
    """Seconds of ``calls_per_step * steps`` minibatch gradients at the group's shape."""
    from solvers import rng

    device = problem.W0.device
    R, b = len(seeds), method.estimator.batch
    W = problem.W0.expand(R, *problem.W0.shape).contiguous()
    idx = rng.subset(torch.as_tensor(seeds, device=device), rng.Stream.MINIBATCH, 1, problem.n_samples, b,
                     device=device).contiguous()
    calls = calls_per_step * cfg["steps"]

    def body():
        for _ in range(chunk):
            problem.minibatch_grad(W, idx)

    body()
    replay = body
    if device.type == "cuda":
        graph = torch.cuda.CUDAGraph()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            body()
        torch.cuda.current_stream().wait_stream(side)
        with torch.cuda.graph(graph):
            body()
        replay = graph.replay
    replay()
    _sync(device)
    t = time.perf_counter()
    for _ in range(max(1, calls // chunk)):
        replay()
    _sync(device)
    return (time.perf_counter() - t) * calls / (max(1, calls // chunk) * chunk)


def _dump(result, path):
    """Write the result so far (a run cut short by a time limit still leaves its numbers)."""
    if path:
        write_json(path, result)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_finite_sum", description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default=None, help="paper (default on cuda) or ci (default on cpu)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--graph", default="auto", help="the engine's fused path: auto | off | eager | on")
    ap.add_argument("--budget-s", type=float, default=300.0, help="start no repetition after this many seconds")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    device = torch.device("cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
                          else "cpu")
    size = args.size or ("paper" if device.type == "cuda" else "ci")
    t_start = time.perf_counter()
    gs = groups(size, device)
    build_s = time.perf_counter() - t_start
    result = {"benchmark": "finite_sum_sweep", "size": size, "device": str(device), "graph": args.graph,
              "machine": machine(device), "build_s": build_s, "groups": [], "reps": []}
    floors = []
    for name, method, problem, seeds, cfg in gs:
        per_step = 2 if name == "page" else 1
        fl = floor_s(method, problem, seeds, cfg, per_step)
        floors.append(fl)
        warm = engine_s(method, problem, seeds, cfg, args.graph, steps=130)  # captures, first refills
        result["groups"].append({"estimator": name, "runs": len(seeds), "steps": cfg["steps"],
                                 "batch": method.estimator.batch, "shape": list(problem.shape),
                                 "n_samples": problem.n_samples, "minibatch_grads_per_step": per_step,
                                 "floor_s": fl, "warmup_130_steps_s": warm})
        print(f"{name}: {len(seeds)} runs x {cfg['steps']} steps, floor (gather + minibatch GEMM, "
              f"{per_step} per step) {fl:.2f} s; warm-up 130 steps {warm:.2f} s", flush=True)
        _dump(result, args.out)
    floor = sum(floors)
    result["floor_s"] = floor
    for rep in range(args.reps):
        if rep and time.perf_counter() - t_start > args.budget_s:
            print(f"budget of {args.budget_s:.0f} s reached: {rep} repetitions", flush=True)
            break
        times = []
        for name, method, problem, seeds, cfg in gs:
            times.append(engine_s(method, problem, seeds, cfg, args.graph))
            print(f"  rep {rep} {name}: {times[-1]:.2f} s", flush=True)
        total = sum(times)
        rep_floor = sum(floor_s(method, problem, seeds, cfg, 2 if name == "page" else 1)
                        for name, method, problem, seeds, cfg in gs)  # the floor again, for its spread
        result["reps"].append({"group_s": times, "engine_s": total, "floor_s": rep_floor,
                               "ratio_to_floor": total / rep_floor})
        _dump(result, args.out)
        print(f"rep {rep}: engine {total:.2f} s (" + ", ".join(f"{t:.2f}" for t in times)
              + f"), floor {rep_floor:.2f} s, ratio {total / rep_floor:.2f}", flush=True)
    totals = [r["engine_s"] for r in result["reps"]]
    fls = [floor] + [r["floor_s"] for r in result["reps"]]
    ratios = [r["ratio_to_floor"] for r in result["reps"]]
    floor = statistics.median(fls)
    result["floor_s"] = {"min": min(fls), "median": floor, "max": max(fls)}
    result["engine_s"] = {"min": min(totals), "median": statistics.median(totals), "max": max(totals)}
    result["ratio_to_floor"] = {"min": min(ratios), "median": statistics.median(ratios), "max": max(ratios)}
    result["target_engine_s"] = 40.0
    print(f"finite-sum sweep ({size}, {result['machine'].get('gpu', result['machine']['cpu'])}): engine "
          f"median {result['engine_s']['median']:.2f} s [min {result['engine_s']['min']:.2f}, max "
          f"{result['engine_s']['max']:.2f}] over {len(totals)} repetitions; floor median {floor:.2f} s "
          f"[{min(fls):.2f}, {max(fls):.2f}]; ratio median {result['ratio_to_floor']['median']:.2f} "
          f"[{min(ratios):.2f}, {max(ratios):.2f}]; target <= 40 s", flush=True)
    _dump(result, args.out)
    return result


if __name__ == "__main__":
    main()
