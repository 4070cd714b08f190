"""CUDA paths against the CPU reference (skipped without a GPU; run on the GPU machine).

On CUDA the suite takes paths of its own: the sync-free step (both sketch sides drawn,
Cholesky Gram solves for sketches of full rank almost surely, every estimator branch
computed and selected per run), one GEMM per contraction, the fused path (block draws,
captured CUDA graphs; solvers.fused), and optionally random-number kernels compiled by
torch.compile (rng.set_compile). These tests pin them to the CPU numbers (integers
bitwise, floats to rounding) and the fused path to the engine's own loop on CUDA
(bitwise, for every estimator, compressor, sketch and both stepsize rules).
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
from tests.test_fused_estimators import CASES, COMPARED, SEEDS

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.fixture(params=[False, True], ids=["eager", "compiled"])
def compile_flag(request):
    rng.set_compile(request.param)
    yield request.param
    rng.set_compile(False)


def test_rng_cuda_equals_cpu(compile_flag):
    """Eager (default) and compiled CUDA draws equal the CPU draws, blocks of steps too."""
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
    block = range(7, 40)
    assert torch.equal(rng.subset(seeds, rng.Stream.MINIBATCH, block, 1000, 10),
                       rng.subset(seeds.cuda(), rng.Stream.MINIBATCH, block, 1000, 10).cpu())
    z_block = rng.normal(seeds.cuda(), rng.Stream.SKETCH, block, (16, 2))
    for k, t in enumerate(block):  # a block's slice is bitwise the one-step draw, on CUDA too
        assert torch.equal(z_block[:, k], rng.normal(seeds.cuda(), rng.Stream.SKETCH, t, (16, 2)))


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


def _loop_and_graph(method, prob, seeds, **kw):
    """The engine's own loop and the fused, graph-captured path, both on CUDA."""
    loop = run(method, prob, prob.W0, seeds, graph="off", **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a failed capture warns: fail the test instead
        graph = run(method, prob, prob.W0, seeds, graph="on", **kw)
    return loop, graph


def _bitwise(loop, graph, what=""):
    for f in COMPARED:
        a, b = loop[f], graph[f]
        if not np.array_equal(a, b, equal_nan=True):
            rel = np.nanmax(np.abs(a - b) / np.maximum(np.abs(a), 1e-300))
            raise AssertionError(f"{what} {f}: fused differs from the loop, max relative difference {rel:.3g}")
    assert torch.equal(loop.W, graph.W), what


@pytest.mark.parametrize("sketch", ["gaussian", "orthonormal"])
def test_graph_captured_step_equals_engine_loop(sketch):
    """solvers.fused on CUDA (block draws + captured CUDA graph) against the engine's own
    loop on CUDA, over several block refills, with one diverging run."""
    prob = make_problem("linreg", size="ci").to("cuda", torch.float64)
    R = 10
    ps = tuple(float(p) for p in np.linspace(0.0, 1.0, R))
    gammas = tuple([1.5 / prob.L] * (R - 1) + [40.0 / prob.L])
    method = BernoulliLoRA(p=ps, rank=2, sketch=sketch, estimator=GD(), stepsize=gammas)
    loop, graph = _loop_and_graph(method, prob, list(range(R)), steps=150, eval_every=10)
    np.testing.assert_array_equal(graph["diverged"], loop["diverged"])
    assert loop["diverged"][-1, -1] and not loop["diverged"][:-1, -1].any()
    if sketch == "gaussian":
        _bitwise(loop, graph, sketch)
    else:  # Haar: a batched QR of R x 64 matrices (a block) against R (a step) may round otherwise
        for field in ("loss", "grad_norm_sq", "avg_grad_norm_sq", "min_grad_norm_sq"):
            scale = np.nanmax(np.abs(loop[field][:-1, 1]))
            np.testing.assert_allclose(graph[field][:-1], loop[field][:-1], rtol=1e-9, atol=1e-12 * scale,
                                       err_msg=field)
    fpft = FPFT(estimator=GD(), stepsize=1.0 / prob.L)
    _bitwise(*_loop_and_graph(fpft, prob, [0, 1], steps=70, eval_every=10), "fpft")


@pytest.fixture(scope="module")
def cuda_probs():
    from experiments.problems import make_problem as mk

    return {"linreg": mk("linreg", size="ci").to("cuda", torch.float64),
            "fed": mk("logistic", m=3, n=4, n_samples=24, n_clients=3, heterogeneity=0.5).to("cuda", torch.float64),
            "quad": mk("quadratic", m=6, n=5, mu=0.5, L=4.0, seed=2).to("cuda", torch.float64),
            "l1": mk("l1", m=3, n=4).to("cuda", torch.float64)}


@pytest.mark.parametrize("track", [True, False])
@pytest.mark.parametrize("case", sorted(CASES))
def test_every_estimator_graph_equals_loop(cuda_probs, case, track):
    """Every estimator and compressor (tests/test_fused_estimators.py's cases), mixed
    coins, rank 2, 150 steps (blocks of 64: two refills and a partial block), captured
    graphs against the loop on CUDA, bitwise; and (tracked, smooth) the CPU loop to rounding."""
    name, make = CASES[case]
    prob = cuda_probs[name]
    L = prob.L if np.isfinite(prob.L) else 20.0
    method = BernoulliLoRA(p=(0.0, 0.3, 0.7, 1.0), rank=2, estimator=make(), stepsize=tuple([0.5 / L] * 4))
    loop, graph = _loop_and_graph(method, prob, SEEDS, steps=150, eval_every=7, track_every_step=track)
    _bitwise(loop, graph, case)
    if name == "l1" or not track:  # l1: rounding may flip a subgradient's sign later on
        return
    cpu_prob = make_problem(**_spec(name))
    cpu = run(method, cpu_prob, cpu_prob.W0, SEEDS, steps=150, eval_every=7, track_every_step=track)
    np.testing.assert_array_equal(cpu["epochs"], graph["epochs"])
    np.testing.assert_allclose(graph["loss"], cpu["loss"], rtol=1e-8, atol=1e-12)


def _spec(name):
    return {"linreg": dict(name="linreg", size="ci"),
            "fed": dict(name="logistic", m=3, n=4, n_samples=24, n_clients=3, heterogeneity=0.5),
            "quad": dict(name="quadratic", m=6, n=5, mu=0.5, L=4.0, seed=2), "l1": dict(name="l1", m=3, n=4)}[name]


@pytest.mark.parametrize("sketch", ["gaussian", "rademacher", "column", "weighted_column"])
def test_every_sketch_graph_equals_loop(cuda_probs, sketch):
    from solvers.estimators import PAGE
    from solvers.sketches import WeightedColumnSketch

    sk = WeightedColumnSketch(left_decay=0.7, right_decay=0.9) if sketch == "weighted_column" else sketch
    prob = cuda_probs["linreg"]
    for est in (SGD(batch=10), PAGE(batch=10)):
        method = BernoulliLoRA(p=(0.2, 0.5, 0.5, 0.8), rank=3, sketch=sk, estimator=est,
                               stepsize=tuple([0.5 / prob.L] * 4))
        _bitwise(*_loop_and_graph(method, prob, SEEDS, steps=100, eval_every=9), f"{sketch} {est.name}")


@pytest.mark.parametrize("case", ["gd", "sgd_noise", "mvr_noise_full"])
def test_polyak_graph_equals_loop(cuda_probs, case):
    prob = cuda_probs["quad"]
    est = CASES[case][1]()
    for method in (BernoulliLoRA(p=(0.0, 0.4, 0.6, 1.0), rank=2, estimator=est, stepsize=(0.5, 0.8, 1.0, 1.2),
                                 stepsize_rule="polyak", f_star=prob.f_star),
                   FPFT(estimator=est, stepsize=0.9, stepsize_rule="polyak", f_star=prob.f_star)):
        _bitwise(*_loop_and_graph(method, prob, SEEDS, steps=100, eval_every=10), f"polyak {case} {method.name}")


def test_paper_shaped_finite_sum_graph_equals_loop():
    """The finite-sum sweep's shape at ci size with many runs (mixed p and stepsizes, one
    diverging): SGD and PAGE, batch 10, blocks of 64."""
    from solvers.estimators import PAGE

    prob = make_problem("linreg", size="ci").to("cuda", torch.float64)
    R = 40
    ps = tuple(float(p) for p in np.resize([0.0, 0.1, 0.5, 0.9, 1.0], R))
    gammas = tuple([1 / 16 / prob.L] * (R - 1) + [300.0 / prob.L])
    for est in (SGD(batch=10), PAGE(batch=10)):
        method = BernoulliLoRA(p=ps, rank=1, estimator=est, stepsize=gammas)
        loop, graph = _loop_and_graph(method, prob, list(range(R)), steps=400, eval_every=2)
        assert loop["diverged"][-1, -1]
        _bitwise(loop, graph, est.name)
