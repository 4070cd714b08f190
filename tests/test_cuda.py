"""CUDA paths against the CPU reference (skipped without a GPU; run on the GPU machine).

On CUDA the suite takes paths of its own: the random-number kernels compiled by
torch.compile, the sync-free Bernoulli-LoRA direction (both sides drawn, Cholesky
Gram solves for sketches of full rank almost surely), one GEMM per contraction. These
tests pin each of them to the CPU numbers: integers bitwise, floats to rounding.
No Hydra import: the GPU machine has none.
"""
import warnings

import numpy as np
import pytest
import torch

from experiments.problems import make_problem
from solvers import rng
from solvers.engine import run
from solvers.estimators import GD, SGD
from solvers.methods import BernoulliLoRA, FPFT

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.parametrize("compile_flag", ["auto", "0"])
def test_rng_cuda_equals_cpu(monkeypatch, compile_flag):
    """Compiled (default on CUDA) and eager CUDA draws equal the CPU draws."""
    monkeypatch.setenv("BLORA_COMPILE", compile_flag)
    seeds = torch.arange(37) * 7919 + 3
    for step in (0, 5, 2**33 + 1):
        bits_cpu = rng.random_bits(seeds, rng.Stream.SKETCH, step, (13, 3), sub=1)
        bits_gpu = rng.random_bits(seeds.cuda(), rng.Stream.SKETCH, step, (13, 3), sub=1)
        assert torch.equal(bits_cpu, bits_gpu.cpu())
        u_cpu = rng.uniform(seeds, rng.Stream.NOISE, step, (50,))
        assert torch.equal(u_cpu, rng.uniform(seeds.cuda(), rng.Stream.NOISE, step, (50,)).cpu())
        z_cpu = rng.normal(seeds, rng.Stream.SKETCH, step, (64, 4))
        z_gpu = rng.normal(seeds.cuda(), rng.Stream.SKETCH, step, (64, 4)).cpu()
        assert torch.allclose(z_cpu, z_gpu, rtol=1e-13, atol=1e-13)
        assert torch.equal(rng.bernoulli(seeds, rng.Stream.COIN, step, 0.3),
                           rng.bernoulli(seeds.cuda(), rng.Stream.COIN, step, 0.3).cpu())
        assert torch.equal(rng.subset(seeds, rng.Stream.MINIBATCH, step, 100, 10),
                           rng.subset(seeds.cuda(), rng.Stream.MINIBATCH, step, 100, 10).cpu())


@pytest.mark.parametrize("sketch", ["gaussian", "orthonormal", "rademacher", "column"])
def test_bernoulli_lora_trajectory_cuda_equals_cpu(sketch):
    """The sync-free CUDA step follows the CPU trajectory run by run (mixed p per run)."""
    prob = make_problem("quadratic", m=12, n=7, mu=0.5, L=4.0, seed=3)
    ps = tuple(float(p) for p in np.linspace(0.0, 1.0, 9))
    method = BernoulliLoRA(p=ps, rank=2, sketch=sketch, estimator=GD(), stepsize=tuple([1.0 / prob.L] * 9))
    seeds = list(range(100, 109))
    cpu = run(method, prob, prob.W0, seeds, steps=60, eval_every=10)
    gpu_prob = prob.to("cuda", torch.float64)
    gpu = run(method, gpu_prob, gpu_prob.W0, seeds, steps=60, eval_every=10)
    for field in ("loss", "grad_norm_sq", "avg_grad_norm_sq", "dist_sq"):
        np.testing.assert_allclose(gpu[field], cpu[field], rtol=1e-9, atol=1e-12, err_msg=field)
    assert not gpu["diverged"].any()


def test_linreg_sgd_and_fpft_cuda_equal_cpu():
    """Minibatch gradients (subset draws, gathers) and FPFT on the ci linreg problem."""
    prob = make_problem("linreg", size="ci")
    gpu_prob = prob.to("cuda", torch.float64)
    seeds = [0, 1, 2, 3]
    for method in (BernoulliLoRA(p=0.5, rank=1, estimator=SGD(batch=10), stepsize=0.1 / prob.L),
                   FPFT(estimator=GD(), stepsize=1.0 / prob.L)):
        cpu = run(method, prob, prob.W0, seeds, steps=40, eval_every=20)
        gpu = run(method, gpu_prob, gpu_prob.W0, seeds, steps=40, eval_every=20)
        np.testing.assert_allclose(gpu["loss"], cpu["loss"], rtol=1e-9)
        np.testing.assert_allclose(gpu["epochs"], cpu["epochs"], rtol=0)


@pytest.mark.parametrize("sketch", ["gaussian", "orthonormal"])
def test_graph_captured_step_equals_engine_loop(monkeypatch, sketch):
    """solvers.fused on CUDA (block draws + captured CUDA graph) against the engine's own
    loop on CUDA, over several block refills, with one diverging run."""
    prob = make_problem("linreg", size="ci").to("cuda", torch.float64)
    R = 10
    ps = tuple(float(p) for p in np.linspace(0.0, 1.0, R))
    gammas = tuple([1.5 / prob.L] * (R - 1) + [40.0 / prob.L])
    method = BernoulliLoRA(p=ps, rank=2, sketch=sketch, estimator=GD(), stepsize=gammas)
    seeds = list(range(R))
    monkeypatch.setenv("BLORA_GRAPH", "0")
    loop = run(method, prob, prob.W0, seeds, steps=150, eval_every=10)
    monkeypatch.setenv("BLORA_GRAPH", "1")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a failed capture warns: fail the test instead
        graph = run(method, prob, prob.W0, seeds, steps=150, eval_every=10)
    np.testing.assert_array_equal(graph["diverged"], loop["diverged"])
    assert loop["diverged"][-1, -1] and not loop["diverged"][:-1, -1].any()
    for field in ("loss", "grad_norm_sq", "avg_grad_norm_sq", "min_grad_norm_sq"):
        scale = np.nanmax(np.abs(loop[field][:-1, 1]))
        np.testing.assert_allclose(graph[field][:-1], loop[field][:-1], rtol=1e-9, atol=1e-12 * scale, err_msg=field)
    fpft = FPFT(estimator=GD(), stepsize=1.0 / prob.L)
    monkeypatch.setenv("BLORA_GRAPH", "0")
    a = run(fpft, prob, prob.W0, [0, 1], steps=70, eval_every=10)
    monkeypatch.setenv("BLORA_GRAPH", "1")
    b = run(fpft, prob, prob.W0, [0, 1], steps=70, eval_every=10)
    np.testing.assert_allclose(b["loss"], a["loss"], rtol=1e-12)
