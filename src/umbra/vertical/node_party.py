"""A feature party on the Deployment Engine: its node's own folder, its PSI role, its
alignment and the spec its split-learning handlers run with.

Runs in the organisation's SuperNode (its ClientApp). The node config names the party's
own folder (``data-dir``, the layout of :mod:`umbra.vertical.party_folder`: its ids and
the features of its modalities, nothing of any other party) and optionally ``state-dir``;
the node opens no other data. It answers:

* hello: its party index and modalities, as its folder declares them (checked against the
  run's ``vertical.parties``: a folder declaring no party, no modality, another party's
  modalities or a party the run does not have is one line naming the folder);
* PSI (:func:`psi_reply`): the server role of a two-party ECDH PSI session
  (`umbra.services.psi.PsiServer`) for the label holder's blinded ids, so the label holder
  learns which of its ids this party holds and this party learns only the label holder's
  set size;
* align (:func:`align_party`): the SHA-256 digests of the ids it shares with the label
  holder in the canonical order; the node maps them to its own rows (a digest it does not
  hold is refused), writes those rows' features, the joint initial model (from the
  model spec in the message and ``run.seed``) and its :class:`PartySpec` into a fresh
  state folder ``<state-dir>/vertical/party-<i>``. From then on the handlers of
  :mod:`umbra.vertical.client_app` run with that spec (:func:`deployed_party_spec`), as
  in the simulation.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Context

from umbra.apps.run_config import config_from_run_config
from umbra.config import Config
from umbra.federation.server_app import initial_arrays
from umbra.run.folder import client_state_root
from umbra.services.psi import PsiConfig, PsiServer
from umbra.services.psi_errors import PsiError
from umbra.services.psi_ids import IdSet
from umbra.vertical import protocol as P
from umbra.vertical.client_app import forget_party
from umbra.vertical.errors import VerticalError
from umbra.vertical.party import PartySpec
from umbra.vertical.party_folder import (
    FEATURES_FILE,
    IDS_FILE,
    META_FILE,
    PartyFolder,
    read_features,
)

__all__ = [
    "DATA_DIR",
    "SPEC_FILE",
    "align_party",
    "deployed_party_spec",
    "hello_config",
    "node_party",
    "psi_reply",
]

#: The node config key naming the party's own folder.
DATA_DIR = "data-dir"
#: The party's spec in its state folder, written when it aligns.
SPEC_FILE = "spec.json"


@lru_cache(maxsize=4)
def _read(path: str, stamp: tuple[int, ...]) -> PartyFolder:
    return read_features(Path(path))


@lru_cache(maxsize=4)
def _config(run_items: tuple[tuple[str, Any], ...]) -> Config:
    return config_from_run_config(dict(run_items))


def _run_config(context: Context) -> Config:
    return _config(tuple(sorted(context.run_config.items())))


def _folder_path(node_config: Mapping[str, Any]) -> Path:
    if DATA_DIR not in node_config:
        raise VerticalError("node config has no data-dir: name this party's own folder "
                            "(party.json, ids.txt, features.npz)")  # fmt: skip
    return Path(str(node_config[DATA_DIR]))


def node_party(context: Context) -> tuple[Config, PartyFolder]:
    """The run's config and this node's own party folder, checked against each other."""
    cfg = _run_config(context)
    path = _folder_path(context.node_config)
    stamp = tuple(f.stat().st_mtime_ns if f.is_file() else 0
                  for f in (path / FEATURES_FILE, path / META_FILE, path / IDS_FILE))  # fmt: skip
    folder = _read(str(path), stamp)
    parties = cfg.vertical.parties
    if folder.party >= len(parties):
        raise VerticalError(f"party folder {str(path)!r} declares party {folder.party}; the run "
                            f"has parties 0..{len(parties) - 1}")  # fmt: skip
    expected = set(parties[folder.party])
    if set(folder.modalities) != expected:
        raise VerticalError(f"party folder {str(path)!r} declares modalities "
                            f"{list(folder.modalities)}; the run gives party {folder.party} "
                            f"{sorted(expected)}")  # fmt: skip
    pid = context.node_config.get("partition-id")
    if pid is not None and int(pid) != folder.party:
        raise VerticalError(f"node config partition-id={pid} but its folder {str(path)!r} is "
                            f"party {folder.party}")  # fmt: skip
    return cfg, folder


def _state_dir(context: Context, party: int) -> Path:
    own = context.node_config.get("state-dir")
    root = Path(str(own)) if own else client_state_root(_folder_path(context.node_config))
    return root / "vertical" / f"party-{party}"


def _ids(folder: PartyFolder) -> IdSet:
    try:
        return IdSet.from_ids(folder.ids, source=f"party-{folder.party} ids")
    except PsiError as err:
        raise VerticalError(str(err)) from None


def hello_config(context: Context) -> dict[str, int | str]:
    """Hello's reply: which party this node is and its modalities."""
    _, folder = node_party(context)
    return {P.PARTITION: folder.party, P.MODALITIES: ",".join(folder.modalities)}


def psi_reply(context: Context, *, client_size: int, request: bytes) -> tuple[bytes, bytes]:
    """The PSI server's setup and response to the label holder's ``request`` of
    ``client_size`` blinded ids (fresh key per session, never stored)."""
    _, folder = node_party(context)
    server = PsiServer(_ids(folder), PsiConfig())
    try:
        return server.setup(client_size), server.respond(request, client_size=client_size)
    except PsiError as err:
        raise VerticalError(f"party-{folder.party}: PSI refused: {err}") from None


def align_party(context: Context, *, digests: np.ndarray, model_spec: dict[str, Any]) -> int:
    """Take the shared ids' digests ``(n, 32)`` in the canonical order, write this party's
    aligned rows, the initial model and its spec into a fresh state folder; returns n."""
    cfg, folder = node_party(context)
    try:
        rows = _ids(folder).positions_of([bytes(d) for d in np.asarray(digests, np.uint8)])
    except PsiError as err:
        raise VerticalError(f"party-{folder.party}: {err}") from None
    state = _state_dir(context, folder.party)
    forget_party(str(state))
    shutil.rmtree(state, ignore_errors=True)  # a new run: no state of an earlier one
    state.mkdir(parents=True)
    idx = np.asarray(rows, dtype=np.int64)
    data_file, init_file = state / "aligned.npz", state / "init.npz"
    np.savez(
        data_file, allow_pickle=False, **{m: folder.features[m][idx] for m in folder.modalities}
    )
    np.savez(init_file, allow_pickle=False, **initial_arrays(model_spec, cfg.run.seed))
    v, fed = cfg.vertical, cfg.federation
    spec = PartySpec(
        index=folder.party, modalities=folder.modalities, data_file=str(data_file),
        state_dir=str(state), model_spec=model_spec, init_file=str(init_file), lr=fed.lr,
        momentum=fed.momentum, weight_decay=fed.weight_decay, seed=cfg.run.seed,
        parties=len(v.parties), clip=v.clip, embedding_noise=v.embedding_noise,
        embedding_clip=v.embedding_clip, observe_records=v.attack_records,
    )  # fmt: skip
    (state / SPEC_FILE).write_text(json.dumps(dataclasses.asdict(spec)), encoding="utf-8")
    return len(idx)


def deployed_party_spec(context: Context) -> PartySpec:
    """This node's spec, as its alignment wrote it (one line if it has not aligned)."""
    _, folder = node_party(context)
    path = _state_dir(context, folder.party) / SPEC_FILE
    if not path.is_file():
        raise VerticalError(f"party-{folder.party} has not been aligned in this run (no {path})")
    raw = json.loads(path.read_text(encoding="utf-8"))
    raw["modalities"] = tuple(raw["modalities"])
    return PartySpec(**raw)
