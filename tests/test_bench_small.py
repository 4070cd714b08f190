"""benchmarks/bench_small.py compares the engine with ONE step written twice, in numpy and in
torch's eager operations (plain_loop): fed the same random numbers, the two are the same
computation (to rounding), and their step is Bernoulli-LoRA-GD's (the loss decreases on the
benchmark's quadratic like the engine's run does)."""
import itertools

import numpy as np
import torch

from benchmarks.bench_small import plain_loop
from experiments.problems import make_problem
from solvers.engine import run
from solvers.estimators import GD
from solvers.methods import BernoulliLoRA


def _draws(seed, lib):
    gen = np.random.default_rng(seed)
    coins = iter(gen.random(1000))
    normals = itertools.cycle(gen.standard_normal((1000, 16, 2)))

    def randn(shape):
        z = next(normals)
        z = z if shape[0] == 16 else z.T
        return z.copy() if lib == "numpy" else torch.from_numpy(z.copy())

    solve = np.linalg.solve if lib == "numpy" else torch.linalg.solve
    return dict(rand=lambda: float(next(coins)), randn=randn, solve=solve)


def test_numpy_and_torch_loops_are_one_step():
    prob = make_problem("quadratic", m=16, n=16, mu=1.0, L=4.0)
    Q, ws, w0 = prob.Q.numpy(), prob.W_star.reshape(-1).numpy(), prob.W0.reshape(-1).numpy()
    a = plain_loop(Q, ws, w0.copy(), 16, 16, 2, 0.5, 0.25, 200, 10, **_draws(1, "numpy"))
    b = plain_loop(*(torch.from_numpy(x.copy()) for x in (Q, ws, w0)), 16, 16, 2, 0.5, 0.25, 200, 10,
                   **_draws(1, "torch"))
    np.testing.assert_allclose(np.array(b), np.array(a), rtol=1e-9)
    engine = run(BernoulliLoRA(p=0.5, rank=2, estimator=GD(), stepsize=0.25), prob, prob.W0, list(range(8)),
                 steps=200, eval_every=10)
    # the same linear rate: the final losses lie within the engine's spread over 8 seeds (x 10)
    lo, hi = engine["loss"][:, -1].min(), engine["loss"][:, -1].max()
    assert lo / 10 < a[-1][1] < hi * 10 and a[-1][1] < 1e-3 * a[0][1]
