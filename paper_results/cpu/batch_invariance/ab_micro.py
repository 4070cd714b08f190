"""Engine step time, one thread, process CPU time (time.process_time, robust to a loaded machine), min over repetitions.
Usage: python ab_micro.py OUT.json   (run from the tree to measure)"""
import json, sys, time
import torch
torch.set_num_threads(1)
from benchmarks.bench_core import _Iso
from experiments.build import build_job
from solvers.engine import run
from solvers.estimators import GD
from solvers.methods import BernoulliLoRA
from solvers.projections import project_left

def best(fn, repeat):
    fn(); b = float("inf")
    for _ in range(repeat):
        t = time.process_time(); fn(); b = min(b, time.process_time() - t)
    return b

res = {}
prob = _Iso(64, 64, torch.device("cpu")); W0 = torch.zeros(64, 64, dtype=torch.float64)
m = BernoulliLoRA(p=0.5, rank=1, estimator=GD(), stepsize=1.0)
kw = dict(steps=20, eval_every=20, track_every_step=False)
res["iso64_blora_gd_R64_per_step_s"] = best(lambda: run(m, prob, W0, range(64), **kw), 7) / 20
res["iso64_blora_gd_R1_per_step_s"] = best(lambda: run(m, prob, W0, [0], **kw), 7) / 20
g = torch.Generator().manual_seed(0)
B = torch.randn(1, 1024, 4, generator=g, dtype=torch.float64); G = torch.randn(1, 1024, 1024, generator=g, dtype=torch.float64)
res["project_left_1024_r4_s"] = best(lambda: project_left(B, G), 7)
CASES = {
 "logistic_page_blora_R20": dict(problem=dict(name="logistic"), method=dict(name="bernoulli_lora", p=0.5, rank=1), estimator=dict(name="page", batch=4)),
 "quadratic12x4_gd_blora2_R20": dict(problem=dict(name="quadratic", m=12, n=4, mu=1.0, L=4.0), method=dict(name="bernoulli_lora", p=0.5, rank=2), estimator=dict(name="gd")),
 "linreg_ci_sgd_blora_R20": dict(problem=dict(name="linreg", size="ci"), method=dict(name="bernoulli_lora", p=0.5, rank=1), estimator=dict(name="sgd", batch=10)),
 "federated_marina_randk_blora_R20": dict(problem=dict(name="logistic", n_clients=4), method=dict(name="bernoulli_lora", p=0.5, rank=1), estimator=dict(name="marina", q=0.2), compressor=dict(name="randk", k=8)),
}
for name, c in CASES.items():
    job = build_job(dict(c, steps=20, seeds=20, seed=0, eval_every=10, device="cpu"))
    res[name + "_per_step_s"] = best(lambda: run(job.method, job.problem, job.problem.W0, job.seeds, steps=20, eval_every=10), 5) / 20
res["threads"] = torch.get_num_threads(); res["torch"] = torch.__version__
json.dump(res, open(sys.argv[1], "w"), indent=1)
print(json.dumps(res))
