"""Labelled text: the Rotten Tomatoes snippets shipped in the vaderSentiment 3.3.2 sdist.

No dataset hub is reachable here, but PyPI is: the source archive of ``vaderSentiment``
3.3.2 (MIT) carries ``additional_resources/hutto_ICWSM_2014.tar.gz``, which holds
``movieReviewSnippets_GroundTruth.txt`` -- 10,605 movie-review sentences (the sentences
SST was built from), one per line as ``id<TAB>score<TAB>text`` with a mean human rating
in -4..4. Dropping the 37 neutral rows (score 0) leaves 10,568 sentences labelled
negative (0) / positive (1).

The file is fetched once with ``pip download`` and cached under ``cache_dir()/data/``.
"""
from __future__ import annotations

import hashlib
import html
import io
import os
import random
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence, TypeVar

import trtserve_contract as contract

from ..core.enums import DATASET_LABELS
from ..core.errors import DatasetError, UnknownNameError
from ..core.files import write_bytes_atomic
from ..core.paths import cache_dir

VADER_REQUIREMENT = "vadersentiment==3.3.2"
#: Member of the sdist that holds the ICWSM 2014 resources (path below the sdist's top folder).
VADER_RESOURCES_MEMBER = "additional_resources/hutto_ICWSM_2014.tar.gz"
MOVIE_REVIEWS_FILE = "movieReviewSnippets_GroundTruth.txt"
#: sha256 of the file as shipped in vaderSentiment 3.3.2 (UTF-8, CRLF line ends).
MOVIE_REVIEWS_SHA256 = "c8293b0d942e90e223ea2c0955d969040d1a1be514a978b9af0698940bd13350"
PIP_DOWNLOAD_TIMEOUT_S = 300

#: Label names by label id of the movie reviews (id 0 = negative, 1 = positive).
SENTIMENT_LABELS = contract.SENTIMENT_LABELS

T = TypeVar("T")


class UnknownDatasetError(UnknownNameError):
    """A dataset name that is not in :data:`DATASETS`."""


@dataclass(frozen=True)
class LabelledText:
    """One labelled sentence: ``label`` is a class id, ``score`` the source's raw rating."""

    text: str
    label: int
    score: float


# ---- fetching ------------------------------------------------------------------------


def ensure_vader_archive(cache: Path | None = None, *, download: Callable[[Path], Path] | None = None,
                         expected_sha256: str = MOVIE_REVIEWS_SHA256) -> Path:
    """Return the cached ``movieReviewSnippets_GroundTruth.txt``, fetching it if missing.

    ``cache`` is the artifact cache root (default :func:`cache_dir`); the file lands in
    ``<cache>/data/``. The vaderSentiment sdist is fetched with ``pip download`` into a
    temporary folder, the file is extracted, checked against its known sha256, written to a
    temporary name and renamed into place, so a concurrent or interrupted run never leaves
    a partial file behind. ``download(folder) -> sdist path`` fetches the archive (default
    :func:`pip_download_sdist`); ``expected_sha256`` is the file's known hash.
    """
    data_dir = Path(cache if cache is not None else cache_dir()) / "data"
    target = data_dir / MOVIE_REVIEWS_FILE
    if target.is_file():
        return target
    data_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".vader-", dir=data_dir) as tmp:
        sdist = (download or pip_download_sdist)(Path(tmp))
        payload = _extract_movie_reviews(sdist)
    _check_sha256(payload, expected_sha256, f"{MOVIE_REVIEWS_FILE} from {sdist.name}")
    _write_atomically(target, payload)
    return target


def pip_download_sdist(dest: Path, run: Callable[..., subprocess.CompletedProcess] = subprocess.run) -> Path:
    """Run ``pip download`` for the vaderSentiment sdist into ``dest``; return the archive.

    ``run`` is :func:`subprocess.run` (a test passes a stand-in for pip)."""
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
        "--disable-pip-version-check", VADER_REQUIREMENT, "-d", str(dest),
    ]
    try:
        proc = run(cmd, capture_output=True, text=True, timeout=PIP_DOWNLOAD_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise DatasetError(
            f"`{' '.join(cmd)}` did not finish in {PIP_DOWNLOAD_TIMEOUT_S} s; is PyPI reachable?"
        ) from None
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise DatasetError(
            f"could not download the {VADER_REQUIREMENT} source archive from PyPI "
            f"(pip exit status {proc.returncode}); the movie-review dataset ships inside it.\n"
            f"command: {' '.join(cmd)}\n{tail}"
        )
    archives = sorted(dest.glob("*.tar.gz"))
    if len(archives) != 1:
        raise DatasetError(
            f"expected one .tar.gz sdist from pip download in {dest}, found {[p.name for p in dest.iterdir()]}"
        )
    return archives[0]


def _extract_movie_reviews(sdist: Path) -> bytes:
    """Read the movie-review file out of the nested tarball inside the sdist."""
    with tarfile.open(sdist, "r:gz") as outer:
        inner_bytes = _read_member(outer, lambda n: n.endswith("/" + VADER_RESOURCES_MEMBER), sdist.name)
    with tarfile.open(fileobj=io.BytesIO(inner_bytes), mode="r:gz") as inner:
        return _read_member(inner, lambda n: n.rsplit("/", 1)[-1] == MOVIE_REVIEWS_FILE, VADER_RESOURCES_MEMBER)


def _read_member(archive: tarfile.TarFile, match: Callable[[str], bool], where: str) -> bytes:
    """Return the bytes of the single regular-file member whose name satisfies ``match``."""
    members = [m for m in archive.getmembers() if m.isfile() and match(m.name)]
    if len(members) != 1:
        raise DatasetError(f"{where}: expected exactly one matching member, found {[m.name for m in members]}")
    handle = archive.extractfile(members[0])
    assert handle is not None  # isfile() members always have a file object
    return handle.read()


def _check_sha256(payload: bytes, expected: str, what: str) -> None:
    digest = hashlib.sha256(payload).hexdigest()
    if digest != expected:
        raise DatasetError(f"{what}: sha256 {digest} does not match the expected {expected}")


def _write_atomically(target: Path, payload: bytes) -> None:
    """Write ``payload`` next to ``target``, then rename it into place (mode 0644)."""
    write_bytes_atomic(target, payload)


# ---- parsing -------------------------------------------------------------------------


def decode_line(raw: bytes) -> str:
    """Decode one line: UTF-8 (what vaderSentiment 3.3.2 ships) or, failing that, cp1252.

    Bytes undefined in cp1252 (0x81, 0x8D, ...) fall back to latin-1, which maps every byte.
    """
    for encoding in ("utf-8", "cp1252"):
        try:
            return raw.decode(encoding)
        except UnicodeDecodeError:
            continue
    return raw.decode("latin-1")


def parse_movie_review_line(raw: bytes, where: str) -> LabelledText | None:
    """Parse ``id<TAB>score<TAB>text``; return None for blank or neutral (score 0) rows."""
    line = decode_line(raw).rstrip("\r\n")
    if not line.strip():
        return None
    parts = line.split("\t", 2)
    if len(parts) != 3:
        raise DatasetError(f"{where}: expected 'id<TAB>score<TAB>text', got {len(parts)} field(s): {line[:80]!r}")
    _, score_text, text = parts
    try:
        score = float(score_text)
    except ValueError:
        raise DatasetError(f"{where}: score {score_text!r} is not a number") from None
    text = html.unescape(text).strip()  # the file carries a few HTML entities ("PB&amp; J")
    if score == 0 or not text:
        return None
    return LabelledText(text=text, label=1 if score > 0 else 0, score=score)


def load_movie_reviews(path: str | os.PathLike[str]) -> list[LabelledText]:
    """Read a ``movieReviewSnippets_GroundTruth.txt``-style file, neutral rows dropped."""
    path = Path(path)
    rows: list[LabelledText] = []
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            row = parse_movie_review_line(raw, f"{path}:{lineno}")
            if row is not None:
                rows.append(row)
    if not rows:
        raise DatasetError(f"{path}: no labelled (non-neutral) rows")
    return rows


# ---- splitting -----------------------------------------------------------------------


def split_holdout(rows: Sequence[T], fraction: float, seed: int) -> tuple[list[T], list[T]]:
    """Split ``rows`` into (train, holdout) by a seeded shuffle; same inputs, same split.

    ``round(len(rows) * fraction)`` rows (at least one) are held out; both parts keep the
    shuffled order. Uses :class:`random.Random`, whose shuffle is stable across runs and
    Python versions for a given seed.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"holdout fraction must lie strictly between 0 and 1, got {fraction}")
    if len(rows) < 2:
        raise ValueError(f"need at least 2 rows to split, got {len(rows)}")
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    n_holdout = min(len(rows) - 1, max(1, round(len(rows) * fraction)))
    holdout = [rows[i] for i in order[:n_holdout]]
    train = [rows[i] for i in order[n_holdout:]]
    return train, holdout


# ---- registry ------------------------------------------------------------------------


def load_vader_movie_reviews() -> list[LabelledText]:
    """The 10,568 non-neutral Rotten Tomatoes snippets (fetched on first use)."""
    return load_movie_reviews(ensure_vader_archive(cache_dir()))


#: Dataset name (as written in a spec's ``[training] dataset``) -> loader.
DATASETS: dict[str, Callable[[], list[LabelledText]]] = {
    "vader-movie-reviews": load_vader_movie_reviews,
}

# Label names per dataset: core.enums.DATASET_LABELS (the spec validates against it).


def _check_known(name: str) -> None:
    if name not in DATASETS:
        raise UnknownDatasetError(f"unknown dataset {name!r}; known datasets: {sorted(DATASETS)}")


def load_dataset(name: str) -> list[LabelledText]:
    """Load a registered dataset by name; unknown names list the known ones."""
    _check_known(name)
    return DATASETS[name]()


def dataset_labels(name: str) -> tuple[str, ...]:
    """Label names of a registered dataset, indexed by label id."""
    _check_known(name)
    return DATASET_LABELS[name]


def corpus_texts(limit: int | None = None) -> list[str]:
    """Real review sentences, in file order (for benchmarks and load tests)."""
    texts = [row.text for row in load_dataset("vader-movie-reviews")]
    return texts if limit is None else texts[:limit]
