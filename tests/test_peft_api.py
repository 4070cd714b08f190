"""Bernoulli-LoRA peft API: wrong uses refused or handled, state_dict resume, save / export.

Tiny float32 BERT (classification head in modules_to_save), GPT-2 (Conv1D,
fan_in_fan_out) and Llama models built from configs; no network.
"""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

from peft import LoraConfig, PeftModel, get_peft_model  # noqa: E402

from experiments.real_model.bernoulli_peft import (  # noqa: E402
    BernoulliLoRASwitcher,
    export_adapter,
    layer_delta,
    prepare_bernoulli_lora,
    save_merged,
)

pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")
IDS = torch.arange(2 * 7).reshape(2, 7) * 3 % 50
LABELS = torch.tensor([0, 2])


def bert_base(seed=0):
    cfg = transformers.BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=64, max_position_embeddings=32, num_labels=3,
                                  hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    torch.manual_seed(seed)
    return transformers.BertForSequenceClassification(cfg).eval()


def gpt2_base(seed=0):
    cfg = transformers.GPT2Config(vocab_size=50, n_embd=32, n_layer=2, n_head=2, n_positions=32, resid_pdrop=0.0,
                                  embd_pdrop=0.0, attn_pdrop=0.0)
    torch.manual_seed(seed)
    return transformers.GPT2LMHeadModel(cfg).eval()


def llama_base(seed=0):
    cfg = transformers.LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32)
    torch.manual_seed(seed)
    return transformers.LlamaForCausalLM(cfg).eval()


CONFIGS = {
    "bert": (bert_base, dict(target_modules=["query", "value"], task_type="SEQ_CLS")),
    "gpt2": (gpt2_base, dict(target_modules=["c_attn", "c_proj"], fan_in_fan_out=True)),
    "llama": (llama_base, dict(target_modules=["q_proj", "v_proj", "down_proj"])),
}


def peft_model(kind, r=2, **extra):
    build, kw = CONFIGS[kind]
    return get_peft_model(build(), LoraConfig(r=r, lora_alpha=4, lora_dropout=0.0, **kw, **extra))


def logits(model):
    return model(input_ids=IDS).logits


def loss_of(model):
    out = logits(model)
    if out.dim() == 2:
        return torch.nn.functional.cross_entropy(out, LABELS)
    return torch.nn.functional.cross_entropy(out[:, :-1].reshape(-1, out.shape[-1]), IDS[:, 1:].reshape(-1))


def train(model, sw, opt, steps, start=1):
    for t in range(start, start + steps):
        loss_of(model).backward()
        opt.step()
        opt.zero_grad()
        sw.step(t, opt)


# ---------------------------------------------------------------- init keeps the function
@pytest.mark.parametrize("init", ["pissa", "olora", "loaded"])
def test_init_keeps_function_for_nonzero_adapters(init, tmp_path):
    if init == "loaded":
        src = peft_model("llama")
        with torch.no_grad():
            for n, q in src.named_parameters():
                if "lora_B" in n:
                    q.normal_()
        src.save_pretrained(tmp_path)
        model = PeftModel.from_pretrained(llama_base(), tmp_path, is_trainable=True)
    else:
        model = peft_model("llama", init_lora_weights=init)
    with torch.no_grad():
        before = logits(model).clone()
    sw = prepare_bernoulli_lora(model, p=0.5, seed=0)
    with torch.no_grad():
        after = logits(model)
        base = logits(llama_base())
    if init != "loaded":  # PiSSA / OLoRA: the adapted model equals the base model up to round-off
        torch.testing.assert_close(before, base, rtol=0, atol=1e-4)
    assert float((after - before).abs().max()) < 1e-5
    # the old init (no fold) changes the model: the check catches it
    model2 = peft_model("llama", init_lora_weights=init) if init != "loaded" else \
        PeftModel.from_pretrained(llama_base(), tmp_path, is_trainable=True)
    sw2 = BernoulliLoRASwitcher(model2, p=0.5, seed=0)
    sw2._start_round(0)  # draws without folding
    with torch.no_grad():
        assert float((logits(model2) - before).abs().max()) > 1e-3
    assert sw.reference is not None


# ---------------------------------------------------------------- refusals
def test_inactive_adapter_refused():
    model = peft_model("bert")
    model.add_adapter("other", LoraConfig(r=2, target_modules=["query", "value"], task_type="SEQ_CLS"))
    with pytest.raises(ValueError, match="adapter_name: 'other' is not the active adapter"):
        BernoulliLoRASwitcher(model, p=0.5, adapter_name="other")
    sw = prepare_bernoulli_lora(model, p=0.5)
    opt = sw.create_optimizer(lr=0.1)
    model.set_adapter("other")
    loss_of(model).backward()
    opt.step()
    with pytest.raises(RuntimeError, match="no longer active"):
        sw.step(1, opt)


def test_set_adapter_after_init_refused():
    model = peft_model("bert")
    sw = prepare_bernoulli_lora(model, p=0.5)
    opt = sw.create_optimizer(lr=0.1)
    model.set_adapter("default")  # PEFT marks both factors trainable again
    assert all(t.requires_grad for t in sw.factor_parameters())
    with pytest.raises(RuntimeError, match="requires_grad of lora_A/lora_B"):
        sw.step(1, opt)


def test_merge_adapter_mid_round_refused():
    model = peft_model("bert")
    sw = prepare_bernoulli_lora(model, p=0.5, every=4)
    opt = sw.create_optimizer(lr=0.1)
    train(model, sw, opt, 1)
    model.merge_adapter()
    with pytest.raises(RuntimeError, match="merged by PEFT"):
        sw.step(2, opt)
    model.unmerge_adapter()
    sw.step(2, opt)  # fine again


def test_step_inside_disable_adapter_refused_and_semantics():
    model = peft_model("llama")
    with torch.no_grad():
        original = logits(model).clone()
    sw = prepare_bernoulli_lora(model, p=0.5, every=2)
    opt = sw.create_optimizer(lr=0.5)
    train(model, sw, opt, 3)  # round 1 in progress, one step into it
    with torch.no_grad():
        trained = logits(model).clone()
        with model.disable_adapter():
            # only the current round's adapter (and modules_to_save) are off: merged progress stays
            off = logits(model).clone()
            with pytest.raises(RuntimeError, match="disabled"):
                sw.step(4, opt)
        with sw.original_model():
            torch.testing.assert_close(logits(model), original, rtol=0, atol=1e-6)
        torch.testing.assert_close(logits(model), trained, rtol=0, atol=0)
    assert float((off - original).abs().max()) > 1e-3 and float((off - trained).abs().max()) > 1e-4


def test_modules_to_save_trained_and_old_recipe_refused():
    model = peft_model("bert")
    sw = prepare_bernoulli_lora(model, p=0.5)
    head = [n for n, q in model.named_parameters() if q.requires_grad and "lora_" not in n]
    assert head and all("modules_to_save" in n for n in head)
    assert len(sw.extra_parameters) == len(head)
    old = torch.optim.AdamW(sw.factor_parameters(), lr=1e-2)  # the old documented recipe
    loss_of(model).backward()
    old.step()
    with pytest.raises(ValueError, match="modules_to_save"):
        sw.step(1, old)
    opt = sw.create_optimizer(torch.optim.SGD, lr=0.5)
    w0 = [q.detach().clone() for q in sw.extra_parameters]
    opt.zero_grad()
    train(model, sw, opt, 2, start=2)
    assert all(not torch.equal(a, b) for a, b in zip(w0, sw.extra_parameters))


def test_history_bounded_with_counters():
    model = peft_model("bert")
    sw = prepare_bernoulli_lora(model, p=0.5, history_size=3)
    opt = sw.create_optimizer(lr=0.01)
    train(model, sw, opt, 6)
    assert len(sw.history) == 3 and [e.global_step for e in sw.history] == [4, 5, 6]
    assert sw.counts["left"] + sw.counts["right"] == 7 and sw.counts["merges"] == 6
    with pytest.raises(ValueError, match="already stepped"):
        sw.step(6, opt)


def test_sign_descent_warning_and_effect():
    model = peft_model("bert")
    sw = prepare_bernoulli_lora(model, p=1.0, seed=1)
    opt = sw.create_optimizer(torch.optim.AdamW, lr=1e-3, weight_decay=0.0)
    loss_of(model).backward()
    grads = [t.grad.clone() for t in sw.trained_factors()]
    opt.step()
    moved = torch.cat([t.detach().flatten() for t in sw.trained_factors()])
    g = torch.cat([x.flatten() for x in grads])
    # Adam's first step from 0: -lr * g / (|g| + eps): |entry| = lr up to eps/|g|
    big = g.abs() > 1e-5
    torch.testing.assert_close(moved[big], -1e-3 * torch.sign(g[big]), rtol=1e-2, atol=0)
    with pytest.warns(UserWarning, match="sign descent"):
        sw.step(1, opt)
    sw2 = prepare_bernoulli_lora(peft_model("bert"), p=1.0, every=5, seed=1)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sw2.step(1, sw2.create_optimizer(torch.optim.AdamW, lr=1e-3))


def test_reset_on_side_change():
    model = peft_model("bert")
    sw = prepare_bernoulli_lora(model, p=0.5, seed=0, optimizer_state="reset_on_side_change")
    opt = sw.create_optimizer(torch.optim.AdamW, lr=1e-3)
    seen = set()
    for t in range(1, 9):
        side = sw.side
        loss_of(model).backward()
        opt.step()
        opt.zero_grad()
        sw.step(t, opt)
        held = [q for q in sw.factor_parameters() if q in opt.state]
        if sw.side != side:
            assert not held
            seen.add("change")
        else:
            assert len(held) == len(sw.factor_parameters()) // 2
            seen.add("same")
    assert seen == {"change", "same"}


# ---------------------------------------------------------------- state_dict resume
def test_state_dict_resume_is_bitwise():
    def run(split):
        model = peft_model("gpt2")
        sw = prepare_bernoulli_lora(model, p=0.5, seed=4, every=2, merge_every=1, optimizer_state="keep")
        opt = sw.create_optimizer(torch.optim.AdamW, lr=1e-2)
        if split is None:
            train(model, sw, opt, 6)
            return model, sw
        train(model, sw, opt, split)
        state, ostate = sw.state_dict(), opt.state_dict()
        model2 = peft_model("gpt2")  # fresh process: PEFT's default init, untrained base
        sw2 = BernoulliLoRASwitcher(model2, p=0.5, seed=4, every=2, merge_every=1, optimizer_state="keep")
        sw2.load_state_dict(state)
        opt2 = sw2.create_optimizer(torch.optim.AdamW, lr=1e-2)
        opt2.load_state_dict(ostate)
        train(model2, sw2, opt2, 6 - split, start=split + 1)
        return model2, sw2

    (ma, sa), (mb, sb) = run(None), run(3)
    for (na, qa), (nb, qb) in zip(ma.named_parameters(), mb.named_parameters()):
        assert torch.equal(qa, qb), na
    assert list(sa.history) == list(sb.history) and sa.counts == sb.counts
    with pytest.raises(ValueError, match="error: seed"):
        BernoulliLoRASwitcher(peft_model("gpt2"), p=0.5, seed=5, every=2, merge_every=1,
                              optimizer_state="keep").load_state_dict(sa.state_dict())


# ---------------------------------------------------------------- save / export
@pytest.mark.parametrize("kind", ["bert", "gpt2", "llama"])
def test_save_merged_and_export_adapter_reproduce_trained_model(kind, tmp_path):
    model = peft_model(kind)
    sw = prepare_bernoulli_lora(model, p=0.5, seed=2, every=2)
    opt = sw.create_optimizer(lr=0.5)
    train(model, sw, opt, 5)  # ends mid-round: the current factors hold progress too
    with torch.no_grad():
        trained = logits(model).clone()
        untrained = logits(CONFIGS[kind][0]())
    assert float((trained - untrained).abs().max()) > 1e-2
    # what the issue reported: PEFT's own adapter save loses the merged progress
    model.save_pretrained(tmp_path / "peft")
    with torch.no_grad():
        lost = logits(PeftModel.from_pretrained(CONFIGS[kind][0](), tmp_path / "peft"))
    if kind != "bert":  # (BERT's progress is mostly its modules_to_save head, which PEFT does save)
        assert float((lost - trained).abs().max()) > 1e-2

    save_merged(sw, tmp_path / "merged")
    base_cls = type(CONFIGS[kind][0]())
    with torch.no_grad():
        merged = logits(base_cls.from_pretrained(tmp_path / "merged").eval())
    assert float((merged - trained).abs().max()) < 1e-4

    report = export_adapter(sw, tmp_path / "adapter")
    # rank r * rounds = 2 * 3 is exact; the reported error is then the float32 round-off of W - W0
    assert report["exact"] and report["rank"] == 2 * 3 and report["max_rel_error"] < 1e-2
    with torch.no_grad():
        loaded = logits(PeftModel.from_pretrained(CONFIGS[kind][0](), tmp_path / "adapter").eval())
    assert float((loaded - trained).abs().max()) < 1e-4

    small = export_adapter(sw, tmp_path / "small", rank=1)  # truncated: error reported
    assert not small["exact"] and small["max_rel_error"] > 10 * report["max_rel_error"]


def test_optimiser_semantics_benchmark_probe(monkeypatch):
    """The benchmark's sign-descent probe: ~1 for AdamW 'reset' per step, ~0 for SGD (script cannot rot)."""
    bench = pytest.importorskip("benchmarks.peft_optimiser_semantics")
    monkeypatch.setattr(bench, "STEPS", 3)
    x, y = bench.task()
    loss, frac = bench.run(1, "adamw", "reset", 1e-2, 0, x, y, sign_probe=True)
    assert frac > 0.99 and loss < 0.5
    _, frac_sgd = bench.run(1, "sgd", "reset", 1.0, 0, x, y, sign_probe=True)
    assert frac_sgd < 0.05


hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings, strategies as st  # noqa: E402


def mlp_base():
    torch.manual_seed(7)
    return torch.nn.Sequential(torch.nn.Linear(6, 9), torch.nn.Tanh(), torch.nn.Linear(9, 5)).double()


def mlp_peft(r):
    return get_peft_model(mlp_base(), LoraConfig(r=r, lora_alpha=2 * r, lora_dropout=0.0, target_modules=["0", "2"]))


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), p=st.sampled_from([0.0, 0.3, 1.0]), every=st.integers(1, 3),
       steps=st.integers(1, 7), r=st.integers(1, 2))
def test_property_rank_bound_and_exact_export(seed, p, every, steps, r):
    """For all runs: rank(W - W0) <= min(m, n, r * rounds) and the default export reproduces the model."""
    import tempfile

    model = mlp_peft(r)
    x = torch.randn(8, 6, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    sw = prepare_bernoulli_lora(model, p=p, every=every, seed=seed)
    opt = sw.create_optimizer(lr=0.3)
    for t in range(1, steps + 1):
        (model(x) ** 2).mean().backward()
        opt.step()
        opt.zero_grad()
        sw.step(t, opt)
    rounds = sw.counts["left"] + sw.counts["right"]
    for (_, m), w0 in zip(sw.layers, sw.reference):
        w = m.get_base_layer().weight.detach() + layer_delta(m, "default").detach()
        assert int(torch.linalg.matrix_rank(w - w0, rtol=1e-9)) <= min(*w.shape, r * rounds)
    with tempfile.TemporaryDirectory() as d:
        report = export_adapter(sw, d)
        assert report["exact"] and report["max_rel_error"] < 1e-8
        with torch.no_grad():
            loaded = PeftModel.from_pretrained(mlp_base(), d)(x)
            torch.testing.assert_close(loaded, model(x), rtol=0, atol=1e-10)
