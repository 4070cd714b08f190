"""Hydra configuration: structured configs in :mod:`experiments.conf.schema`,
experiment presets (one per paper figure) in ``conf/experiment/*.yaml``."""
