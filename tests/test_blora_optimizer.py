"""Bernoulli-LoRA as a torch optimiser (solvers/torch_optim.py).

References: the PEFT path (experiments/real_model/peft_switcher.py) on a tiny Llama built
from a config (same weights after K steps, float64 to 1e-12 and float32 to 1e-5, with
AdamW / SGD, weight decay, reset / keep, every = 1, 2, 3, both draw conventions; a broken
layer order or scaling is shown to be caught); the closed-form one-step update
W - lr s^2 B_S B_S^T G / W - lr s^2 G A_S^T A_S; torch.optim.AdamW / SGD for the
parameters that are not projected; bitwise resumption from a state_dict saved mid-round;
a few steps of transformers.Trainer.
"""
import io
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import copy  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import assume, given, settings  # noqa: E402
from hypothesis import strategies as hs  # noqa: E402
from torch import nn  # noqa: E402

from solvers import rng  # noqa: E402
from solvers.torch_optim import BernoulliLoRAOptimizer, frozen_factor, state_bytes  # noqa: E402

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
R = 2
pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")


def tiny_llama(dtype=torch.float64, seed=0):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(vocab_size=40, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
                                   num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32)
    torch.manual_seed(seed)
    return transformers.LlamaForCausalLM(cfg).to(dtype)


IDS = torch.arange(2 * 9).reshape(2, 9) * 7 % 40


def loss_of(model, t):
    ids = (IDS + t) % 40
    return model(input_ids=ids, labels=ids).loss


def target_weights(model):
    """The targeted Linear weights in named_modules order (the switcher's layer order)."""
    return [m.weight for name, m in model.named_modules()
            if isinstance(m, nn.Linear) and name.rsplit(".", 1)[-1] in TARGETS]


def run_ours(model, steps, reverse=False, **kw):
    for w in model.parameters():
        w.requires_grad_(False)
    ws = target_weights(model)
    for w in ws:
        w.requires_grad_(True)
    opt = BernoulliLoRAOptimizer(ws[::-1] if reverse else ws, rank=R, **kw)
    for t in range(1, steps + 1):
        loss_of(model, t).backward()
        opt.step()
        opt.zero_grad()
    return ws, opt


def run_peft(model, steps, *, inner, lr, alpha, p, every, seed, draws, moments, weight_decay=0.0, momentum=0.0):
    peft = pytest.importorskip("peft")
    from experiments.real_model.peft_switcher import BernoulliLoRASwitcher

    pm = peft.get_peft_model(model, peft.LoraConfig(r=R, lora_alpha=alpha, target_modules=list(TARGETS),
                                                    lora_dropout=0.0))
    sw = BernoulliLoRASwitcher(pm, p=p, every=every, seed=seed, draws=draws, optimizer_state=moments)
    sw.init()
    if inner == "adamw":
        opt = torch.optim.AdamW(sw.factor_parameters(), lr=lr, weight_decay=weight_decay)
    else:
        opt = torch.optim.SGD(sw.factor_parameters(), lr=lr, weight_decay=weight_decay, momentum=momentum)
    sides = []
    for t in range(1, steps + 1):
        sides.append(sw.side)
        loss_of(pm, t).backward()
        opt.step()
        opt.zero_grad()
        sw.step(t, opt)
    weights = []
    for _, mod in sw.layers:  # effective weights W0 + s B A (mid-round too)
        A, B = mod.lora_A["default"].weight, mod.lora_B["default"].weight
        weights.append((mod.get_base_layer().weight + mod.scaling["default"] * B @ A).detach())
    return weights, sides


def rel_err(a, b):
    num = sum(float((x - y).detach().norm() ** 2) for x, y in zip(a, b)) ** 0.5
    return num / sum(float(y.detach().norm() ** 2) for y in b) ** 0.5


CASES = [
    dict(inner="adamw", lr=0.05, alpha=4.0, p=0.5, every=2, seed=3, draws="sketch", moments="reset", weight_decay=0.1),
    dict(inner="adamw", lr=0.05, alpha=2.0, p=0.6, every=1, seed=5, draws="real_model", moments="keep"),
    dict(inner="sgd", lr=0.5, alpha=4.0, p=0.4, every=3, seed=6, draws="sketch", moments="keep",
         weight_decay=0.05, momentum=0.9),
    dict(inner="sgd", lr=0.5, alpha=3.0, p=0.5, every=1, seed=2, draws="sketch", moments="reset"),
]


def ours_kw(case):
    kw = {k: v for k, v in case.items() if k != "alpha"}
    return dict(kw, scale=case["alpha"] / R)


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c['inner']}-{c['moments']}-every{c['every']}-{c['draws']}")
def test_same_trajectory_as_peft_switcher_float64(case):
    steps = 7
    base = tiny_llama()
    w0 = [w.detach().clone() for w in target_weights(base)]
    ref, sides = run_peft(copy.deepcopy(base), steps, **case)
    ours, opt = run_ours(base, steps, **ours_kw(case))
    assert set(sides) == {"left", "right"}, sides  # both kinds of rounds exercised
    assert [opt.side_of_round(opt.round_of(t)) for t in range(1, steps + 1)] == sides
    assert rel_err(ours, w0) > 1e-3  # the trajectory went somewhere
    assert rel_err(ours, ref) < 1e-12


def test_same_trajectory_float32():
    case = CASES[0]
    base = tiny_llama(torch.float32)
    ref, _ = run_peft(copy.deepcopy(base), 6, **case)
    ours, _ = run_ours(base, 6, **ours_kw(case))
    assert rel_err(ours, ref) < 1e-5


@pytest.mark.parametrize("broken", ["layer_order", "scale", "draws"])
def test_comparison_catches_a_broken_convention(broken):
    """The equality check above fails when one convention is broken on purpose."""
    case = dict(CASES[0], weight_decay=0.0)
    base = tiny_llama()
    ref, _ = run_peft(copy.deepcopy(base), 4, **case)
    kw = ours_kw(case)
    if broken == "scale":
        kw["scale"] *= 1.01
    if broken == "draws":
        kw["draws"] = "real_model"
    ours = target_weights(base)
    run_ours(base, 4, reverse=broken == "layer_order", **kw)
    assert rel_err(ours, ref) > 1e-6


@pytest.mark.parametrize("p", [1.0, 0.0])
def test_one_sgd_step_is_the_sketched_step(p):
    m, n, s, lr = 5, 7, 1.5, 0.1
    lin = nn.Linear(n, m, bias=False, dtype=torch.float64)
    W = lin.weight.detach().clone()
    x = rng.normal(torch.tensor([1]), rng.Stream.DATA, 0, (4, n))[0]
    y = rng.normal(torch.tensor([1]), rng.Stream.DATA, 1, (4, m))[0]
    G = (x @ W.T - y).T @ x
    opt = BernoulliLoRAOptimizer([lin.weight], inner="sgd", lr=lr, rank=R, scale=s, p=p, seed=9)
    (0.5 * ((lin(x) - y) ** 2).sum()).backward()
    opt.step()
    side = "left" if p == 1.0 else "right"
    S = frozen_factor(9, 0, 0, side, (m, n), R)
    expected = W - lr * s**2 * (S @ S.T @ G if side == "left" else G @ S.T @ S)
    torch.testing.assert_close(lin.weight.detach(), expected, rtol=0, atol=1e-12)


@settings(max_examples=25, deadline=None)
@given(m=hs.integers(1, 6), n=hs.integers(1, 6), r=hs.integers(1, 3), left=hs.booleans(), seed=hs.integers(0, 99),
       scale=hs.floats(0.25, 4.0), sketch=hs.sampled_from(["gaussian", "orthonormal", "rademacher", "column"]),
       every=hs.integers(1, 3), steps=hs.integers(1, 4))
def test_sgd_steps_are_sketched_steps_for_all_shapes_and_sketches(m, n, r, left, seed, scale, sketch, every, steps):
    """Property: each SGD step (any shape, rank, sketch, round length) is W - lr s^2 H G with
    H = S S^T (left) / G S^T S (right) for the frozen factor S of the step's round."""
    assume(r <= min(m, n))
    lr = 0.1
    W = rng.normal(torch.tensor([seed]), rng.Stream.DATA, 0, (m, n))[0]
    w = nn.Parameter(W.clone())
    opt = BernoulliLoRAOptimizer([w], inner="sgd", lr=lr, rank=r, scale=scale, p=float(left), seed=seed,
                                 sketch=sketch, every=every)
    side = "left" if left else "right"
    for t in range(1, steps + 1):
        before = w.detach().clone()
        G = rng.normal(torch.tensor([seed]), rng.Stream.DATA, t, (m, n))[0]
        w.grad = G.clone()
        opt.step()
        S = frozen_factor(seed, (t - 1) // every, 0, side, (m, n), r, sketch=sketch)
        expected = before - lr * scale**2 * (S @ S.T @ G if left else G @ S.T @ S)
        torch.testing.assert_close(w.detach(), expected, rtol=1e-12, atol=1e-12)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(6, 5, dtype=torch.float64)
        self.b = nn.Linear(5, 4, dtype=torch.float64)
        self.gain = nn.Parameter(torch.ones(4, dtype=torch.float64))

    def forward(self, x):
        return self.b(torch.tanh(self.a(x))) * self.gain


X = rng.normal(torch.tensor([2]), rng.Stream.DATA, 0, (8, 6))[0]


def net_loss(net, t):
    return ((net(X * (1 + 0.1 * t)) - 0.3) ** 2).mean()


def groups(net):
    return [{"params": [net.a.weight, net.b.weight, net.a.bias, net.b.bias, net.gain]}]


@pytest.mark.parametrize("inner", ["adamw", "sgd"])
def test_unprojected_parameters_get_plain_torch_updates(inner):
    """1-D params, and a 2-D param in a group with project=False, follow torch.optim exactly."""
    torch.manual_seed(0)
    net = Net()
    ref = copy.deepcopy(net)
    plain = [net.a.bias, net.b.bias, net.gain, net.b.weight]
    kw = dict(lr=0.05, weight_decay=0.1) if inner == "adamw" else dict(lr=0.05, weight_decay=0.1, momentum=0.8)
    opt = BernoulliLoRAOptimizer([{"params": [net.a.weight]}, {"params": plain, "project": False}],
                                 inner=inner, rank=R, p=0.5, **kw)
    ref_plain = [ref.a.bias, ref.b.bias, ref.gain, ref.b.weight]
    ref_opt = (torch.optim.AdamW if inner == "adamw" else torch.optim.SGD)(ref_plain, **kw)
    for t in range(1, 5):
        net_loss(net, t).backward()
        opt.step()
        opt.zero_grad()
        net.a.weight.data.copy_(ref.a.weight.data)  # same projected weight: isolate the plain updates
        net_loss(ref, t).backward()
        ref_opt.step()
        ref_opt.zero_grad()
        for a, b in zip(plain, ref_plain):
            torch.testing.assert_close(a.detach(), b.detach(), rtol=0, atol=1e-14)
    assert [l for l, _, _ in opt.projected()] == [0]


def test_moments_live_in_factor_space_and_reset_at_switch():
    torch.manual_seed(0)
    net = Net()
    opt = BernoulliLoRAOptimizer(groups(net), rank=R, p=0.5, every=2, seed=0, weight_decay=0.1)
    seen = set()
    for t in range(1, 9):
        net_loss(net, t).backward()
        opt.step()
        opt.zero_grad()
        k = opt.round_of(t)
        side = opt.side_of_round(k)
        seen.add(side)
        for w in (net.a.weight, net.b.weight):
            st = opt.state[w]
            m, n = w.shape
            shape = (R, n) if side == "left" else (m, R)
            assert st["round"] == k
            assert st[f"{side}.exp_avg"].shape == st[f"{side}.exp_avg_sq"].shape == st["factor"].shape == shape
            assert st["sketch"].shape == ((m, R) if side == "left" else (R, n))
            assert st[f"{side}.step"] == (t - 1) % 2 + 1  # restarted at the switch
            assert not any(key.startswith("right." if side == "left" else "left.") for key in st)
    assert seen == {"left", "right"}
    assert opt.state[net.gain]["exp_avg"].shape == (4,)
    # moments='keep': one state per side lives through the rounds (4 rounds: R, L, R, L)
    keep = BernoulliLoRAOptimizer(groups(net), rank=R, p=0.5, every=2, seed=0, moments="keep")
    for t in range(1, 9):
        net_loss(net, t).backward()
        keep.step()
        keep.zero_grad()
    assert keep.state[net.a.weight]["left.step"] == keep.state[net.a.weight]["right.step"] == 4


def test_cache_sketch_off_is_bitwise_the_same():
    torch.manual_seed(0)
    nets = [Net(), None]
    nets[1] = copy.deepcopy(nets[0])
    opts = [BernoulliLoRAOptimizer(groups(n), rank=R, p=0.5, every=2, seed=1, cache_sketch=c)
            for n, c in zip(nets, (True, False))]
    for t in range(1, 6):
        for net, opt in zip(nets, opts):
            net_loss(net, t).backward()
            opt.step()
            opt.zero_grad()
    for a, b in zip(nets[0].parameters(), nets[1].parameters()):
        assert torch.equal(a, b)
    assert "sketch" not in opts[1].state[nets[1].a.weight]
    assert state_bytes(opts[1]) < state_bytes(opts[0])


@pytest.mark.parametrize("inner", ["adamw", "sgd"])
def test_resume_mid_round_is_bitwise(inner):
    kw = dict(inner=inner, lr=0.05, rank=R, p=0.5, every=3, seed=6, weight_decay=0.1, momentum=0.5 * (inner == "sgd"),
              moments="keep")
    torch.manual_seed(0)
    net = Net()
    start = copy.deepcopy(net.state_dict())
    opt = BernoulliLoRAOptimizer(groups(net), **kw)
    for t in range(1, 8):
        if t == 5:  # mid-round (round 1 = steps 4..6): save
            saved_model, buf = copy.deepcopy(net.state_dict()), io.BytesIO()
            torch.save(opt.state_dict(), buf)
        net_loss(net, t).backward()
        opt.step()
        opt.zero_grad()
    net2 = Net()
    net2.load_state_dict(start)
    net2.load_state_dict(saved_model)
    opt2 = BernoulliLoRAOptimizer(groups(net2), **kw)
    buf.seek(0)
    opt2.load_state_dict(torch.load(buf, weights_only=False))
    assert opt2.steps_taken == 4
    for t in range(5, 8):
        net_loss(net2, t).backward()
        opt2.step()
        opt2.zero_grad()
    for a, b in zip(net.parameters(), net2.parameters()):
        assert torch.equal(a, b)


def test_rank_above_the_weight_size_is_refused():
    net = Net()
    with pytest.raises(ValueError, match=r"^rank: 5 exceeds min\(m, n\) = 4 of parameter 1 \(shape \(4, 5\)\) of param group 0$"):
        BernoulliLoRAOptimizer([net.a.weight, net.b.weight], rank=5)  # 5 x 6 and 4 x 5
    opt = BernoulliLoRAOptimizer([{"params": [net.b.weight], "project": False}], rank=5)  # not projected: accepted
    with pytest.raises(ValueError, match=r"^rank: 5 exceeds"):
        opt.add_param_group({"params": [nn.Parameter(torch.zeros(7, 3))]})
    assert len(opt.param_groups) == 1  # the refused group left nothing behind


def test_state_dict_of_another_configuration_is_refused():
    net = Net()
    opt = BernoulliLoRAOptimizer(groups(net), rank=R, seed=1)
    net_loss(net, 1).backward()
    opt.step()
    other = BernoulliLoRAOptimizer(groups(net), rank=R, seed=2)
    with pytest.raises(ValueError, match=r"^state_dict\.bernoulli_lora\.seed: saved 1"):
        other.load_state_dict(opt.state_dict())
    with pytest.raises(ValueError, match=r"^state_dict: no 'bernoulli_lora'"):
        other.load_state_dict(torch.optim.AdamW(net.parameters()).state_dict())


@pytest.mark.parametrize("kw,field", [(dict(p=1.5), "p"), (dict(every=0), "every"), (dict(inner="adam"), "inner"),
                                      (dict(moments="drop"), "moments"), (dict(draws="x"), "draws"),
                                      (dict(lr=-1.0), "lr"), (dict(rank=0), "rank"), (dict(weight_decay=-1), "weight_decay"),
                                      (dict(nesterov=True), "nesterov"),
                                      (dict(sketch="orthonormal", draws="real_model"), "sketch")])
def test_bad_input_is_refused_with_one_line_naming_the_field(kw, field):
    net = Net()
    with pytest.raises(ValueError) as e:
        BernoulliLoRAOptimizer(net.parameters(), **kw)
    assert str(e.value).startswith(f"{field}:") and "\n" not in str(e.value)


def test_state_bytes_counts_every_tensor_once():
    net = Net()
    opt = BernoulliLoRAOptimizer(groups(net), rank=R, p=1.0, cache_sketch=True)
    net_loss(net, 1).backward()
    opt.step()
    # left round: moments R x n (2 tensors) + sketch m x R per weight; plain AdamW: 2 x numel
    expected = sum(2 * R * n + m * R for m, n in ((5, 6), (4, 5))) + 2 * (5 + 4 + 4)
    assert state_bytes(opt) == 8 * expected


def test_transformers_trainer_runs_a_few_steps(tmp_path):
    transformers = pytest.importorskip("transformers")
    model = tiny_llama(torch.float32)
    w0 = [w.detach().clone() for w in target_weights(model)]
    proj = target_weights(model)
    ids_proj = {id(w) for w in proj}
    rest = [w for w in model.parameters() if id(w) not in ids_proj]
    opt = BernoulliLoRAOptimizer([{"params": proj}, {"params": rest, "project": False}], lr=1e-2, rank=R, p=0.5,
                                 every=2, seed=0)
    data = [{"input_ids": row, "labels": row} for row in ((IDS.repeat(2, 1) + torch.arange(4)[:, None]) % 40)]
    args = transformers.TrainingArguments(output_dir=str(tmp_path), max_steps=3, per_device_train_batch_size=2,
                                          report_to=[], save_strategy="no", use_cpu=True, logging_steps=1,
                                          disable_tqdm=True)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=data, optimizers=(opt, None))
    trainer.train()
    assert opt.steps_taken == 3
    assert all(not torch.equal(w, w0_) for w, w0_ in zip(target_weights(model), w0))
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))
    for w in proj:  # moments are rank-sized, never m x n
        st = opt.state[w]
        side = opt.side_of_round(opt.round_of(3))
        assert st[f"{side}.exp_avg"].shape == ((R, w.shape[1]) if side == "left" else (w.shape[0], R))


def test_memory_benchmark_counts_agree_with_closed_forms():
    """benchmarks/bench_optimizer_memory.py on a 1-layer Llama: the optimiser's moments are
    exactly the PEFT path's trained-side AdamW moments (which also hold a 4-byte ``step``
    tensor per factor), the cached draw is the frozen factor, LoRA's state is 2x its adapters."""
    pytest.importorskip("peft")
    bench = pytest.importorskip("benchmarks.bench_optimizer_memory")
    import argparse

    rows, _ = bench.measure(argparse.Namespace(rank=2, hidden=32, layers=1))
    by = {row["method"]: row for row in rows}
    ws = bench.targets(bench.build(32, 1))
    lora = by["LoRA r=2 (PEFT, AdamW on A and B)"]
    assert lora["state"] == 2 * lora["adapter"] + 4 * 2 * len(ws)
    for side in ("left", "right"):
        peft_row = by[f"Bernoulli-LoRA r=2 PEFT path, {side} round"]
        bare = by[f"Bernoulli-LoRA optimiser r=2, {side} round, cache_sketch=False"]
        cached = by[f"Bernoulli-LoRA optimiser r=2, {side} round, cache_sketch=True"]
        assert bare["state"] == peft_row["state"] - 4 * len(ws) == 4 * 2 * peft_row["trainable"]
        frozen = sum(w.shape[0] * 2 if side == "left" else 2 * w.shape[1] for w in ws)
        assert cached["state"] - bare["state"] == 4 * frozen
