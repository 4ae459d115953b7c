"""Encrypted inference: CKKS fusion + head vs plaintext, key separation, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from umbra.models import masked_mean
from umbra.services.context import (
    INFERENCE_PARAMS,
    SIMILARITY_PARAMS,
    client_context,
    load_public_context,
    public_context,
)
from umbra.services.errors import ServiceError
from umbra.services.inference import InferenceServer
from umbra.services.inference_client import InferenceClient
from umbra.services.poly_head import PolyHead, fit_poly_head, relu_fit
from umbra.services.wire import Message, decode, encode

M, D, H, C = 3, 8, 6, 4


def _head(seed: int = 0) -> PolyHead:
    rng = np.random.default_rng(seed)
    return PolyHead(
        w1=rng.normal(size=(H, D)) / np.sqrt(D),
        b1=rng.normal(size=H) * 0.1,
        coeffs=np.column_stack(
            [rng.uniform(0.05, 0.3, H), rng.uniform(0.3, 0.7, H), rng.normal(size=H) * 0.1]
        ),
        w2=rng.normal(size=(C, H)) / np.sqrt(H),
        b2=rng.normal(size=C) * 0.1,
    )


@pytest.fixture(scope="module")
def client() -> InferenceClient:
    return InferenceClient()


@pytest.fixture(scope="module")
def server() -> InferenceServer:
    return InferenceServer(_head().folded(), modalities=("image", "audio", "text"))


def _reference(head: PolyHead, emb: np.ndarray, mask: np.ndarray) -> np.ndarray:
    # Independent fusion: the model's own torch masked mean, then the unfolded head.
    fused = masked_mean(torch.from_numpy(emb), torch.from_numpy(mask)).numpy()
    return head.logits(fused)


def test_encrypted_logits_equal_plaintext_on_random_inputs(
    client: InferenceClient, server: InferenceServer
) -> None:
    rng = np.random.default_rng(1)
    b = 60
    emb = rng.normal(size=(b, M, D))
    mask = rng.random((b, M)) < 0.6
    mask[0] = False  # a record with no modality: the zero fused vector, as masked_mean
    mask[1] = True
    emb[~mask] = np.nan  # what absent modalities hold must not matter
    got = client.logits(server.handle(client.request(emb, mask)), b)
    ref = _reference(_head(), np.where(mask[:, :, None], emb, 0.0), mask)
    assert got.shape == (b, C)
    np.testing.assert_allclose(got, ref, atol=1e-4)
    margin = np.sort(ref, axis=1)[:, -1] - np.sort(ref, axis=1)[:, -2]
    clear = margin > 1e-2
    assert (got.argmax(1) == ref.argmax(1))[clear].all()


def test_encrypted_logits_equal_plaintext_on_a_real_model(client: InferenceClient) -> None:
    """A real model's embeddings of real (synthetic-source) records, its head made
    polynomial: the encrypted logits equal the plaintext polynomial head's."""
    from umbra.data.sources.synthetic import make_synthetic
    from umbra.models import ModelSpec, MultimodalNet
    from umbra.services.embed import embed_records
    from umbra.services.served_model import fused_embeddings, served_head

    torch.manual_seed(0)
    data = make_synthetic(n=340, modalities=("text", "tabular"), seed=0)
    keep = np.random.default_rng(7).random((len(data), 2)) < 0.7
    keep[~keep.any(axis=1), 0] = True
    data = data.with_mask(keep)
    train, test = data.subset(np.arange(300)), data.subset(np.arange(300, 340))
    spec = ModelSpec.from_data(train, hidden=16, embed_dim=D, dropout=0.0)
    model = MultimodalNet(spec)
    head = served_head(model, train, steps=20)
    emb, mask = embed_records(model, test)
    assert emb.shape == (len(test), len(spec.modalities), D)
    srv = InferenceServer(head.folded(), modalities=spec.modalities)
    got = client.logits(srv.handle(client.request(emb, mask)), len(test))
    ref = head.logits(fused_embeddings(emb, mask))
    np.testing.assert_allclose(got, ref, atol=1e-4)
    # and the embeddings are the model's own: the ReLU head on them gives its logits
    with torch.no_grad():
        from umbra.federation.train import Batchable

        batch = Batchable.from_data(test)
        inputs, m, _ = batch.take(torch.arange(len(batch)))
        direct = model.eval()(inputs, m).numpy()
    w1, b1, w2, b2 = (
        p.detach().double().numpy()
        for p in (
            model.head[0].weight,
            model.head[0].bias,
            model.head[3].weight,
            model.head[3].bias,
        )
    )
    relu = np.maximum(fused_embeddings(emb, mask) @ w1.T + b1, 0) @ w2.T + b2
    np.testing.assert_allclose(relu, direct, atol=1e-4)


def test_server_context_cannot_decrypt(client: InferenceClient) -> None:
    server_ctx = load_public_context(client.public_context, INFERENCE_PARAMS)
    assert not server_ctx.has_secret_key() and not server_ctx.is_private()
    request = decode(client.request(np.ones((2, M, D)), np.ones((2, M), bool)), max_blobs=99)
    import tenseal as ts

    vec = ts.ckks_vector_from(server_ctx, request.blobs[1])
    with pytest.raises(ValueError, match="secret"):
        vec.decrypt()


def test_a_context_holding_the_secret_key_is_refused() -> None:
    ctx = client_context(INFERENCE_PARAMS)
    secret = bytes(ctx.serialize(save_secret_key=True))
    with pytest.raises(ServiceError, match="secret key"):
        load_public_context(secret, INFERENCE_PARAMS)


def test_wrong_dimension_is_one_line(client: InferenceClient, server: InferenceServer) -> None:
    with pytest.raises(ServiceError, match=r"request has 3 modalities of dimension 5"):
        server.handle(client.request(np.ones((2, M, 5)), np.ones((2, M), bool)))
    with pytest.raises(ServiceError, match="ciphertexts"):
        msg = decode(client.request(np.ones((2, M, D)), np.ones((2, M), bool)), max_blobs=99)
        server.handle(encode(Message(msg.header, msg.blobs[:-1])))


def test_other_parameters_are_refused(client: InferenceClient, server: InferenceServer) -> None:
    msg = decode(client.request(np.ones((2, M, D)), np.ones((2, M), bool)), max_blobs=99)
    other = client_context(SIMILARITY_PARAMS)
    with pytest.raises(ServiceError, match="CKKS parameters"):
        server.handle(encode(Message(msg.header, [public_context(other), *msg.blobs[1:]])))
    import tenseal as ts

    foreign = ts.ckks_vector(other, [1.0] * SIMILARITY_PARAMS.slots).serialize()
    with pytest.raises(ServiceError, match="ciphertext 3 is malformed or made with other"):
        server.handle(encode(Message(msg.header, [*msg.blobs[:4], foreign, *msg.blobs[5:]])))
    with pytest.raises(ServiceError, match="ciphertext 0 is malformed"):
        server.handle(encode(Message(msg.header, [msg.blobs[0], b"\x00" * 50, *msg.blobs[2:]])))


def test_ciphertexts_of_another_key_are_caught_by_the_client(
    client: InferenceClient, server: InferenceServer
) -> None:
    """Same parameters, another secret key: the server cannot tell (CKKS carries no
    authentication), the result decrypts to noise under the client's key and is refused."""
    stranger = InferenceClient()
    mine = decode(client.request(np.ones((2, M, D)), np.ones((2, M), bool)), max_blobs=99)
    theirs = decode(stranger.request(np.ones((2, M, D)), np.ones((2, M), bool)), max_blobs=99)
    mixed = encode(Message(mine.header, [mine.blobs[0], *theirs.blobs[1:]]))
    with pytest.raises(ServiceError, match="does not decrypt under this key"):
        client.logits(server.handle(mixed), 2)


def test_client_refuses_bad_batches(client: InferenceClient) -> None:
    with pytest.raises(ServiceError, match=r"1\.\.4096 records"):
        client.request(
            np.ones((INFERENCE_PARAMS.slots + 1, M, D)),
            np.ones((INFERENCE_PARAMS.slots + 1, M), bool),
        )
    with pytest.raises(ServiceError, match="present modalities must be finite"):
        client.request(np.full((1, M, D), np.nan), np.ones((1, M), bool))
    with pytest.raises(TypeError, match="secret key"):
        import pickle

        pickle.dumps(client)


def test_folded_head_equals_the_polynomial_head() -> None:
    head = _head(3)
    x = np.random.default_rng(4).normal(size=(50, D))
    np.testing.assert_allclose(head.folded().logits(x), head.logits(x), atol=1e-12)


def test_relu_fit_is_the_least_squares_quadratic() -> None:
    h = np.random.default_rng(5).normal(size=(400, 3)) * 2
    coeffs = relu_fit(h)
    for k in range(3):
        design = np.column_stack([h[:, k] ** 2, h[:, k], np.ones(len(h))])
        ref, *_ = np.linalg.lstsq(design, np.maximum(h[:, k], 0), rcond=None)
        np.testing.assert_allclose(coeffs[k], ref, atol=1e-8)


def test_fine_tuning_brings_the_quadratic_head_closer_to_relu() -> None:
    rng = np.random.default_rng(6)
    w1, b1 = rng.normal(size=(16, D)), rng.normal(size=16)
    w2, b2 = rng.normal(size=(C, 16)), rng.normal(size=C)
    x = rng.normal(size=(3000, D))
    relu = (np.maximum(x @ w1.T + b1, 0) @ w2.T + b2).argmax(1)
    fitted = fit_poly_head(w1, b1, w2, b2, x, steps=0)
    tuned = fit_poly_head(w1, b1, w2, b2, x, steps=300)
    agree_fit = (fitted.logits(x).argmax(1) == relu).mean()
    agree_tuned = (tuned.logits(x).argmax(1) == relu).mean()
    assert agree_tuned > agree_fit


def test_dead_hidden_units_fold_into_constants(client: InferenceClient) -> None:
    head = _head(8)
    w1 = head.w1.copy()
    w1[2] = 0.0  # a unit that ignores its input: its activation is a constant
    dead = PolyHead(w1, head.b1, head.coeffs, head.w2, head.b2)
    server = InferenceServer(dead.folded(), modalities=("image", "audio", "text"))
    emb, mask = np.random.default_rng(9).normal(size=(5, M, D)), np.ones((5, M), bool)
    got = client.logits(server.handle(client.request(emb, mask)), 5)
    np.testing.assert_allclose(got, _reference(dead, emb, mask), atol=1e-4)
    flat = PolyHead(head.w1, head.b1, head.coeffs, np.zeros((C, H)), head.b2)
    with pytest.raises(ValueError, match="logit 0 of the head does not depend on its input"):
        InferenceServer(flat.folded(), modalities=("image", "audio", "text"))
