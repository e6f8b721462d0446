"""The labelled movie-review dataset: parsing, fetching, splitting, registry."""
from __future__ import annotations

import hashlib
import io
import subprocess
import tarfile
from pathlib import Path

import pytest

from trtserve_build.core.enums import DATASET_LABELS
from trtserve_build.core.errors import DatasetError, SpecError
from trtserve_build.core.paths import cache_dir
from trtserve_build.data import datasets as data
from trtserve_build.data.datasets import (
    DATASETS,
    LabelledText,
    UnknownDatasetError,
    corpus_texts,
    ensure_vader_archive,
    load_dataset,
    load_movie_reviews,
    pip_download_sdist,
    split_holdout,
)

# The real format: id<TAB>score<TAB>text, CRLF line ends, no newline after the last row.
SAMPLE = (
    b"1\t2.26666666667\tThe Rock is destined to be the 21st Century's new ''Conan''\r\n"
    b"2\t-1.5\tThe clich\xe9s disappear, sadly not the boredom\r\n"  # latin-1/cp1252 byte 0xE9
    b"3\t0\tA film about a man\r\n"  # neutral: dropped
    b"4\t0.8\tY Tu Mam\xc3\xa1 Tambi\xc3\xa9n is alive\r\n"  # UTF-8, as the real file is
    b"\r\n"
    b"5\t-0.133333\tClint Eastwood's PB&amp; J sandwich \x96 but tasty"  # cp1252 en dash, HTML entity
)


@pytest.fixture
def sample_file(tmp_path: Path) -> Path:
    path = tmp_path / "movieReviewSnippets_GroundTruth.txt"
    path.write_bytes(SAMPLE)
    return path


def test_parse_real_format(sample_file: Path) -> None:
    rows = load_movie_reviews(sample_file)
    assert [r.label for r in rows] == [1, 0, 1, 0]
    assert rows[0] == LabelledText("The Rock is destined to be the 21st Century's new ''Conan''", 1, 2.26666666667)
    assert rows[1].text == "The clichés disappear, sadly not the boredom"
    assert rows[1].score == -1.5
    assert rows[2].text == "Y Tu Mamá También is alive"
    assert rows[3].text == "Clint Eastwood's PB& J sandwich – but tasty"
    assert all("\r" not in r.text and "\n" not in r.text for r in rows)


def test_neutral_rows_are_dropped(sample_file: Path) -> None:
    assert all(r.score != 0 for r in load_movie_reviews(sample_file))
    assert "A film about a man" not in [r.text for r in load_movie_reviews(sample_file)]


def test_malformed_line_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.txt"
    path.write_bytes(b"1\t1.0\tfine\n2\tnot-a-number\tbroken\n")
    with pytest.raises(DatasetError, match=r"bad\.txt:2: score 'not-a-number'"):
        load_movie_reviews(path)
    path.write_bytes(b"1\t1.0 only two fields\n")
    with pytest.raises(DatasetError, match=r"bad\.txt:1: expected 'id<TAB>score<TAB>text'"):
        load_movie_reviews(path)


def test_file_with_only_neutral_rows_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "neutral.txt"
    path.write_bytes(b"1\t0\tmeh\n")
    with pytest.raises(DatasetError, match="no labelled"):
        load_movie_reviews(path)


# ---- split ---------------------------------------------------------------------------


def test_split_is_deterministic_and_disjoint() -> None:
    rows = list(range(1000))
    train, holdout = split_holdout(rows, 0.1, seed=1234)
    assert len(holdout) == 100 and len(train) == 900
    assert set(train).isdisjoint(holdout)
    assert sorted(train + holdout) == rows
    assert split_holdout(rows, 0.1, seed=1234) == (train, holdout)
    assert split_holdout(rows, 0.1, seed=4321)[1] != holdout
    assert holdout != rows[:100]  # actually shuffled


def test_split_is_stable_across_runs() -> None:
    # Pinned: random.Random(seed).shuffle is stable across runs and Python versions.
    assert split_holdout(list(range(10)), 0.3, seed=1234) == ([5, 6, 4, 9, 0, 1, 7], [2, 8, 3])


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_split_rejects_bad_fractions(fraction: float) -> None:
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        split_holdout(list(range(10)), fraction, seed=1)


def test_split_keeps_both_parts_non_empty() -> None:
    train, holdout = split_holdout([1, 2], 0.01, seed=0)
    assert len(train) == 1 and len(holdout) == 1


# ---- registry ------------------------------------------------------------------------


def test_unknown_dataset_lists_known_ones() -> None:
    with pytest.raises(UnknownDatasetError, match=r"unknown dataset 'sst2'.*vader-movie-reviews"):
        load_dataset("sst2")
    with pytest.raises(UnknownDatasetError):
        data.dataset_labels("sst2")
    assert issubclass(UnknownDatasetError, SpecError)  # a bad name in a spec is a spec error


def test_every_dataset_has_labels_and_a_loader() -> None:
    """The spec validates names against core.enums.DATASET_LABELS; data.datasets loads them."""
    assert set(DATASETS) == set(DATASET_LABELS)


# ---- fetching ------------------------------------------------------------------------


def _fake_sdist(dest: Path, payload: bytes) -> None:
    """An sdist laid out like vaderSentiment's: a nested tarball holding the review file."""
    inner = io.BytesIO()
    with tarfile.open(fileobj=inner, mode="w:gz") as tar:
        info = tarfile.TarInfo(f"hutto_ICWSM_2014/{data.MOVIE_REVIEWS_FILE}")
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    with tarfile.open(dest / "vaderSentiment-3.3.2.tar.gz", "w:gz") as tar:
        info = tarfile.TarInfo(f"vaderSentiment-3.3.2/{data.VADER_RESOURCES_MEMBER}")
        info.size = len(inner.getvalue())
        tar.addfile(info, io.BytesIO(inner.getvalue()))


def fake_pip(payload: bytes, calls: list | None = None):
    """A stand-in for subprocess.run that 'downloads' an sdist holding ``payload``."""
    def run(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        if calls is not None:
            calls.append(cmd)
        _fake_sdist(Path(cmd[cmd.index("-d") + 1]), payload)
        return subprocess.CompletedProcess(cmd, 0, "", "")
    return lambda dest: pip_download_sdist(dest, run=run)


def test_fetch_extracts_and_checks_hash(tmp_path: Path) -> None:
    calls: list = []
    path = ensure_vader_archive(tmp_path, download=fake_pip(SAMPLE, calls),
                                expected_sha256=hashlib.sha256(SAMPLE).hexdigest())
    assert path == tmp_path / "data" / data.MOVIE_REVIEWS_FILE
    assert path.read_bytes() == SAMPLE
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == [data.MOVIE_REVIEWS_FILE]
    assert len(calls) == 1 and "vadersentiment==3.3.2" in calls[0]
    assert oct(path.stat().st_mode & 0o777) == oct(0o644)  # readable by the serving user too
    # cached: the file is not fetched again
    assert ensure_vader_archive(tmp_path, download=fake_pip(b"other", calls)) == path
    assert len(calls) == 1


def test_fetch_rejects_wrong_content(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="sha256"):
        ensure_vader_archive(tmp_path, download=fake_pip(b"1\t1.0\ttampered\n"))
    assert list((tmp_path / "data").iterdir()) == []  # nothing partial left behind


def test_pip_failure_is_explained(tmp_path: Path) -> None:
    def failing_pip(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: Could not find a version (network unreachable)")

    with pytest.raises(DatasetError) as info:
        ensure_vader_archive(tmp_path, download=lambda dest: pip_download_sdist(dest, run=failing_pip))
    message = str(info.value)
    assert "vadersentiment==3.3.2" in message and "exit status 1" in message
    assert "network unreachable" in message
    assert list((tmp_path / "data").iterdir()) == []


def test_real_archive_loads() -> None:
    """Downloads the vaderSentiment sdist from PyPI on first use (then cached)."""
    rows = load_movie_reviews(ensure_vader_archive(cache_dir()))
    assert len(rows) > 10_000
    assert len(rows) == 10_568  # 10,605 sentences minus 37 neutral
    positive = sum(r.label for r in rows)
    assert positive == 5_242
    assert 0.45 < positive / len(rows) < 0.55
    assert all(r.text and (r.label == 1) == (r.score > 0) for r in rows)
    assert any("clichés" in r.text for r in rows)  # UTF-8 decoded, not mojibake
    assert not any("Ã" in r.text or "&amp;" in r.text for r in rows)
    assert load_dataset("vader-movie-reviews") == rows
    assert corpus_texts(limit=3) == [r.text for r in rows[:3]]
