"""The ChaCha20 privacy stream and its samplers, against scipy and exact formulas."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from scipy import stats

from umbra.privacy.randomness import SecureRandom, discrete_gaussian_pmf


def test_stream_is_rfc8439_chacha20_keystream() -> None:
    key = (7).to_bytes(32, "little")
    ref = Cipher(algorithms.ChaCha20(key, b"\0" * 16), mode=None).encryptor().update(bytes(96))
    r = SecureRandom.for_testing(7)
    assert r.random_bytes(40) + r.random_bytes(56) == ref  # one continuous stream


def test_fresh_instances_differ_and_cannot_be_pickled() -> None:
    a, b = SecureRandom(), SecureRandom()
    assert not np.array_equal(a.uniform(64), b.uniform(64))  # keys from os.urandom
    with pytest.raises(TypeError):
        pickle.dumps(a)
    assert "key hidden" in repr(a)


def test_uniform_ks_and_53_bits() -> None:
    u = SecureRandom.for_testing(1).uniform(200_000)
    assert u.min() >= 0.0 and u.max() < 1.0
    assert stats.kstest(u, "uniform").pvalue > 1e-3
    # 53 random bits: u·2^53 is an integer and the low bit is set about half the time
    ints = (u * 2.0**53).astype(np.uint64)
    assert np.all(ints.astype(np.float64) == u * 2.0**53)
    assert abs(float((ints & np.uint64(1)).mean()) - 0.5) < 0.01


def test_normal_mean_variance_ks() -> None:
    std = 2.5
    z = SecureRandom.for_testing(2).normal((300, 1000), std=std)
    assert z.shape == (300, 1000)
    n = z.size
    assert abs(z.mean()) < 5 * std / np.sqrt(n)
    # var of the sample variance of a Gaussian: 2σ⁴/n
    assert abs(z.var() - std**2) < 5 * np.sqrt(2 / n) * std**2
    assert stats.kstest(z.ravel()[:100_000] / std, "norm").pvalue > 1e-3
    odd = SecureRandom.for_testing(3).normal(7)
    assert odd.shape == (7,)


def test_torch_normal_dtype_and_spread() -> None:
    t = SecureRandom.for_testing(4).torch_normal((50_000,), std=0.3, dtype=torch.float32)
    assert t.dtype == torch.float32
    assert abs(float(t.std()) - 0.3) < 0.01


def test_bernoulli_rate() -> None:
    m = SecureRandom.for_testing(5).bernoulli(0.085, 400_000)
    p = m.mean()
    assert abs(p - 0.085) < 5 * np.sqrt(0.085 * 0.915 / m.size)


@pytest.mark.parametrize("sigma", [0.6, 2.0, 7.3])
def test_discrete_gaussian_pmf_matches_exact(sigma: float) -> None:
    n = 300_000
    x = SecureRandom.for_testing(int(sigma * 10)).discrete_gaussian(sigma, n)
    assert x.dtype == np.int64
    support = np.arange(-int(6 * sigma) - 2, int(6 * sigma) + 3)
    expected = discrete_gaussian_pmf(sigma, support) * n
    observed = np.array([(x == k).sum() for k in support])
    keep = expected > 20  # chi-square cells with enough mass
    chi2 = float((((observed - expected) ** 2) / expected)[keep].sum())
    dof = int(keep.sum()) - 1
    assert stats.chi2.sf(chi2, dof) > 1e-4
    var = float((discrete_gaussian_pmf(sigma, support) * support**2).sum())
    assert abs(x.mean()) < 5 * np.sqrt(var / n)
    assert abs(x.var() - var) < 6 * np.sqrt(2 / n) * var


def test_discrete_gaussian_large_sigma_is_near_continuous() -> None:
    sigma = 5000.0
    x = SecureRandom.for_testing(9).discrete_gaussian(sigma, (200, 500)).astype(np.float64)
    assert x.shape == (200, 500)
    assert stats.kstest(x.ravel() / sigma, "norm").pvalue > 1e-3
    assert abs(x.std() / sigma - 1) < 0.01


def test_discrete_gaussian_zero_and_bad_sigma() -> None:
    r = SecureRandom.for_testing(0)
    assert not r.discrete_gaussian(0.0, 5).any()
    with pytest.raises(ValueError, match="sigma"):
        r.discrete_gaussian(-1.0, 5)
    with pytest.raises(ValueError, match="key"):
        SecureRandom(_key=b"short")
