"""Batch invariance on CPU (README, Reproducibility): a run's recorded trajectory is
bitwise the same alone and in a batch of any size at any position, for every problem,
estimator, method and sketch, diverging runs included; and the kernels of
:mod:`solvers.linalg` that make it so, each against the plain kernel it replaces (shown
to break the property)."""
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from experiments.build import build_job
from experiments.conf.schema import group_config, job_config
from solvers.engine import FIELDS, run
from solvers.linalg import bmm, per_matrix, row_sum, run_sum, shared_matmul

# tiny versions of every problem of experiments.problems (logistic at its default size)
PROBLEMS = {
    "quadratic": dict(name="quadratic", m=4, n=3, mu=1.0, L=4.0),
    "quadratic_wide": dict(name="quadratic", m=12, n=10, mu=1.0, L=4.0),  # rank 9: LAPACK eigh, QR
    "counterexample": dict(name="counterexample"),
    "logistic": dict(name="logistic"),
    "federated": dict(name="logistic", m=3, n=4, n_samples=24, n_clients=3),
    "linreg": dict(name="linreg", size="ci"),
    "quadratic_clients": dict(name="quadratic", m=3, n=2, mu=0.5, L=4.0, n_samples=12, n_clients=3,
                              heterogeneity=0.5),
    "l1": dict(name="l1", m=3, n=4),
    "maxaffine": dict(name="maxaffine", m=3, n=4),
}
SMOOTH = ["gd", "sgd_noise", "mvr_noise"]
FINITE_SUM = ["gd", "sgd", "page", "mvr"]
ESTIMATORS = {  # name: (estimator config, compressor config or None)
    "gd": (dict(name="gd"), None), "sgd": (dict(name="sgd", batch=3), None),
    "sgd_noise": (dict(name="sgd", batch=None, noise=0.5), None), "page": (dict(name="page", batch=3), None),
    "mvr": (dict(name="mvr", batch=3, momentum=0.3), None),
    "mvr_noise": (dict(name="mvr", batch=None, noise=0.5, momentum=0.3, init_with="full"), None),
    "subgradient": (dict(name="subgradient"), None),
    "qgd_randk": (dict(name="qgd"), dict(name="randk", k=3)),
    "qgd_dither": (dict(name="qgd"), dict(name="dither", s=2)),
    "qgd_factor": (dict(name="qgd", transmit="factor"), dict(name="natural")),
    "marina": (dict(name="marina", q=0.3), dict(name="randk", k=3)),
    "ef21": (dict(name="ef21"), dict(name="topk", k=3)),
    "ef21_identity": (dict(name="ef21"), dict(name="identity")),
}
METHODS = {
    "blora": dict(name="bernoulli_lora", p=0.5, rank=1), "blora2": dict(name="bernoulli_lora", p=0.3, rank=2),
    "blora9": dict(name="bernoulli_lora", p=0.5, rank=9),
    "fpft": dict(name="fpft"), "lora": dict(name="lora", rank=1), "asymm": dict(name="asymm_lora", rank=1),
    "cola": dict(name="cola", rank=1, merge_every=2),
}
WEIGHT_SPACE = ["blora", "blora2", "fpft"]


def _combos():
    """(problem, estimator, method, sketch, stepsize rule): every estimator and method on
    the problems it applies to, every sketch, both stepsize rules."""
    out = []
    for prob in ("quadratic", "counterexample", "logistic", "linreg"):
        for est in (SMOOTH if prob in ("quadratic", "counterexample") else FINITE_SUM):
            out += [(prob, est, meth, "gaussian", "constant") for meth in METHODS if meth != "blora9"]
    for est in ("qgd_randk", "qgd_dither", "marina", "ef21", "ef21_identity"):
        out += [("federated", est, meth, "gaussian", "constant") for meth in WEIGHT_SPACE]
    out += [("federated", "qgd_factor", meth, "orthonormal", "constant") for meth in ("blora", "blora2")]
    for prob in ("l1", "maxaffine"):
        out += [(prob, "subgradient", meth, "gaussian", rule)
                for meth in WEIGHT_SPACE for rule in ("constant", "polyak")]
    out += [("quadratic", "gd", "blora2", sketch, "constant")
            for sketch in ("orthonormal", "rademacher", "column", "weighted_column")]
    for est in ("sgd", "page", "mvr", "marina", "ef21_identity"):
        out += [("quadratic_clients", est, meth, "gaussian", "constant") for meth in WEIGHT_SPACE]
    sketches = ("gaussian", "orthonormal", "rademacher", "column")
    out += [("quadratic_wide", "sgd_noise", "blora9", sketch, "constant") for sketch in sketches]
    return out


COMBOS = _combos()


def _job(combo, factor=1.0):
    prob, est, meth, sketch, rule = combo
    est_cfg, comp = ESTIMATORS[est]
    cfg = job_config(**{"stepsize.rule": rule, "stepsize.factor": factor, "steps": 1, "seeds": 1, "seed": 0,
                        "eval_every": 1, "device": "cpu"})
    groups = dict(problem=PROBLEMS[prob], method=METHODS[meth], estimator=est_cfg, sketch=dict(name=sketch),
                  compressor=comp or dict(name="identity"))
    for group, node in groups.items():
        cfg[group] = dict(group_config(group, node["name"]), **node)  # the option's defaults, then ours
    if cfg["problem"].get("size") == "${size}":
        cfg["problem"]["size"] = "ci"
    return build_job(cfg)


def _same(a, b):
    return a.shape == b.shape and np.array_equal(a, b, equal_nan=True)


def _assert_rows_equal(alone, batch, k, what):
    """Run 0 of ``alone`` and run k of ``batch``: every recorded field but the wall
    time, and the final iterate, bitwise (NaN equal to NaN)."""
    for f in FIELDS:
        if f != "time_s":
            assert _same(alone[f][0], batch[f][k]), f"{what}: field {f} differs\n{alone[f][0]}\n{batch[f][k]}"
    assert _same(alone.W[0].numpy(), batch.W[k].numpy()), f"{what}: final iterate differs"


def _check(combo, seed, others, position, *, factor=1.0, steps=4, eval_every=2, track=True):
    job = _job(combo, factor)
    P = job.problem
    kw = dict(steps=steps, eval_every=eval_every, track_every_step=track)
    seeds = list(others[:position]) + [seed] + list(others[position:])
    alone = run(job.method, P, P.W0, [seed], **kw)
    batch = run(job.method, P, P.W0, seeds, **kw)
    _assert_rows_equal(alone, batch, position, f"{combo} seed {seed} at {position} of {seeds}")
    return alone, batch


@pytest.mark.parametrize("combo", COMBOS, ids=["-".join(c) for c in COMBOS])
def test_every_combination_alone_equals_in_a_batch(combo):
    _check(combo, seed=3, others=[11, 5, 8, 0], position=2)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(combo=st.sampled_from(COMBOS), size=st.sampled_from([2, 5, 7]), data=st.data(),
       factor=st.sampled_from([0.5, 1.0, 40.0]), track=st.booleans(), steps=st.integers(1, 5),
       eval_every=st.integers(1, 3))
def test_property_alone_equals_in_any_batch(combo, size, data, factor, track, steps, eval_every):
    """Any batch composition (size 2, 5 or 7, any position, any other seeds), stepsizes
    that make runs diverge (factor 40) or not, with and without per-step tracking."""
    seeds = data.draw(st.lists(st.integers(0, 10_000), min_size=size, max_size=size, unique=True))
    position = data.draw(st.integers(0, size - 1))
    _check(combo, seeds[0], seeds[1:], position, factor=factor, steps=steps, eval_every=eval_every, track=track)


def test_diverged_run_rows_do_not_depend_on_the_batch():
    """LoRA on the counterexample at gamma = 0.5/L: some runs blow up, others do not. Every
    run, diverged or not, records the same rows alone and in the mixed batch, on the full
    grid of evaluation points, with frozen epochs (a diverged run stops working)."""
    combo = ("counterexample", "gd", "lora", "gaussian", "constant")
    job = _job(combo, factor=0.5)
    P, seeds = job.problem, [0, 1, 2, 3, 4, 5, 6]
    kw = dict(steps=12, eval_every=3)
    batch = run(job.method, P, P.W0, seeds, **kw)
    final = batch["diverged"][:, -1]
    assert final.any() and not final.all()  # the batch mixes diverging and converging runs
    for k, s in enumerate(seeds):
        alone = run(job.method, P, P.W0, [s], **kw)
        assert alone["iteration"].shape == (1, 5)  # 0, 3, 6, 9, 12 even when it diverged
        _assert_rows_equal(alone, batch, k, f"seed {s}")
    for k in np.flatnonzero(final):  # frozen from the first point that saw it diverge
        first = int(np.argmax(batch["diverged"][k]))
        assert (batch["epochs"][k, first:] == batch["epochs"][k, first]).all()
        assert _same(batch["loss"][k, first:], np.full(5 - first, batch["loss"][k, first]))


# ----------------------------------------------------------------------------- kernels


def test_contractions_do_not_depend_on_the_layout_of_their_operands():
    """The PAGE-on-logistic bug: alone, ``(S - Y).transpose(1, 2).reshape(C, -1)`` is a
    view with transposed strides, in a batch a contiguous copy; the plain mul-sum laid
    its product out like its operands and summed it in another order."""
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(200, 10, generator=gen, dtype=torch.float64)
    S = torch.rand(5, 200, 4, generator=gen, dtype=torch.float64)
    batch = shared_matmul(S.transpose(1, 2).reshape(20, 200), X)
    plain = []
    for r in range(5):
        view = S[r:r + 1].transpose(1, 2).reshape(4, 200)  # a view, strides (1, 4)
        assert view.stride() == (1, 4)
        assert torch.equal(shared_matmul(view, X), batch[4 * r:4 * r + 4])
        plain.append(torch.equal((view[:, None, :] * X.T[None]).sum(-1), batch[4 * r:4 * r + 4]))
    assert not all(plain)  # the old kernel: layout-dependent
    a = torch.randn(4, 6, 5, generator=gen, dtype=torch.float64)
    b = torch.randn(4, 5, 3, generator=gen, dtype=torch.float64)
    at = a.transpose(1, 2).contiguous().transpose(1, 2)  # same values, column-major runs
    assert torch.equal(bmm(at, b), bmm(a, b)) and torch.equal(bmm(at[1:2], b[1:2])[0], bmm(a, b)[1])


def test_one_output_reductions_stay_off_the_threaded_path():
    """A sum with ONE output over >= 32768 terms is split across threads (another order
    than the per-row sum of a batch); row_sum and run_sum never take that path."""
    torch.set_num_threads(2)  # restored by the conftest fixture
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(3, 200, 201, generator=gen, dtype=torch.float64)
    runs, rows = run_sum(x), row_sum(x.reshape(3, -1))
    plain = [torch.equal(x[r:r + 1].sum((-2, -1))[0], x.sum((-2, -1))[r]) for r in range(3)]
    assert not all(plain)  # the plain kernel is batch-dependent here
    for r in range(3):
        assert torch.equal(run_sum(x[r:r + 1])[0], runs[r]) and torch.equal(row_sum(x[r].reshape(-1)), rows[r])
        assert torch.equal(run_sum(x[r:r + 1].transpose(1, 2).contiguous().transpose(1, 2))[0], runs[r])
    torch.testing.assert_close(runs, x.sum((-2, -1)), rtol=1e-13, atol=0)


def test_per_run_blas_and_lapack_do_not_depend_on_the_position_in_the_batch():
    """MKL's GEMM, GEMV and eigh give other bits for an operand at another memory
    alignment, i.e. at another position of a batch; bmm's per-run loop, shared_matmul's
    and per_matrix work on aligned copies."""
    gen = torch.Generator().manual_seed(2)
    a = torch.randn(6, 257, 255, generator=gen, dtype=torch.float64)  # 257*255 doubles: odd offsets
    b = torch.randn(6, 255, 3, generator=gen, dtype=torch.float64)
    full = bmm(a, b)
    torch.testing.assert_close(full, a @ b, rtol=1e-12, atol=1e-12)
    old = torch.empty(6, 257, 3, dtype=torch.float64)
    for r in range(6):  # the old loop: GEMM into the slices of one output buffer
        torch.mm(a[r], b[r], out=old[r])
    assert not all(torch.equal(old[r], torch.mm(a[r].clone(), b[r].clone())) for r in range(6))
    V = torch.randn(6, 255, generator=gen, dtype=torch.float64)
    M = torch.randn(255, 300, generator=gen, dtype=torch.float64)
    sm = shared_matmul(V, M)
    G = torch.randn(8, 40, 9, generator=gen, dtype=torch.float64)
    G = G.transpose(1, 2) @ G  # 9 x 9: matrix i of a batch at offset 81 i
    ev, U = per_matrix(torch.linalg.eigh, G)
    plain_U = torch.linalg.eigh(G)[1]
    assert not all(torch.equal(torch.linalg.eigh(G[i:i + 1])[1][0], plain_U[i]) for i in range(8))
    for r in range(6):
        assert torch.equal(bmm(a[r:r + 1], b[r:r + 1])[0], full[r])
        assert torch.equal(shared_matmul(V[r:r + 1], M)[0], sm[r])
    for i in range(8):
        e1, U1 = per_matrix(torch.linalg.eigh, G[i:i + 1])
        assert torch.equal(e1[0], ev[i]) and torch.equal(U1[0], U[i])
    torch.testing.assert_close(U @ torch.diag_embed(ev) @ U.transpose(1, 2), G, rtol=1e-12, atol=1e-10)
