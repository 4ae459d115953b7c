"""Shamir sharing of 32-byte secrets: every t-subset reconstructs, fewer than t do not."""

from __future__ import annotations

import itertools
import os

import pytest

from umbra.secure.secagg.shamir import combine_shares, split_secret


@pytest.mark.parametrize("length", [16, 32])
@pytest.mark.parametrize("n", [1, 2, 3, 4, 5])
def test_every_threshold_subset_reconstructs_and_smaller_subsets_fail(n: int, length: int) -> None:
    for t in range(1, n + 1):
        secret = os.urandom(length)
        shares = split_secret(secret, threshold=t, num_shares=n)
        assert [i for i, _ in shares] == list(range(1, n + 1))
        assert all(len(s) == length for _, s in shares)
        for subset in itertools.combinations(shares, t):
            assert combine_shares(list(subset)) == secret
        for size in range(1, t):
            for subset in itertools.combinations(shares, size):
                assert combine_shares(list(subset)) != secret


def test_threshold_one_share_is_not_the_secret_above_one() -> None:
    secret = os.urandom(32)
    shares = split_secret(secret, threshold=3, num_shares=5)
    assert all(s != secret for _, s in shares)
    assert len({s for _, s in shares}) == 5


@pytest.mark.parametrize(
    ("secret", "t", "n", "match"),
    [
        (b"short", 2, 3, "secret must be 16 or 32 bytes"),
        (bytes(32), 4, 3, "threshold must be in"),
        (bytes(32), 0, 3, "threshold must be in"),
        (bytes(32), 1, 0, "num_shares must be in"),
    ],
)
def test_split_rejects_bad_arguments(secret: bytes, t: int, n: int, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        split_secret(secret, threshold=t, num_shares=n)


def test_combine_rejects_malformed_shares() -> None:
    with pytest.raises(ValueError, match="must not be empty"):
        combine_shares([])
    with pytest.raises(ValueError, match="shares must all be 16 or 32 bytes"):
        combine_shares([(1, b"x" * 31)])
    with pytest.raises(ValueError, match="shares must all be 16 or 32 bytes"):
        combine_shares([(1, b"x" * 32), (2, b"x" * 16)])
    with pytest.raises(ValueError, match="share index"):
        combine_shares([(0, bytes(32))])
