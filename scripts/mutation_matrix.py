"""Every deliberate break of tests/mutants.py on every job of the shipped presets
experiment=exact_pairs and experiment=exact_isotropic where it changes the run: the
verdicts of :func:`theory.verify.verify` (bound verdict and exact verdict), and the honest
solver's on every job.

    python scripts/mutation_matrix.py [--out paper_results/mutation_matrix.txt]

A break is *flagged* when the bound verdict is ``violated`` or the exact verdict
``disagrees``; the honest solver must never be. tests/test_mutations.py asserts a subset.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests import mutants  # noqa: E402
from theory.verify import verify  # noqa: E402

NAMES = ["honest"] + sorted(mutants.BREAKS) + ["wrong_lambda_bound"]


def verdict(name, cfg):
    if name == "honest":
        table = mutants.run_with(cfg)
    elif name == "wrong_lambda_bound":
        table = mutants.run_with(cfg, adjust=mutants.wrong_lambda_bound)
    else:
        table = mutants.run_with(cfg, mutants.BREAKS[name])
    (v,) = verify(table).to_dict("records")
    return v


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=None, help="also write the matrix to this file")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    lines = [f"# {'break':<24} {'preset':<16} {'job':<40} {'bound verdict':<15} {'exact':<10} {'max|z|':>8}  flagged"]
    counts = {}
    for name in NAMES:
        for preset in mutants.PRESETS:
            for job in mutants.preset_jobs(preset):
                cfg = mutants.preset_config(preset, job)
                if name != "honest" and not mutants.applies(name, cfg):
                    continue
                v = verdict(name, cfg)
                flagged = v["verdict"] == "violated" or v["exact_verdict"] == "disagrees"
                counts.setdefault(name, [0, 0])[0] += flagged
                counts[name][1] += 1
                lines.append(f"{name:<26} {preset:<16} {mutants.label(cfg):<40} {v['verdict']:<15} "
                             f"{v['exact_verdict']:<10} {v['exact_max_abs_z']:8.3g}  {'FLAGGED' if flagged else '-'}")
                print(lines[-1], flush=True)
    for preset in mutants.PRESETS:
        cfg = mutants.preset_config(preset, mutants.preset_jobs(preset)[0])
        lines.append(f"# experiment={preset} size=ci: {cfg['seeds']} seeds, {cfg['steps']} steps")
    lines.append("# verify at confidence 0.99; flagged = bound 'violated' or exact 'disagrees'")
    for name in NAMES:
        lines.append(f"# {name}: flagged on {counts[name][0]} of {counts[name][1]} jobs")
    lines.append(f"# {time.perf_counter() - t0:.0f} s")
    print("\n".join(lines[-len(NAMES) - 2 - len(mutants.PRESETS):]))
    if args.out:
        Path(args.out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
