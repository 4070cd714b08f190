"""The transformer section: a Llama built from a config, pretrained here on a synthetic language
and fine-tuned on a shifted one through ``peft`` (``python -m experiments.real_model.lm``;
stages and store: :mod:`.runs`; table: :mod:`.table`; ``paper_repro.md`` section B3)."""
