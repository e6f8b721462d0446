"""bench.ab_repositories: one repository served twice with different tritonserver options (an A/B
of a server setting such as the Python backend's shared memory)."""
from __future__ import annotations

import pytest

from bench.ab_repositories import server_variants


def test_each_repository_gets_the_options_in_its_position():
    got = server_variants(["repo", "repo", "other"],
                          ["", "--backend-config=python,shm-default-byte-size=67108864 --log-verbose=1"])
    assert got == [("repo", []),
                   ("repo --backend-config=python,shm-default-byte-size=67108864 --log-verbose=1",
                    ["--backend-config=python,shm-default-byte-size=67108864", "--log-verbose=1"]),
                   ("other", [])]


def test_the_same_repository_with_the_same_options_twice_is_refused():
    with pytest.raises(ValueError, match="same repository"):
        server_variants(["repo", "repo"], [])


def test_more_options_than_repositories_are_refused():
    with pytest.raises(ValueError, match="more --server-args"):
        server_variants(["repo"], ["", "--x"])
