"""The authors'-code linreg variant against the stated f, measured (docs/linreg_authors.md).

    python scripts/linreg_authors_check.py [--size ci|paper] [--device cpu|cuda]

Prints, for both variants: ||W0||, the recorded ||grad||^2 at W0 (stated: ||grad f||^2;
authors: ||grad f - A^T b/N||^2) and their ratios; ||A^T b/N||^2; then runs the p = 0.5
Bernoulli-LoRA-SGD job of experiment=linreg_finite_sum_authors (the finite-sum figure on
the authors' variant) and prints, at its last iterate, the recorded ||grad f - A^T b/N||^2
next to the true ||grad f||^2 (median and range over its seeds).
"""
from __future__ import annotations

import argparse
import sys

import torch


def main(argv=None):
    from experiments.build import build_job
    from experiments.problems.linreg import make_linreg
    from experiments.presets import expand
    from solvers.engine import run

    ap = argparse.ArgumentParser(prog="python scripts/linreg_authors_check.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="ci", choices=("ci", "paper"), help="problem size (default: ci)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    args = ap.parse_args(argv)
    s, a = (make_linreg(args.size, device=args.device, variant=v) for v in ("stated", "authors"))
    gs, ga = (float((p.grad(p.W0[None]) ** 2).sum()) for p in (s, a))
    c2 = float(s.c @ s.c)
    print(f"size={args.size} d={s.W0.numel()} N={s.n_samples}")
    print(f"||W0||: stated {float(s.W0.norm()):.6g}, authors {float(a.W0.norm()):.6g}, "
          f"ratio {float(a.W0.norm() / s.W0.norm()):.6f}; ||W0_a - 2 W0_s|| / ||2 W0_s|| = "
          f"{float((a.W0 - 2 * s.W0).norm() / (2 * s.W0).norm()):.3e}; max |W0_s| = {float(s.W0.abs().max()):.4g}")
    print(f"recorded ||grad||^2 at W0: stated {gs:.6g}, authors {ga:.6g}, ratio {ga / gs:.6f}")
    print(f"||A^T b/N||^2 = {c2:.6g}")
    (cfg, _), = expand(["experiment=linreg_finite_sum_authors", f"size={args.size}", f"device={args.device}",
                        "method.p=0.5"])
    job = build_job(cfg)
    traj = run(job.method, job.problem, job.problem.W0, job.seeds, steps=cfg["steps"], eval_every=cfg["steps"])
    G = job.problem.grad(traj.W)  # the authors' grad f - c
    recorded = (G ** 2).sum((-2, -1))
    true = ((G + job.problem.c.reshape(job.problem.shape)) ** 2).sum((-2, -1))

    def stats(x):
        x = x.to("cpu")
        return f"median {float(x.median()):.6g} [{float(x.min()):.6g}, {float(x.max()):.6g}]"

    print(f"SGD job (p=0.5, rank 1, batch {cfg['estimator']['batch']}, factor {cfg['stepsize']['factor']}, "
          f"{cfg['steps']} steps, {len(job.seeds)} seeds), last iterate:")
    print(f"  recorded ||grad f - A^T b/N||^2 {stats(recorded)}")
    print(f"  true     ||grad f||^2           {stats(true)}")
    assert torch.allclose(recorded.to("cpu", torch.float64), torch.as_tensor(traj["grad_norm_sq"][:, -1]), rtol=1e-10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
