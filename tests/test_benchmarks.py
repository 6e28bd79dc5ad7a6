"""The benchmark scripts keep working where no GPU is: their --dry-run runs on a CPU in seconds."""

import os
import runpy
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).parent.parent / "benchmarks"


def test_gpu_benchmark_dry_run(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["gpu_gpt2.py", "--dry-run"])
    runpy.run_path(str(BENCHMARKS / "gpu_gpt2.py"), run_name="__main__")
    out = capsys.readouterr().out
    for who in ("pretrainer", "transformers"):
        line = next(line for line in out.splitlines() if line.strip().startswith(who))
        assert "tokens/s" in line and "MFU" in line
    assert "ratio pretrainer/transformers" in out


def test_gpu_script_runs_with_the_python_it_finds():
    """gpu.sh end to end, --dry-run on a CPU: it takes the python3 on PATH that imports torch (as it would a GPU
    image's own), runs this project from src/, and installs nothing where nothing is missing."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    env.pop("PYTHONPATH", None)
    done = subprocess.run(["bash", str(BENCHMARKS / "gpu.sh"), "--dry-run"], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "ratio pretrainer/transformers" in done.stdout and "installing" not in done.stdout


def test_sparse_benchmark_dry_run(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["sparse_throughput.py", "--dry-run"])
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # it imports timing.py from beside it
    runpy.run_path(str(BENCHMARKS / "sparse_throughput.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert out.count("training tokens/s") == 2 and "moe-tiny:" in out and "gptneo-tiny:" in out
