"""The non-isotropic ``weighted_column`` sketch on the solvers' own paths: the fused
engine (block draws) and CUDA (compiled random kernels, sync-free step), against the
engine loop on CPU. No Hydra or hypothesis import: the GPU machine has neither."""
import numpy as np
import pytest
import torch

from solvers.sketches import make_sketch


def _method_and_problem():
    from experiments.problems import make_problem
    from solvers.estimators import GD
    from solvers.methods import BernoulliLoRA

    prob = make_problem("quadratic", m=8, n=6, mu=0.5, L=4.0, seed=3)
    ps = tuple(float(p) for p in np.linspace(0.0, 1.0, 5))
    sk = make_sketch("weighted_column", left_decay=0.6, right_decay=0.8)
    return BernoulliLoRA(p=ps, rank=2, sketch=sk, estimator=GD(), stepsize=tuple([1.0 / prob.L] * 5)), prob


def test_fused_block_draws_equal_the_engine_loop():
    """The sketch is eligible for the fused engine (block draws, rank r surely); the
    fused body (eager on CPU) follows the engine loop over several block refills."""
    from solvers import fused
    from solvers.engine import run

    method, prob = _method_and_problem()
    assert fused.eligible(method)
    loop = run(method, prob, prob.W0, list(range(5)), steps=140, eval_every=10, graph="off")
    fusd = run(method, prob, prob.W0, list(range(5)), steps=140, eval_every=10, graph="eager")
    for f in ("loss", "grad_norm_sq", "dist_sq"):
        np.testing.assert_array_equal(fusd[f], loop[f], err_msg=f)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_draws_and_trajectory_equal_cpu():
    """CUDA (eager random kernels, sync-free step, graph-captured fused engine)
    against the CPU: draws bitwise, trajectories to rounding."""
    from solvers.engine import run

    method, prob = _method_and_problem()
    sk, seeds = method.sketch, torch.arange(7) * 31
    for step in (0, range(3, 7)):
        assert torch.equal(sk.sample_left(seeds, step, 9, 3), sk.sample_left(seeds.cuda(), step, 9, 3).cpu())
        assert torch.equal(sk.sample_right(seeds, step, 3, 5), sk.sample_right(seeds.cuda(), step, 3, 5).cpu())
    cpu = run(method, prob, prob.W0, list(range(5)), steps=140, eval_every=10)
    gpu_prob = prob.to("cuda", torch.float64)
    gpu = run(method, gpu_prob, gpu_prob.W0, list(range(5)), steps=140, eval_every=10)
    for f in ("loss", "grad_norm_sq", "dist_sq"):
        np.testing.assert_allclose(gpu[f], cpu[f], rtol=1e-9, atol=1e-12, err_msg=f)
