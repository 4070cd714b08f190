"""Bernoulli-LoRA switcher for PEFT models (experiments/real_model/peft_switcher.py).

Tiny transformers models built from configs (no downloads, HF_HUB_OFFLINE=1):
roles and sketch draws after init/step, frozen factors untouched by the optimiser,
merging preserves the function (also with GPT-2's fan_in_fan_out Conv1D), optimiser
state reset/keep, p = 0 / 1, determinism, schedule, errors. Equivalence: a PEFT-wrapped
torch MLP driven by the switcher follows the suite's batched implementation
(experiments/real_model/{model,methods,train}.py) to float64 round-off, with SGD and
with AdamW (state kept and reset), switching every step.
"""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import math  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

from peft import LoraConfig, get_peft_model  # noqa: E402

from experiments.real_model.peft_switcher import (  # noqa: E402
    BernoulliLoRASwitcher,
    count_trainable,
    lora_layers,
    merge_all,
    trainable_parameter_count,
)
from solvers import rng  # noqa: E402

R = 2
pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")


def tiny_bert(seed=0, alpha=4, targets=("query", "value")):
    cfg = transformers.BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=64, max_position_embeddings=32, hidden_dropout_prob=0.0,
                                  attention_probs_dropout_prob=0.0)
    torch.manual_seed(seed)
    model = transformers.BertModel(cfg).double().eval()
    return get_peft_model(model, LoraConfig(r=R, lora_alpha=alpha, target_modules=list(targets), lora_dropout=0.0))


def tiny_gpt2(seed=0):
    cfg = transformers.GPT2Config(vocab_size=50, n_embd=32, n_layer=2, n_head=2, n_positions=32, resid_pdrop=0.0,
                                  embd_pdrop=0.0, attn_pdrop=0.0)
    torch.manual_seed(seed)
    model = transformers.GPT2Model(cfg).double().eval()
    return get_peft_model(model, LoraConfig(r=R, lora_alpha=2, target_modules=["c_attn", "c_proj"], lora_dropout=0.0,
                                            fan_in_fan_out=True))


IDS = torch.arange(2 * 7).reshape(2, 7) * 3 % 50


def out(model):
    return model(input_ids=IDS).last_hidden_state


def train_steps(model, sw, opt, steps, start=1):
    for t in range(start, start + steps):
        h = out(model)
        loss = (h ** 2).mean() + h.sum() * 1e-2
        loss.backward()
        opt.step()
        opt.zero_grad()
        sw.step(t, opt)


def check_roles(sw):
    """Exactly one factor per layer trains; frozen = sketch draw of the round; trained = 0 after a switch."""
    sk = sw.sketch
    seeds = torch.tensor([sw.seed])
    for l, (_, mod) in enumerate(sw.layers):
        A, B = mod.lora_A["default"].weight, mod.lora_B["default"].weight
        assert A.requires_grad != B.requires_grad
        frozen, trained = (B, A) if sw.side == "left" else (A, B)
        assert trained.requires_grad and not frozen.requires_grad
        assert bool((trained == 0).all())
        m, n = B.shape[0], A.shape[1]
        if sw.side == "left":
            ref = rng.normal(seeds, rng.Stream.SKETCH, sw.round, (m, R), sub=2 * l)[0] / math.sqrt(m)
            if l == 0:
                torch.testing.assert_close(ref, sk.sample_left(seeds, sw.round, m, R)[0], rtol=0, atol=0)
        else:
            ref = rng.normal(seeds, rng.Stream.SKETCH, sw.round, (n, R), sub=2 * l + 1)[0].T / math.sqrt(n)
            if l == 0:
                torch.testing.assert_close(ref, sk.sample_right(seeds, sw.round, R, n)[0], rtol=0, atol=0)
        assert torch.equal(frozen.detach(), ref.to(frozen.dtype))


def test_roles_and_sketch_draws_after_init_and_steps():
    model = tiny_bert()
    sw = BernoulliLoRASwitcher(model, p=0.5, seed=3)
    sw.init()
    check_roles(sw)
    assert len(sw.layers) == 4
    opt = torch.optim.SGD(sw.factor_parameters(), lr=0.1)
    sides = {sw.side}
    for t in range(1, 7):
        train_steps(model, sw, opt, 1, start=t)
        check_roles(sw)
        assert sw.round == t
        sides.add(sw.side)
    assert sides == {"left", "right"}
    assert [e.round for e in sw.history] == list(range(7))


def test_frozen_unchanged_and_trained_moves_under_adamw():
    model = tiny_bert()
    sw = BernoulliLoRASwitcher(model, p=0.5, seed=1)
    sw.init()
    opt = torch.optim.AdamW(sw.factor_parameters(), lr=1e-2, weight_decay=0.1)
    frozen = [t.detach().clone() for t in sw.factor_parameters() if not t.requires_grad]
    loss = (out(model) ** 2).mean()
    loss.backward()
    opt.step()
    after = [t.detach() for t in sw.factor_parameters() if not t.requires_grad]
    assert all(torch.equal(a, b) for a, b in zip(frozen, after))
    assert all(bool(t.detach().abs().sum() > 0) for t in sw.trained_factors())


@pytest.mark.parametrize("builder", [tiny_bert, tiny_gpt2])
def test_merge_preserves_function(builder):
    model = builder()
    sw = BernoulliLoRASwitcher(model, p=0.5, seed=2, every=1000)  # no automatic merge in the first steps
    sw.init()
    opt = torch.optim.SGD(sw.factor_parameters(), lr=0.2)
    train_steps(model, sw, opt, 3)
    assert all(bool(t.detach().abs().sum() > 0) for t in sw.trained_factors())  # B A != 0 now
    with torch.no_grad():
        before = out(model).clone()
        base_before = [m.get_base_layer().weight.clone() for _, m in sw.layers]
        sw.merge()
        merged = out(model)
    torch.testing.assert_close(merged, before, rtol=1e-12, atol=1e-12)
    assert all(bool((t == 0).all()) for t in sw.trained_factors())
    assert any(not torch.equal(w0, m.get_base_layer().weight) for w0, (_, m) in zip(base_before, sw.layers))
    # the utility: fold again after more training, zero='auto' zeroes the trained side
    train_steps(model, sw, opt, 2, start=4)
    with torch.no_grad():
        before = out(model).clone()
        assert merge_all(model) == len(sw.layers)
        torch.testing.assert_close(out(model), before, rtol=1e-12, atol=1e-12)
    assert all(bool((t == 0).all()) for t in sw.trained_factors())
    # against PEFT's own merge of the (pre-merge) adapter: same function
    model2 = builder()
    with torch.no_grad():
        for (_, m) in lora_layers(model2):
            m.lora_B["default"].weight.normal_()
        ref = out(model2).clone()
        merge_all(model2, zero="B")
        torch.testing.assert_close(out(model2), ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("mode", ["reset", "keep"])
def test_optimizer_state_reset_and_keep(mode):
    model = tiny_bert()
    sw = BernoulliLoRASwitcher(model, p=0.5, seed=5, optimizer_state=mode)
    sw.init()
    opt = torch.optim.AdamW(sw.factor_parameters(), lr=1e-2)
    trained = sw.trained_factors()
    (out(model) ** 2).mean().backward()
    opt.step()
    opt.zero_grad()
    assert all(t in opt.state and "exp_avg" in opt.state[t] for t in trained)
    saved = {t: opt.state[t]["exp_avg"].clone() for t in trained}
    sw.step(1, opt)
    if mode == "reset":
        assert all(t not in opt.state for t in sw.factor_parameters())
    else:
        assert all(torch.equal(opt.state[t]["exp_avg"], saved[t]) for t in trained)
        assert float(opt.state[trained[0]]["step"]) == 1.0


@pytest.mark.parametrize("p,side", [(1.0, "left"), (0.0, "right")])
def test_p_one_trains_A_p_zero_trains_B(p, side):
    model = tiny_bert()
    sw = BernoulliLoRASwitcher(model, p=p, seed=0)
    sw.init()
    opt = torch.optim.SGD(sw.factor_parameters(), lr=0.1)
    for t in range(1, 5):
        for _, m in sw.layers:
            assert m.lora_A["default"].weight.requires_grad == (side == "left")
            assert m.lora_B["default"].weight.requires_grad == (side == "right")
        train_steps(model, sw, opt, 1, start=t)
    assert {e.side for e in sw.history} == {side}


def test_determinism_per_seed():
    def trajectory(seed):
        model = tiny_bert(seed=0)
        sw = BernoulliLoRASwitcher(model, p=0.5, seed=seed, sketch="orthonormal")
        sw.init()
        opt = torch.optim.SGD(sw.factor_parameters(), lr=0.1)
        train_steps(model, sw, opt, 3)
        return [t.detach().clone() for t in model.parameters()], [e.side for e in sw.history]

    a, sa = trajectory(11)
    b, sb = trajectory(11)
    c, _ = trajectory(12)
    assert sa == sb and all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, y) for x, y in zip(a, c))


def test_schedule_merge_every_and_validation():
    model = tiny_bert()
    sw = BernoulliLoRASwitcher(model, p=0.5, seed=4, every=4, merge_every=2)
    sw.init()
    opt = torch.optim.SGD(sw.factor_parameters(), lr=0.1)
    frozen0 = [t.detach().clone() for t in sw.factor_parameters() if not t.requires_grad]
    events = []
    for t in range(1, 5):
        loss = (out(model) ** 2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
        events.append(sw.step(t, opt))
        if t == 2:  # merge only: trained re-zeroed, frozen kept, same round
            assert sw.round == 0
            assert all(bool((x == 0).all()) for x in sw.trained_factors())
            assert all(torch.equal(a, b.detach()) for a, b in
                       zip(frozen0, [x for x in sw.factor_parameters() if not x.requires_grad]))
    assert events[0] is None and events[2] is None
    assert events[1].merged and not events[1].switched
    assert events[3].merged and events[3].switched and events[3].round == 1
    with pytest.raises(ValueError, match="multiple of merge_every"):
        BernoulliLoRASwitcher(model, p=0.5, every=3, merge_every=2)
    with pytest.raises(ValueError, match="p: must lie"):
        BernoulliLoRASwitcher(model, p=1.5)
    with pytest.raises(ValueError, match="optimizer_state"):
        BernoulliLoRASwitcher(model, p=0.5, optimizer_state="zero")
    with pytest.raises(ValueError, match="Gaussian"):
        BernoulliLoRASwitcher(model, p=0.5, draws="real_model", sketch="column")
    with pytest.raises(RuntimeError, match="init"):
        BernoulliLoRASwitcher(model, p=0.5).step(1)
    bad_opt = torch.optim.SGD(sw.trained_factors(), lr=0.1)
    with pytest.raises(ValueError, match="trainable_parameters"):
        sw.step(5, bad_opt)


def test_unsupported_layers_raise():
    model = tiny_bert(targets=("word_embeddings", "query"))
    with pytest.raises(TypeError, match="only peft.tuners.lora.Linear"):
        BernoulliLoRASwitcher(model, p=0.5)
    with pytest.raises(ValueError, match="no LoRA layer"):
        BernoulliLoRASwitcher(tiny_bert(), p=0.5, adapter_name="other")


def test_trainable_counts():
    model = tiny_bert()
    sw = BernoulliLoRASwitcher(model, p=1.0, seed=0)
    with count_trainable(model) as c:
        sw.init()
    assert c.before == 4 * 2 * R * 32  # PEFT: A and B trainable
    assert c.after == sw.num_trainable() == trainable_parameter_count(model) == 4 * R * 32  # A only (n = 32 each)


@pytest.mark.parametrize("p", [1.0, 0.0])
def test_one_step_is_the_weight_space_sketched_step(p):
    """SGD step on the trained factor + merge == W - lr s^2 B_S B_S^T G (left) / W - lr s^2 G A_S^T A_S (right)."""
    m, n, alpha, lr = 5, 7, 3.0, 0.1
    net = nn.Sequential(nn.Linear(n, m, bias=False, dtype=torch.float64))
    pm = get_peft_model(net, LoraConfig(r=R, lora_alpha=alpha, target_modules=["0"], lora_dropout=0.0))
    sw = BernoulliLoRASwitcher(pm, p=p, seed=9)
    sw.init()
    (_, mod), = sw.layers
    W = mod.get_base_layer().weight.detach().clone()
    A, B = mod.lora_A["default"].weight.detach().clone(), mod.lora_B["default"].weight.detach().clone()
    x = rng.normal(torch.tensor([1]), rng.Stream.DATA, 0, (4, n))[0]
    y = rng.normal(torch.tensor([1]), rng.Stream.DATA, 1, (4, m))[0]
    G = (x @ W.T - y).T @ x  # gradient of 0.5 ||x W^T - y||^2 at W (B A = 0)
    opt = torch.optim.SGD(sw.factor_parameters(), lr=lr)
    (0.5 * ((pm(x) - y) ** 2).sum()).backward()
    opt.step()
    sw.step(1, opt)
    s = alpha / R
    expected = W - lr * s**2 * (B @ B.T @ G if p == 1.0 else G @ A.T @ A)
    torch.testing.assert_close(mod.get_base_layer().weight.detach(), expected, rtol=0, atol=1e-12)


# ---------------------------------------------------------------- equivalence with the suite's code
class TorchMLP(nn.Module):
    """The suite's MLP (no dropout) as nn.Linear layers named like model.state_dict()."""

    def __init__(self, dims):
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(n, m, dtype=torch.float64) for m, n in dims])

    def forward(self, x):
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = torch.relu(x)
        return torch.log_softmax(x, dim=-1)


@pytest.mark.parametrize("optimizer,opt_state", [("sgd", "reset"), ("adamw", "keep"), ("adamw", "reset")])
def test_equivalence_with_suite_batched_implementation(optimizer, opt_state):
    rm = pytest.importorskip("experiments.real_model.model")
    mt = pytest.importorskip("experiments.real_model.methods")
    tr = pytest.importorskip("experiments.real_model.train")
    from experiments.real_model.data import Split

    seeds = torch.tensor([3, 8])
    in_dim, hidden, rank, alpha, std, lr, steps, b = 12, (8, 8), 2, 3.0, 0.7, 0.05, 6, 10
    params = rm.init_mlp(seeds, in_dim, hidden=hidden, dtype=torch.float64)
    g = rng.normal(torch.tensor([0]), rng.Stream.DATA, 0, (40, in_dim))[0]
    y = rng.integers(torch.tensor([0]), rng.Stream.DATA, 1, 5, (40,))[0]
    data = Split(g, y)
    cfg = tr.TrainConfig(rank=rank, alpha=alpha, init_std=std, switch="step", switch_every=1, optimizer=optimizer,
                         dropout=0.0, lr=lr, opt_state=opt_state)
    spec = mt.MethodSpec("bernoulli_lora", p=0.5)
    run = tr.Run(params, seeds, cfg, data, spec=spec)

    models, switchers, opts = [], [], []
    for s in range(len(seeds)):
        mlp = TorchMLP(params.dims)
        mlp.load_state_dict(rm.state_dict(params, s))
        pm = get_peft_model(mlp, LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0,
                                            target_modules=[f"layers.{l}" for l in range(len(params.dims))]))
        sw = BernoulliLoRASwitcher(pm, p=0.5, seed=int(seeds[s]), draws="real_model", init_std=std,
                                   optimizer_state=opt_state)
        sw.init()
        if optimizer == "sgd":
            opt = torch.optim.SGD(sw.factor_parameters(), lr=lr)
        else:
            opt = torch.optim.AdamW(sw.factor_parameters(), lr=lr, betas=cfg.betas, eps=cfg.eps,
                                    weight_decay=cfg.weight_decay)
        models.append(pm), switchers.append(sw), opts.append(opt)

    def compare(tol):
        for s, sw in enumerate(switchers):
            for l, (_, mod) in enumerate(sw.layers):
                base = mod.get_base_layer()
                pairs = [(base.weight, run.params.weights[l][s]), (base.bias, run.params.biases[l][s]),
                         (mod.lora_A["default"].weight, run.adapters.A[l][s]),
                         (mod.lora_B["default"].weight, run.adapters.B[l][s])]
                for ours, theirs in pairs:
                    torch.testing.assert_close(ours.detach(), theirs.detach(), rtol=0, atol=tol)

    compare(0.0)  # identical round-0 draws and zeros
    sides = [[sw.side] for sw in switchers]
    for t in range(1, steps + 1):
        idx = rng.subset(seeds, rng.Stream.MINIBATCH, t, 40, b)
        run.train_step(idx)
        for s, (pm, sw, opt) in enumerate(zip(models, switchers, opts)):
            loss = nn.functional.nll_loss(pm(data.x[idx[s]]), data.y[idx[s]])
            loss.backward()
            opt.step()
            opt.zero_grad()
            sw.step(t, opt)
            sides[s].append(sw.side)
            assert (sw.side == "left") == bool(run.roles.random_B[s])
        compare(1e-10)
    assert all(set(x) == {"left", "right"} for x in sides), sides  # both kinds of rounds were exercised
    moved = max(float((w - w0).abs().max()) for w, w0 in zip(run.params.weights, params.weights))
    assert moved > 1e-3  # the trajectory went somewhere
