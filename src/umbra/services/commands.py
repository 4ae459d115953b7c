"""``umbra infer ...``: the two roles of the encrypted services as commands.

* ``umbra infer serve RUN_DIR``: the model owner. Loads the run's final model, makes its
  head CKKS-ready (`umbra.services.served_model.served_head`), embeds a gallery of one
  modality from the run's training records, and serves both services over HTTP.
* ``umbra infer predict RUN_DIR --url URL``: a client. Embeds test records with the run's
  encoders, sends them encrypted, decrypts the predictions and compares them with the
  plaintext model.
* ``umbra infer search RUN_DIR --url URL``: a client. Embeds one test record's query
  modality, sends it encrypted, decrypts the scores and prints the top k.

Both roles read the same run folder here (the federation's members all hold the model);
the client uses only the encoders and projections, the server only the head and its
gallery. Bad input is one line and exit code 2 (`umbra.cli.main`).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from umbra.services.errors import ServiceError

__all__ = ["infer_app"]

console = Console()

infer_app = typer.Typer(
    help="Encrypted inference and similarity search on a finished run's model "
    "(CKKS; docs/encrypted-services.md).",
    no_args_is_help=True,
)

RunDir = Annotated[Path, typer.Argument(help="a finished run folder")]
Url = Annotated[str, typer.Option(help="the service's URL, e.g. http://127.0.0.1:8765")]


@infer_app.command("serve")
def serve(
    run_dir: RunDir,
    host: Annotated[str, typer.Option(help="address to bind")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port (0: any free port)", min=0, max=65535)] = 8765,
    gallery_modality: Annotated[str, typer.Option(help="modality of the gallery")] = "image",
    gallery_size: Annotated[int, typer.Option(help="gallery items", min=1)] = 10_000,
    max_gallery: Annotated[int, typer.Option(help="refuse a larger gallery", min=1)] = 100_000,
    candidates: Annotated[
        int | None, typer.Option(help="score only this many random items per query", min=1)
    ] = None,
    max_queries: Annotated[
        int | None,
        typer.Option(help="similarity queries per client key and per client address", min=1),
    ] = None,
    max_request_mb: Annotated[int, typer.Option(help="largest request body, MiB", min=1)] = 128,
    port_file: Annotated[
        Path | None, typer.Option(help="write the bound port here once listening")
    ] = None,
) -> None:
    """Serve encrypted inference and similarity search for the run's final model."""
    from umbra.audit import load_final_model
    from umbra.services.endpoint import ServiceEndpoint
    from umbra.services.inference import InferenceServer
    from umbra.services.served_model import federation_records, gallery_embeddings, served_head
    from umbra.services.similarity import SimilarityServer

    final = load_final_model(run_dir, on_status=lambda s: console.print(s, highlight=False))
    model, prep = final.model, final.data
    console.print("fitting the quadratic activation of the head", highlight=False)
    head = served_head(model, federation_records(prep), seed=final.config.run.seed)
    inference = InferenceServer(head.folded(), modalities=model.modalities)
    if gallery_modality not in model.modalities:
        raise ServiceError(
            f"--gallery-modality {gallery_modality!r}: the model has {', '.join(model.modalities)}"
        )
    if gallery_size > max_gallery:
        raise ServiceError(f"--gallery-size {gallery_size} exceeds --max-gallery {max_gallery}")
    emb, holders = gallery_embeddings(model, prep.train, gallery_modality, size=gallery_size)
    similarity = SimilarityServer(
        emb, ids=[str(i) for i in holders], max_gallery=max_gallery,
        candidates=candidates, max_queries=max_queries,
    )  # fmt: skip
    try:
        endpoint = ServiceEndpoint(
            inference=inference, similarity=similarity, host=host, port=port,
            max_request_bytes=max_request_mb << 20,
        )  # fmt: skip
    except OSError as err:
        raise ServiceError(f"cannot listen on {host}:{port}: {err.strerror or err}") from None
    if port_file is not None:
        port_file.write_text(str(endpoint.server_address[1]))
    console.print(
        f"serving {final.where}: encrypted inference ({inference.params.describe()}) and "
        f"similarity over {len(emb)} {gallery_modality} embeddings on {endpoint.url}",
        highlight=False, soft_wrap=True,
    )  # fmt: skip
    try:
        endpoint.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        endpoint.server_close()


@infer_app.command("predict")
def predict(
    run_dir: RunDir,
    url: Url,
    records: Annotated[int, typer.Option(help="test records to classify", min=1)] = 200,
) -> None:
    """Classify test records through the encrypted service; compare with plaintext."""
    import numpy as np

    from umbra.audit import load_final_model
    from umbra.services.embed import embed_records
    from umbra.services.endpoint import http_transport
    from umbra.services.inference_client import InferenceClient
    from umbra.services.served_model import fused_embeddings, relu_head

    final = load_final_model(run_dir)
    test = final.data.test.subset(np.arange(min(records, len(final.data.test))))
    emb, mask = embed_records(final.model, test)
    client = InferenceClient()
    t0 = time.perf_counter()
    logits = client.predict(http_transport(url), emb, mask)
    took = time.perf_counter() - t0
    w1, b1, w2, b2 = relu_head(final.model)  # the trained model's plaintext logits
    plain = np.maximum(fused_embeddings(emb, mask) @ w1.T + b1, 0.0) @ w2.T + b2
    pred = logits.argmax(axis=1)
    agree = float((pred == plain.argmax(axis=1)).mean())
    acc, plain_acc = (float((p == test.labels).mean()) for p in (pred, plain.argmax(axis=1)))
    console.print(
        f"{len(test)} records in {took:.1f} s: accuracy {acc:.4f} encrypted, {plain_acc:.4f} "
        f"plaintext ReLU model; predictions agree with it on {agree:.2%}",
        highlight=False,
    )


@infer_app.command("search")
def search(
    run_dir: RunDir,
    url: Url,
    query: Annotated[int, typer.Option(help="index of the test record to query with", min=0)] = 0,
    modality: Annotated[str, typer.Option(help="modality of the query")] = "text",
    k: Annotated[int, typer.Option(help="results to show", min=1)] = 10,
) -> None:
    """Search the server's gallery with one test record's embedding, encrypted."""
    import numpy as np

    from umbra.audit import load_final_model
    from umbra.services.embed import embed_records
    from umbra.services.endpoint import http_transport
    from umbra.services.similarity_client import SimilarityClient

    final = load_final_model(run_dir)
    test = final.data.test
    if query >= len(test):
        raise ServiceError(f"--query {query}: the test set has {len(test)} records")
    if modality not in test.modalities:
        raise ServiceError(f"--modality {modality!r}: the model has {', '.join(test.modalities)}")
    j = test.modality_index(modality)
    if not test.mask[query, j]:
        raise ServiceError(f"test record {query} has no {modality}")
    emb, _ = embed_records(final.model, test.subset(np.array([query])))
    t0 = time.perf_counter()
    result = SimilarityClient().search(http_transport(url), emb[0, j])
    took = time.perf_counter() - t0
    names = final.data.train.class_names
    table = Table(title=f"top {k} for test record {query} ({names[test.labels[query]]})")
    for col in ("rank", "gallery id", "score", "class"):
        table.add_column(col)
    for rank, (item, score) in enumerate(result.top(k), start=1):
        idx = int(item) if item.isdigit() and int(item) < len(final.data.train) else None
        label = names[final.data.train.labels[idx]] if idx is not None else "?"
        table.add_row(str(rank), item, f"{score:.4f}", label)
    console.print(table)
    console.print(f"{len(result.ids)} items scored in {took:.2f} s", highlight=False)
