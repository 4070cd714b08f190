"""README's performance table, generated from the benchmark outputs kept in the repository.

    python scripts/bench_table.py            # print the block
    python scripts/bench_table.py --write    # rewrite README.md between the BENCH markers
    python scripts/bench_table.py --check    # exit 1 if README.md's block is not the generated one

Every cell is read from a raw file under ``paper_results/`` (named in the block's
"Sources" line of its row), never typed by hand: rerun a benchmark with ``--out`` into
that file, then ``--write``. ``tests/test_bench_table.py`` checks that README.md holds the
generated block.
"""
from __future__ import annotations

import argparse
import csv
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- BENCH -->", "<!-- /BENCH -->"


def _json(root, rel):
    return json.loads((root / "paper_results" / rel).read_text())


def _derived(root, section, quantity):
    with open(root / "paper_results" / "derived_numbers.csv") as fh:
        for row in csv.DictReader(fh):
            if row["section"] == section and row["quantity"] == quantity:
                return float(row["value"])
    raise KeyError(f"paper_results/derived_numbers.csv: no {section!r} / {quantity!r}")


def _mnist_wall(root, rel="h200/real_model/log.txt"):
    m = re.search(r"^mnist_matched wall ([\d.]+) s", (root / "paper_results" / rel).read_text(), re.M)
    return float(m.group(1))


def _spread(s, fmt="{:.2f}"):
    return f"{fmt.format(s['median'])} [{fmt.format(s['min'])}, {fmt.format(s['max'])}]"


def rows(root: Path = ROOT):
    """(what, CPU cell, GPU cell, sources) of each row."""
    cc, gc = _json(root, "cpu/bench_core_cpu.json"), _json(root, "h200/sweeps/bench_core_cuda.json")
    out = []
    p, q = cc["projection"], gc["projection"]
    out.append((f"H_B G at m = n = {p['m']}, r = {p['r']}: factored vs explicit m x m projector",
                f"{1e3 * p['factored_s']:.2f} ms vs {1e3 * p['explicit_s']:.1f} ms: **{p['speedup']:.1f}x**",
                f"{1e3 * q['factored_s']:.2f} ms vs {1e3 * q['explicit_s']:.2f} ms ({q['speedup']:.1f}x: both are "
                "launch-bound at this size)", ["cpu/bench_core_cpu.json", "h200/sweeps/bench_core_cuda.json"]))
    b, c = cc["batching"], gc["batching"]
    out.append((f"{b['runs']} runs of Bernoulli-LoRA-GD ({b['m']} x {b['n']} quadratic, r = {b['rank']}, "
                f"{b['steps']} steps): one batched engine vs {b['runs']} engines of one run",
                f"{b['batched_s']:.2f} s vs {b['one_by_one_s']:.1f} s: **{b['throughput_ratio']:.1f}x** throughput",
                f"{c['batched_s']:.2f} s vs {c['one_by_one_s']:.1f} s: **{c['throughput_ratio']:.1f}x** throughput",
                ["cpu/bench_core_cpu.json", "h200/sweeps/bench_core_cuda.json"]))
    small = root / "paper_results" / "cpu" / "bench_small_cpu.json"
    if small.exists():
        s = json.loads(small.read_text())
        ms, r = s["ms_per_step_wall"], s["ratios_wall"]
        pr, load = s["problem"], s["machine"]["load_at_start"]
        out.append((f"one Bernoulli-LoRA-GD run at d = {pr['d']} ({pr['m']} x {pr['n']} quadratic, "
                    f"r = {s['method']['rank']}): engine vs a plain numpy loop of the same step, ms/step "
                    f"(wall clock, median [min, max] of {s['reps']}; {s['machine']['threads']} threads, "
                    f"load {load[0]:g} on {s['machine']['cores']} cores)",
                    f"{_spread(ms['single'], '{:.3f}')} vs {_spread(ms['numpy'], '{:.3f}')}: "
                    f"**{r['single_over_numpy']['median']:.1f}x** (target <= {s['targets']['single_over_numpy']:g})",
                    "", ["cpu/bench_small_cpu.json"]))
        if "torch_eager_floor_over_numpy" in r:
            out.append(("that run's general engine loop (`graph=off`, the same numbers) vs its lean path "
                        "(`solvers/lean.py`); the numpy loop's step written with torch's eager operations "
                        "(no engine) vs the numpy loop",
                        f"{_spread(r['general_loop_over_single'], '{:.1f}')}x; "
                        f"{_spread(r['torch_eager_floor_over_numpy'], '{:.1f}')}x",
                        "", ["cpu/bench_small_cpu.json"]))
        out.append((f"{s['runs']} batched runs vs {s['runs']} single runs of that problem (throughput, "
                    "batch invariance kept)",
                    f"**{_spread(r['batched_throughput'], '{:.1f}')}x** (target >= "
                    f"{s['targets']['batched_throughput']:g})", "", ["cpu/bench_small_cpu.json"]))
        if "batched_fast_throughput" in r:
            t = s["targets"]
            out.append(("the same two ratios in fast mode (`--fast-cpu`, `solvers.linalg.set_invariant(False)`: "
                        "for a problem with a numpy oracle the numpy iteration of `solvers/lean.py`, one BLAS "
                        "call per batch; results differ in the last bits, not batch-invariant)",
                        f"**{_spread(r['single_fast_over_numpy'], '{:.1f}')}x** (target <= "
                        f"{t['single_over_numpy']:g}); **{_spread(r['batched_fast_throughput'], '{:.1f}')}x** "
                        f"(target >= {t['batched_throughput']:g})",
                        "", ["cpu/bench_small_cpu.json"]))
    gcpu, ggpu = _json(root, "cpu/bench_gradient_cpu.json"), _json(root, "h200/sweeps/bench_gradient_cuda.json")
    out.append((f"linreg gradient of {gcpu['gradient']['runs']} runs (d = {gcpu['gradient']['d']}) vs dense fp64 GEMM",
                f"{1e3 * gcpu['gradient']['tflops']:.0f} vs {1e3 * gcpu['gemm_peak']['tflops']:.0f} GFLOP/s "
                f"({gcpu['ratio']:.2f})",
                f"{ggpu['gradient']['tflops']:.1f} vs {ggpu['gemm_peak']['tflops']:.1f} TFLOP/s "
                f"(**{ggpu['ratio']:.2f}**)",
                ["cpu/bench_gradient_cpu.json", "h200/sweeps/bench_gradient_cuda.json"]))
    e = _json(root, "h200/fused/bench_engine_cuda.json")
    out.append((f"engine step, {e['runs']} runs, rank {e['rank']}, {e['size']} linreg", "",
                f"fused CUDA graph **{e['graph']['ms_per_step']:.2f} ms**; loop "
                f"{e['loop_compiled']['ms_per_step']:.2f} ms (compiled RNG), {e['loop_eager']['ms_per_step']:.2f} ms "
                "(eager)", ["h200/fused/bench_engine_cuda.json"]))
    tc, tg = _json(root, "cpu/linreg_gd_timing.json"), _json(root, "h200/fused/linreg_gd_timing.json")
    gemm_min = _derived(root, "A1 CPU", "minutes at the dense GEMM peak")
    out.append((f"the paper's linreg GD sweep ({tc['jobs']} jobs, 1,960 runs x 4000 steps)",
                f"{tc['wall_s'] / 60:.1f} min (the fp64 GEMMs alone need {gemm_min:.1f} min at peak)",
                f"**{tg['engine_s']:.1f} s** engine, {tg['wall_s']:.1f} s wall",
                ["cpu/linreg_gd_timing.json", "derived_numbers.csv", "h200/fused/linreg_gd_timing.json"]))
    fs = _json(root, "h200/perf/bench_finite_sum_cuda.json")
    groups = ", ".join(f"{g['estimator'].upper()} {g['runs']} runs x {g['steps']:,} steps" for g in fs["groups"])
    out.append((f"the paper's finite-sum sweep ({groups}; engine time, median [min, max] of {len(fs['reps'])}) "
                "vs its floor (the minibatch gather + GEMM alone)", "",
                f"**{_spread(fs['engine_s'], '{:.1f}')} s** (target <= {fs['target_engine_s']:g} s); floor "
                f"{fs['floor_s']['median']:.2f} s, ratio {_spread(fs['ratio_to_floor'])}",
                ["h200/perf/bench_finite_sum_cuda.json"]))
    ct = _json(root, "h200/perf/bench_compile_tax_cuda.json")
    out.append((f"compile tax of a fresh process (first minus second engine call, SGD + PAGE + GD, "
                f"{len(ct['reps'])} processes)", "",
                f"**{_spread(ct['tax_per_process_s'])} s** (target < {ct['target_s']:g} s)",
                ["h200/perf/bench_compile_tax_cuda.json"]))
    out.append(("the full MNIST real-model table (17 configurations x 20 seeds, 50 epochs, paper step budget)", "",
                f"{_mnist_wall(root):.0f} s wall", ["h200/real_model/log.txt"]))
    return out


def _machines(root, sources):
    """One description per distinct machine recorded in the JSON sources."""
    out = []
    for rel in sources:
        if not rel.endswith(".json"):
            continue
        d = _json(root, rel)
        info = d.get("machine") if isinstance(d.get("machine"), dict) else {}
        dev = info.get("gpu") or d.get("gpu") or (d["device"] if str(d.get("device", "")).startswith("NVIDIA") else
                                                   info.get("cpu", "CPU"))
        threads, torch_version = info.get("threads", d.get("threads")), info.get("torch", d.get("torch"))
        if threads is None or torch_version is None:
            continue
        text = f"{dev} (torch {torch_version}, {threads} threads)"
        if text not in out:
            out.append(text)
    return out


def block(root: Path = ROOT) -> str:
    """The generated text between the markers (markers included)."""
    lines = [BEGIN, "| what | 2-core CPU (CI-like) | H200 GPU |", "|---|---|---|"]
    sources = []
    for what, cpu, gpu, src in rows(root):
        lines.append(f"| {what} | {cpu} | {gpu} |")
        sources += [s for s in src if s not in sources]
    lines += ["", "Generated by `python scripts/bench_table.py --write` from the raw outputs "
              + ", ".join(f"`paper_results/{s}`" for s in sources) + ". Machines, as recorded there: "
              + "; ".join(_machines(root, sources)) + ".", END]
    return "\n".join(lines)


def replace_block(text: str, new: str) -> str:
    i, j = text.find(BEGIN), text.find(END)
    if i < 0 or j < i:
        raise ValueError(f"README.md: no {BEGIN} ... {END} block")
    return text[:i] + new + text[j + len(END):]


def current_block(text: str) -> str:
    i, j = text.find(BEGIN), text.find(END)
    if i < 0 or j < i:
        raise ValueError(f"README.md: no {BEGIN} ... {END} block")
    return text[i:j + len(END)]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python scripts/bench_table.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--readme", default=str(ROOT / "README.md"))
    ap.add_argument("--root", default=str(ROOT), help="repository root whose paper_results/ is read")
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true")
    mode.add_argument("--check", action="store_true")
    args = ap.parse_args(argv)
    new = block(Path(args.root))
    readme = Path(args.readme)
    if args.write:
        text = replace_block(readme.read_text(), new)
        tmp = readme.with_name(readme.name + ".tmp")
        tmp.write_text(text)
        tmp.replace(readme)
    elif args.check:
        if current_block(readme.read_text()) != new:
            print(f"error: {readme}: the BENCH block differs from the benchmark outputs; "
                  "run python scripts/bench_table.py --write", file=sys.stderr)
            return 1
    else:
        print(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
