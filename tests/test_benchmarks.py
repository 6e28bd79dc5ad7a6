"""The GPU benchmark script keeps working where no GPU is: its --dry-run runs on a CPU in seconds."""

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


def test_gpu_script_is_valid_bash():
    assert subprocess.run(["bash", "-n", str(BENCHMARKS / "gpu.sh")]).returncode == 0


def test_sparse_benchmark_dry_run(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["sparse_throughput.py", "--dry-run"])
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # it imports timing.py from beside it
    runpy.run_path(str(BENCHMARKS / "sparse_throughput.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert out.count("training tokens/s") == 2 and "moe-tiny:" in out and "gptneo-tiny:" in out
