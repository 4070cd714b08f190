"""rac_lora(p=0)/sgd+noise of experiment=exact_pairs at 40 seeds (the preset's first seed
count) and at 200 (shipped) and 4000 seeds: verify's exact check (same code, same seeds 0..n-1)."""
import sys
sys.path.insert(0, ".")  # run from the repository root: python paper_results/cpu_ci_reproduce/exact_presets/seeds_check.py
from tests import mutants
from theory.verify import verify
job = ("+experiment/exact_method=rac_right", "+experiment/exact_estimator=sgd_noise")
print(__doc__)
for seeds in (40, 200, 4000):
    v = verify(mutants.run_with(mutants.preset_config("exact_pairs", job, seeds=seeds))).iloc[0]
    print(f"seeds={seeds}: verdict {v['verdict']}, exact {v['exact_verdict']}, max|z| {v['exact_max_abs_z']:.3g} "
          f"at t={v['exact_worst_iteration']}; {v['reason']}")
