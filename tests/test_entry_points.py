"""The console scripts of ``[project.scripts]`` resolve, and nothing selects a
matplotlib backend at import time (issue 12, item 4)."""
from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
SCRIPTS = PROJECT["scripts"]
#: modules with a ``__main__`` that are tools of the scripts in scripts/, not user commands
TOOLS = {"experiments.problems.linreg", "experiments.nonisotropic_rates"}


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_console_script_resolves_to_a_callable(name):
    module, _, attr = SCRIPTS[name].partition(":")
    assert callable(getattr(importlib.import_module(module), attr)), SCRIPTS[name]


def _main_modules():
    out = set()
    for pkg in ("experiments", "figures"):
        for f in (ROOT / pkg).rglob("*.py"):
            if re.search(r'^if __name__ == "__main__":', f.read_text(encoding="utf-8"), re.M):
                mod = ".".join(f.relative_to(ROOT).with_suffix("").parts)
                out.add(mod[: -len(".__main__")] if mod.endswith(".__main__") else mod)
    return out


def test_every_command_module_has_a_console_script():
    """A ``python -m`` command is a console script or a declared tool (:data:`TOOLS`)."""
    targets = {v.partition(":")[0] for v in SCRIPTS.values()}
    targets |= {t.rsplit(".", 1)[0] for t in targets if t.endswith(".cli")}  # package.__main__ -> package.cli
    missing = _main_modules() - targets - TOOLS
    assert not missing, f"python -m modules without a console script: {sorted(missing)}"


def test_pyyaml_is_declared():
    assert any(re.match(r"pyyaml\b", d, re.I) for d in PROJECT["dependencies"])


def test_importing_the_packages_selects_no_matplotlib_backend():
    code = ("import matplotlib\n"
            "def refuse(*a, **k): raise SystemExit('matplotlib.use called at import time')\n"
            "matplotlib.use = refuse\n"
            "import figures.make, figures.plots, figures.rates, figures.style, figures.layout\n"
            "import experiments.real_model.cli, experiments.real_model.report\n"
            "import matplotlib.pyplot\n"
            "print(matplotlib.rcParams._get_backend_or_none())\n")
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip() == "None"
