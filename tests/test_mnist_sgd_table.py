"""scripts/mnist_sgd_table.py: the per-step SGD table with its learning-rate sweep."""
import importlib.util
from pathlib import Path

import pandas as pd
import pytest

_SPEC = importlib.util.spec_from_file_location("mnist_sgd_table", Path(__file__).parents[1] / "scripts" / "mnist_sgd_table.py")
mst = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(mst)


def _summary(folder: Path, rows):
    folder.mkdir(parents=True)
    pd.DataFrame(rows, columns=["label", "seeds", "acc_median", "acc_std", "trainable_params", "diverged",
                                "rank", "epochs", "switch", "optimizer"]).to_csv(folder / "summary.csv", index=False)


def test_table_cells_and_best_lr(tmp_path, capsys):
    common = (1, 50, "step", "sgd")
    _summary(tmp_path / "lr_0.01", [("fpft", 20, 90.0, 0.5, 100, 0, *common), ("lora_a", 20, 60.0, 2.0, 10, 0, *common)])
    _summary(tmp_path / "lr_0.1", [("fpft", 20, 95.0, 0.4, 100, 0, *common), ("lora_a", 20, 70.0, 3.0, 10, 1, *common)])
    _summary(tmp_path / "lr_1", [("fpft", 20, float("nan"), float("nan"), 100, 20, *common),
                                 ("lora_a", 20, float("nan"), float("nan"), 10, 20, *common)])
    assert mst.main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| fpft | 100 | 90.00 +- 0.50 | 95.00 +- 0.40 | div 20/20 | 0.1 |" in out
    # a diverged seed disqualifies lr 0.1 for lora_a even though its median is higher
    assert "| lora_a | 10 | 60.00 +- 2.00 | 70.00 +- 3.00 (div 1/20) | div 20/20 | 0.01 |" in out


def test_empty_folder_is_refused(tmp_path):
    with pytest.raises(SystemExit, match="DIR: no lr_"):
        mst.main([str(tmp_path)])
