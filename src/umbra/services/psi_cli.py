"""``umbra psi``: private set intersection over files of ids (docs/psi.md).

* ``umbra psi A B [C ...]`` runs every role in this process (two parties, or the k-party
  chain) and prints the intersection size on its last line;
* ``umbra psi serve FILE`` / ``umbra psi join FILE --port N`` run the server and client
  roles as separate processes over TCP;
* ``umbra psi chain FILE [--join HOST:PORT] [--serve PORT]`` runs one party of the k-party
  chain as its own process.

Bad input (unreadable, non-UTF-8 or empty files, duplicate ids, a malformed or unexpected
message from the peer) is a ``PsiError``: one line on stderr and exit code 2.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from umbra.services.psi import DEFAULT_FPR, DEFAULT_MAX_IDS, DataStructure, PsiConfig
from umbra.services.psi_chain import intersect_chain
from umbra.services.psi_chain_network import chain_party
from umbra.services.psi_errors import PsiError, PsiInputError
from umbra.services.psi_ids import IdSet
from umbra.services.psi_network import DEFAULT_TIMEOUT_S, join, serve

__all__ = ["psi_app"]

DEFAULT_PORT = 8470


class _LocalByDefault(TyperGroup):
    """``umbra psi A B`` means ``umbra psi local A B``: a first argument that is not a
    subcommand's name is a file of ids."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = ["local", *args]
        return super().parse_args(ctx, args)


psi_app = typer.Typer(
    cls=_LocalByDefault,
    help=(
        "Private set intersection (ECDH, openmined-psi): which record ids parties share, and "
        "nothing else. `umbra psi A B [C ...]` runs every party here; `serve`/`join` run two "
        "parties as separate processes over TCP."
    ),
    no_args_is_help=True,
)

CardinalityOnly = Annotated[
    bool, typer.Option("--cardinality-only", help="learn only the size of the intersection")
]
IgnoreCase = Annotated[
    bool,
    typer.Option("--ignore-case", help="compare ids after Unicode case folding (default: exact)"),
]
Structure = Annotated[
    DataStructure,
    typer.Option(
        "--data-structure", help="how the server's blinded set travels", case_sensitive=False
    ),
]
Fpr = Annotated[
    float, typer.Option("--fpr", help="false-positive probability of a whole query (GCS, Bloom)")
]
MaxIds = Annotated[int, typer.Option("--max-ids", help="the largest set accepted from a peer")]
Timeout = Annotated[float, typer.Option("--timeout", help="seconds to wait for each message")]
Out = Annotated[
    Path | None,
    typer.Option(
        "--out", help="write the shared ids here, one per line, in the order every party shares"
    ),
]


def _config(
    cardinality_only: bool, structure: DataStructure, fpr: float, max_ids: int
) -> PsiConfig:
    try:
        return PsiConfig(
            cardinality_only=cardinality_only, data_structure=structure, fpr=fpr, max_ids=max_ids
        )
    except ValueError as err:
        raise PsiError(str(err)) from None


def _read(path: Path, ignore_case: bool) -> IdSet:
    ids = IdSet.from_file(path, ignore_case=ignore_case)
    if not len(ids):
        raise PsiInputError(f"{path}: no ids (every line is blank)")
    return ids


def _write(out: Path | None, shared: Sequence[str] | None) -> None:
    if out is None or shared is None:
        return
    try:
        out.write_text("".join(f"{s}\n" for s in shared), encoding="utf-8")
    except OSError as err:
        raise PsiError(f"{out}: cannot be written ({err.strerror})") from None


def _check_out(out: Path | None, cardinality_only: bool) -> None:
    if out is not None and cardinality_only:
        raise PsiError("--out needs the shared ids; --cardinality-only reveals only their number")


@psi_app.command("local")
def psi_local(
    files: Annotated[list[Path], typer.Argument(help="two or more files of ids, one per line")],
    out: Out = None,
    cardinality_only: CardinalityOnly = False,
    ignore_case: IgnoreCase = False,
    structure: Structure = DataStructure.GCS,
    fpr: Fpr = DEFAULT_FPR,
    max_ids: MaxIds = DEFAULT_MAX_IDS,
) -> None:
    """Every party in this process: the first file's party is the first server of the
    chain, the last file's party learns the result and passes it on (docs/psi.md)."""
    if len(files) < 2:
        raise PsiError("umbra psi needs at least two files of ids")
    _check_out(out, cardinality_only)
    config = _config(cardinality_only, structure, fpr, max_ids)
    sets = [_read(f, ignore_case) for f in files]
    result = intersect_chain(sets, config)
    for path, ids, view in zip(files, sets, result.views, strict=True):
        typer.echo(f"{path}: {len(ids)} ids, sent {view.bytes_sent:,} bytes")
    typer.echo(f"bytes sent in all: {result.bytes_sent:,} ({structure.value})")
    _write(out, result.views[0].shared)
    typer.echo(str(result.size))


@psi_app.command("serve")
def psi_serve(
    file: Annotated[Path, typer.Argument(help="this party's ids, one per line")],
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port (0: any free port)")] = DEFAULT_PORT,
    out: Out = None,
    cardinality_only: CardinalityOnly = False,
    ignore_case: IgnoreCase = False,
    structure: Structure = DataStructure.GCS,
    fpr: Fpr = DEFAULT_FPR,
    max_ids: MaxIds = DEFAULT_MAX_IDS,
    timeout: Timeout = DEFAULT_TIMEOUT_S,
) -> None:
    """The server role: wait for one client, send the blinded set, answer its request.
    Learns the client's set size, and the result only if the client shares it."""
    _check_out(out, cardinality_only)
    config = _config(cardinality_only, structure, fpr, max_ids)
    ids = _read(file, ignore_case)

    def listening(bound_host: str, bound_port: int) -> None:
        typer.echo(f"listening on {bound_host}:{bound_port}")

    result = serve(ids, config, host=host, port=port, timeout_s=timeout, on_listening=listening)
    typer.echo(
        f"client: {result.client_size} ids; sent {result.bytes_sent:,} bytes, "
        f"received {result.bytes_received:,}"
    )
    if result.size is None:
        typer.echo("the client did not share the result")
        return
    _write(out, result.shared)
    typer.echo(str(result.size))


@psi_app.command("join")
def psi_join(
    file: Annotated[Path, typer.Argument(help="this party's ids, one per line")],
    host: Annotated[str, typer.Option(help="the serving party's address")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="the serving party's TCP port")] = DEFAULT_PORT,
    out: Out = None,
    share_result: Annotated[
        bool, typer.Option("--share-result", help="send the result back: the server learns it too")
    ] = False,
    cardinality_only: CardinalityOnly = False,
    ignore_case: IgnoreCase = False,
    max_ids: MaxIds = DEFAULT_MAX_IDS,
    timeout: Timeout = DEFAULT_TIMEOUT_S,
) -> None:
    """The client role: learns the intersection (or its size) with the serving party."""
    _check_out(out, cardinality_only)
    config = _config(cardinality_only, DataStructure.GCS, DEFAULT_FPR, max_ids)
    ids = _read(file, ignore_case)
    result = join(ids, config, host=host, port=port, share_result=share_result, timeout_s=timeout)
    typer.echo(f"sent {result.bytes_sent:,} bytes, received {result.bytes_received:,}")
    _write(out, result.shared)
    typer.echo(str(result.size))


def _address(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise PsiError(f"--join wants HOST:PORT, got {value!r}")
    return host or "127.0.0.1", int(port)


@psi_app.command("chain")
def psi_chain(
    file: Annotated[Path, typer.Argument(help="this party's ids, one per line")],
    join_: Annotated[
        str | None,
        typer.Option("--join", help="HOST:PORT of the previous party (leave out for the first)"),
    ] = None,
    serve_port: Annotated[
        int | None,
        typer.Option("--serve", help="port to serve the next party on (leave out for the last)"),
    ] = None,
    host: Annotated[str, typer.Option(help="address to serve on")] = "127.0.0.1",
    out: Out = None,
    ignore_case: IgnoreCase = False,
    structure: Structure = DataStructure.GCS,
    fpr: Fpr = DEFAULT_FPR,
    max_ids: MaxIds = DEFAULT_MAX_IDS,
    timeout: Timeout = DEFAULT_TIMEOUT_S,
) -> None:
    """One party of a k-party chain across processes: joins the previous party, serves the
    next; each learns the intersection of all (docs/psi.md says who learns what else)."""
    config = _config(False, structure, fpr, max_ids)
    upstream = _address(join_) if join_ is not None else None
    ids = _read(file, ignore_case)

    def listening(bound_host: str, bound_port: int) -> None:
        typer.echo(f"listening on {bound_host}:{bound_port}")

    result = chain_party(
        ids,
        config,
        upstream=upstream,
        listen_on=None if serve_port is None else (host, serve_port),
        timeout_s=timeout,
        on_listening=listening,
    )
    if result.running_size is not None:
        typer.echo(f"running intersection after this party: {result.running_size} ids")
    typer.echo(f"sent {result.bytes_sent:,} bytes, received {result.bytes_received:,}")
    _write(out, result.shared)
    typer.echo(str(result.size))
