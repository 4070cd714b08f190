"""Bernoulli-LoRA with transformers.Trainer (callback, resume from a checkpoint) and docs/peft.md's code."""
import os
import pathlib
import re

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

from peft import LoraConfig, get_peft_model  # noqa: E402

from experiments.real_model.bernoulli_peft import BernoulliLoRACallback, prepare_bernoulli_lora  # noqa: E402
from experiments.real_model.bernoulli_peft.trainer import CHECKPOINT_FILE  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")
DOC = pathlib.Path(__file__).resolve().parents[1] / "docs" / "peft.md"


def bert_model():
    cfg = transformers.BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=64, max_position_embeddings=32, num_labels=3,
                                  hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    torch.manual_seed(0)
    base = transformers.BertForSequenceClassification(cfg)
    return get_peft_model(base, LoraConfig(r=2, lora_alpha=4, lora_dropout=0.0, target_modules=["query", "value"],
                                           task_type="SEQ_CLS"))


DATA = [{"input_ids": torch.arange(7) * (i + 1) % 50, "labels": torch.tensor(i % 3)} for i in range(16)]


def make_trainer(out, callbacks_extra=()):
    model = bert_model()
    sw = prepare_bernoulli_lora(model, p=0.5, seed=3, every=2, optimizer_state="reset")
    opt = sw.create_optimizer(torch.optim.AdamW, lr=1e-2)
    args = transformers.TrainingArguments(output_dir=str(out), max_steps=6, save_steps=2, per_device_train_batch_size=4,
                                          use_cpu=True, report_to=[], logging_steps=100, seed=0,
                                          disable_tqdm=True, save_strategy="steps")
    tr = transformers.Trainer(model=model, args=args, train_dataset=DATA, optimizers=(opt, None),
                              callbacks=[BernoulliLoRACallback(sw), *callbacks_extra])
    return tr, model, sw


def test_trainer_trains_and_resumes_on_the_same_trajectory(tmp_path):
    tr, model, sw = make_trainer(tmp_path)
    w_ref = [q.detach().clone() for q in sw.reference]
    tr.train()
    assert sw.last_step == 6 and sw.counts["merges"] == 3 and sw.counts["left"] + sw.counts["right"] == 4
    assert any(not torch.equal(w, m.get_base_layer().weight) for w, (_, m) in zip(w_ref, sw.layers))
    assert not any(q in tr.optimizer.state for q in sw.factor_parameters())  # 'reset' reached the Trainer's optimiser
    final = {n: q.detach().clone() for n, q in model.named_parameters()}
    assert (tmp_path / "checkpoint-2" / CHECKPOINT_FILE).is_file()

    tr2, model2, sw2 = make_trainer(tmp_path)
    tr2.train(resume_from_checkpoint=str(tmp_path / "checkpoint-2"))
    assert sw2.last_step == 6 and sw2.counts == sw.counts and list(sw2.history) == list(sw.history)
    for n, q in model2.named_parameters():
        assert torch.equal(q.detach(), final[n]), n  # bitwise

    # without the callback's file the base progress would be lost: refused, not silent
    (tmp_path / "checkpoint-4" / CHECKPOINT_FILE).unlink()
    tr3, _, _ = make_trainer(tmp_path)
    with pytest.raises(FileNotFoundError, match="cannot be restored"):
        tr3.train(resume_from_checkpoint=str(tmp_path / "checkpoint-4"))


def test_trainer_default_optimizer_refused(tmp_path):
    model = bert_model()
    sw = prepare_bernoulli_lora(model, p=0.5)
    args = transformers.TrainingArguments(output_dir=str(tmp_path), max_steps=1, use_cpu=True, report_to=[],
                                          disable_tqdm=True, save_strategy="no")
    tr = transformers.Trainer(model=model, args=args, train_dataset=DATA, callbacks=[BernoulliLoRACallback(sw)])
    with pytest.raises(ValueError, match="trainable_parameters"):
        tr.train()


def doc_blocks():
    return re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)


def test_docs_example_runs(tmp_path, monkeypatch):
    blocks = doc_blocks()
    assert len(blocks) >= 3
    monkeypatch.chdir(tmp_path)
    ns = {}
    for code in blocks:
        exec(compile(code, str(DOC), "exec"), ns)  # the doc's own asserts check the results
    assert ns["max_diff_merged"] < 1e-4 and ns["max_diff_adapter"] < 1e-4


def test_load_best_model_at_end_refused(tmp_path):
    model = bert_model()
    sw = prepare_bernoulli_lora(model, p=0.5)
    args = transformers.TrainingArguments(output_dir=str(tmp_path), max_steps=2, use_cpu=True, report_to=[],
                                          disable_tqdm=True, save_strategy="steps", eval_strategy="steps",
                                          save_steps=1, eval_steps=1, load_best_model_at_end=True)
    tr = transformers.Trainer(model=model, args=args, train_dataset=DATA, eval_dataset=DATA,
                              optimizers=(sw.create_optimizer(lr=0.1), None), callbacks=[BernoulliLoRACallback(sw)])
    with pytest.raises(ValueError, match="load_best_model_at_end"):
        tr.train()
