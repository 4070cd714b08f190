"""The paper's matrix-level sweeps as lists of job configurations (docs/theory.md#exp-linreg).

Each function returns the configurations of :func:`experiments.conf.schema.job_config`
(the very mappings the Hydra app would compose for the same overrides), so a sweep
run by :mod:`experiments.sweep` and the same jobs run through Hydra share config
hashes. ``size='ci'`` shrinks everything to seconds; ``size='paper'`` is the
paper's set-up.
"""
from __future__ import annotations

from experiments.conf.check import check_value
from experiments.conf.schema import RunConf, job_config

PAPER_P = (0.01, 0.2, 0.4, 0.6, 0.8, 0.99)
PAPER_RANKS = (1, 2, 4, 8, 16, 32)
#: runs per job when ``seeds`` is not given, by size
SEEDS = {"ci": 3, "paper": 20}


def _check_size(size):
    check_value("size", size, str, False, RunConf.__dataclass_fields__["size"].metadata)


def _given(value, default):
    """The caller's value when given (0 included: the schema refuses it), else the default."""
    return default if value is None else value


def linreg_gd(*, size="ci", device="auto", seeds=None, steps=None, factors=(1.0, 2.0)):
    """GD figure: FPFT, RAC-LoRA (p = 0 and p = 1) and Bernoulli-LoRA-GD for the
    six p values, ranks 1..32 (ci: 1, 2, 4), stepsize factor in {1, 2}/L, 4000
    iterations (ci: 200), metric ||grad f||^2 vs iterations."""
    _check_size(size)
    paper = size == "paper"
    ranks = PAPER_RANKS if paper else (1, 2, 4)
    seeds = _given(seeds, SEEDS[size])
    steps = _given(steps, 4000 if paper else 200)
    common = {"size": size, "device": device, "seeds": seeds, "steps": steps,
              "eval_every": 40 if paper else 10, "track_every_step": True}
    cfgs = []
    for factor in factors:
        cfgs.append(job_config(problem="linreg", method="fpft", **common, **{"stepsize.factor": factor}))
        for rank in ranks:
            for p in (0.0,) + PAPER_P + (1.0,):
                cfgs.append(job_config(problem="linreg", method="bernoulli_lora", **common,
                                       **{"stepsize.factor": factor, "method.p": p, "method.rank": rank}))
    return cfgs


def linreg_finite_sum(*, size="ci", device="auto", seeds=None, steps=None):
    """Finite-sum figure: Bernoulli-LoRA-SGD and -PAGE (p in {0.1, 0.5, 0.9}) and
    RAC-LoRA-SGD (p = 0, 1), rank 1, minibatch 100 (ci: 10) without replacement,
    PAGE with q = b/(b+N), at the paper's tuned stepsize factors (SGD 1/16, PAGE 1),
    over 200 epochs (ci: 20; SGD: b/N epochs a step; PAGE: about q + (1-q) 2b/N),
    or ``steps`` steps for both estimators when given."""
    _check_size(size)
    paper = size == "paper"
    seeds = _given(seeds, SEEDS[size])
    batch = 100 if paper else 10
    n_fine = 10000 if paper else 200
    epochs = 200 if paper else 20
    q = batch / (batch + n_fine)
    sgd_steps = _given(steps, int(epochs * n_fine / batch))
    page_steps = _given(steps, int(epochs / (q + (1 - q) * 2 * batch / n_fine)))
    common = {"size": size, "device": device, "seeds": seeds, "track_every_step": True}
    cfgs = []
    for est, factor, n_steps in (("sgd", 1 / 16, sgd_steps), ("page", 1.0, page_steps)):
        for p in (0.0, 0.1, 0.5, 0.9, 1.0):
            if est == "page" and p in (0.0, 1.0):
                continue
            cfgs.append(job_config(problem="linreg", method="bernoulli_lora", estimator=est, **common,
                                   steps=n_steps, eval_every=max(1, n_steps // 200),
                                   **{"stepsize.factor": factor, "method.p": p, "method.rank": 1,
                                      "estimator.batch": batch}))
    return cfgs


SWEEPS = {"linreg_gd": linreg_gd, "linreg_finite_sum": linreg_finite_sum}
