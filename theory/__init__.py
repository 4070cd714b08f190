"""Bernoulli-LoRA theory: pure math on numbers (numpy; pandas/scipy for verify only).

- :mod:`theory.spectra`   lambda_min^p, lambda_max^p of the sketch mixture
- :mod:`theory.stepsizes` admissible stepsize of each theorem
- :mod:`theory.bounds`    one bound function per theorem of docs/theory.md
- :mod:`theory.dispatch`  ``bound_for(variant, ...)``: the runner's single entry point
- :mod:`theory.verify`    ``verify(table)``: measured trajectories vs bounds -> verdicts

Imports neither ``solvers`` nor ``experiments`` (nor torch).
"""
from theory import bounds, stepsizes
from theory.dispatch import BoundResult, Constants, bound_for
from theory.spectra import (isotropic_expected_projection, isotropic_lambda_p, lambda_max_p,
                            lambda_min_p, lambda_p_from_expectations)

__all__ = [
    "bounds", "stepsizes", "BoundResult", "Constants", "bound_for",
    "lambda_min_p", "lambda_max_p", "lambda_p_from_expectations",
    "isotropic_expected_projection", "isotropic_lambda_p",
]
# verify(table) lives in theory.verify (it needs pandas): from theory.verify import verify

