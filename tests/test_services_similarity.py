"""Encrypted similarity search: scores vs plaintext dot products, candidate sets, query
budgets, bad input."""

from __future__ import annotations

import numpy as np
import pytest

from umbra.privacy.randomness import SecureRandom
from umbra.services.context import SIMILARITY_PARAMS
from umbra.services.errors import ServiceError
from umbra.services.query_budget import QueryBudget, QueryBudgetExhausted
from umbra.services.similarity import SimilarityServer
from umbra.services.similarity_client import SimilarityClient, top_k
from umbra.services.wire import Message, decode, encode

D = 16


@pytest.fixture(scope="module")
def client() -> SimilarityClient:
    return SimilarityClient()


def _cosines(gallery: np.ndarray, q: np.ndarray) -> np.ndarray:
    # independent of the service's normalise(): row norms by einsum
    g = gallery / np.sqrt(np.einsum("ij,ij->i", gallery, gallery))[:, None]
    return g @ (q / np.sqrt(q @ q))


def test_scores_equal_plaintext_dot_products(client: SimilarityClient) -> None:
    rng = np.random.default_rng(0)
    gallery = rng.normal(size=(5000, D))  # three ciphertexts of 2048 items
    server = SimilarityServer(gallery)
    q = rng.normal(size=D)
    result = client.scores(server.handle(client.request(q)))
    ref = _cosines(gallery, q)
    assert result.ids == [str(i) for i in range(5000)]
    np.testing.assert_allclose(result.scores, ref, atol=1e-4)
    top = [int(i) for i, _ in result.top(10)]
    assert set(top) == set(np.argsort(-ref)[:10].tolist())


def test_candidate_set_limits_what_the_client_sees(client: SimilarityClient) -> None:
    rng = np.random.default_rng(1)
    gallery = rng.normal(size=(300, D))
    ids = [f"item-{i}" for i in range(300)]
    server = SimilarityServer(gallery, ids=ids, candidates=40, rng=SecureRandom.for_testing(3))
    q = rng.normal(size=D)
    first = client.scores(server.handle(client.request(q)))
    second = client.scores(server.handle(client.request(q)))
    assert len(first.ids) == len(set(first.ids)) == 40
    assert first.ids != second.ids  # a fresh sample per query
    ref = dict(zip(ids, _cosines(gallery, q), strict=True))
    np.testing.assert_allclose(first.scores, [ref[i] for i in first.ids], atol=1e-4)


def test_query_budget_per_client_key(client: SimilarityClient) -> None:
    rng = np.random.default_rng(2)
    server = SimilarityServer(rng.normal(size=(50, D)), max_queries=2)
    q = rng.normal(size=D)
    server.handle(client.request(q))
    server.handle(client.request(q))
    with pytest.raises(QueryBudgetExhausted, match="has used its 2 queries"):
        server.handle(client.request(q))
    server.handle(SimilarityClient().request(q))  # another key has its own budget
    # ... but not when the endpoint knows the address: new keys do not reset it
    server.handle(SimilarityClient().request(q), peer="10.0.0.7")
    server.handle(SimilarityClient().request(q), peer="10.0.0.7")
    with pytest.raises(QueryBudgetExhausted, match=r"address 10\.0\.0\.7 has used its 2"):
        server.handle(SimilarityClient().request(q), peer="10.0.0.7")


def test_query_budget_counts() -> None:
    budget = QueryBudget(3)
    for _ in range(3):
        budget.charge("a")
    assert budget.used("a") == 3 and budget.used("b") == 0
    with pytest.raises(QueryBudgetExhausted):
        budget.charge("a")
    with pytest.raises(ValueError, match="max_queries"):
        QueryBudget(0)


def test_top_k_is_the_sorted_order() -> None:
    scores = np.random.default_rng(3).normal(size=500)
    assert top_k(scores, 7).tolist() == sorted(range(500), key=lambda i: -scores[i])[:7]
    assert len(top_k(scores[:3], 10)) == 3


def test_bad_input_is_one_line(client: SimilarityClient) -> None:
    rng = np.random.default_rng(4)
    server = SimilarityServer(rng.normal(size=(100, D)), max_gallery=100)
    with pytest.raises(ServiceError, match=r"query has dimension 8 .* dimension 16"):
        server.handle(client.request(rng.normal(size=8)))
    with pytest.raises(ServiceError, match="exceeds the configured maximum of 100"):
        SimilarityServer(rng.normal(size=(101, D)), max_gallery=100)
    with pytest.raises(ServiceError, match="finite and non-zero"):
        client.request(np.zeros(D))
    with pytest.raises(ServiceError, match="bad magic"):
        server.handle(b"GET / HTTP/1.1")
    with pytest.raises(ValueError, match="zero embedding"):
        SimilarityServer(np.zeros((3, D)))


def test_reply_to_another_key_is_refused(client: SimilarityClient) -> None:
    rng = np.random.default_rng(5)
    server = SimilarityServer(rng.normal(size=(100, D)))
    stranger = SimilarityClient()
    reply = server.handle(stranger.request(rng.normal(size=D)))
    with pytest.raises(ServiceError, match="does not decrypt under this key"):
        client.scores(reply)


def test_message_bytes_round_trip_and_truncation() -> None:
    msg = Message({"dim": 3, "ids": ["a"]}, [b"x" * 10, b""])
    data = encode(msg)
    back = decode(data, max_blobs=2)
    assert back.header == msg.header and back.blobs == msg.blobs
    with pytest.raises(ServiceError, match="truncated"):
        decode(data[:-3], max_blobs=2)
    with pytest.raises(ServiceError, match="3 blobs, more than the 2"):
        decode(encode(Message({}, [b"", b"", b""])), max_blobs=2)
    with pytest.raises(ServiceError, match="trailing"):
        decode(data + b"\x00", max_blobs=2)
    assert SIMILARITY_PARAMS.security_bits == 128 and SIMILARITY_PARAMS.depth == 1
