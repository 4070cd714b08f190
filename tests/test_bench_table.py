"""README's performance table is generated from the benchmark outputs in paper_results/
(scripts/bench_table.py): the README block is the generated one, a changed raw number
makes the check fail, and --write puts it back."""
import importlib.util
import json
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("bench_table", ROOT / "scripts" / "bench_table.py")
bt = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bt)


def test_readme_block_is_generated_from_the_raw_outputs():
    assert bt.current_block((ROOT / "README.md").read_text()) == bt.block(ROOT)
    assert bt.main(["--check"]) == 0


def _copy(tmp_path):
    """README.md and paper_results/ in a scratch repository root."""
    shutil.copytree(ROOT / "paper_results", tmp_path / "paper_results",
                    ignore=shutil.ignore_patterns("*.parquet", "*.png", "*.pdf", "*.tar.gz"))
    shutil.copy(ROOT / "README.md", tmp_path / "README.md")
    return ["--root", str(tmp_path), "--readme", str(tmp_path / "README.md")]


def test_a_changed_benchmark_output_is_caught_and_rewritten(tmp_path, capsys):
    args = _copy(tmp_path)
    assert bt.main(["--check", *args]) == 0
    raw = tmp_path / "paper_results" / "cpu" / "bench_core_cpu.json"
    data = json.loads(raw.read_text())
    data["batching"]["throughput_ratio"] = 3.25
    raw.write_text(json.dumps(data))
    assert bt.main(["--check", *args]) == 1
    assert "BENCH block differs" in capsys.readouterr().err
    assert bt.main(["--write", *args]) == 0
    assert "**3.2x** throughput" in (tmp_path / "README.md").read_text()
    assert bt.main(["--check", *args]) == 0
    text = (tmp_path / "README.md").read_text()
    outside = text.replace(bt.current_block(text), "")
    assert outside == (ROOT / "README.md").read_text().replace(bt.current_block((ROOT / "README.md").read_text()), "")


def test_a_readme_without_the_markers_is_refused(tmp_path):
    with pytest.raises(ValueError, match="BENCH"):
        bt.replace_block("no markers here", bt.block(ROOT))
