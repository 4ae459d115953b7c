"""One vertical party's own data on disk: what a deployed organisation hands its node.

A party folder holds exactly one organisation's records and nothing of another's:

``party.json``    ``{"party": <index>, "modalities": [...]}``: which party it is and the
                  modalities it holds (public, both must be declared);
``ids.txt``       its entity ids, one a line, in its own row order;
``features.npz``  one array per declared modality, one row per id (a feature party's
                  node reads it);
``labels.npy``    the labels, one per id (only in the label holder's folder for its
                  ServerApp, which reads ids and labels and no features).

:func:`write_vertical_folders` splits a prepared data set into such folders (the local
deployment's stand-in for organisations that each bring their own); :func:`read_features`
and :func:`read_labels` load one with the checks of a node or the label holder: a folder
that declares no party or no modality, lacks a declared modality's features, or whose
rows do not match its ids is one line naming the folder (`VerticalError`, exit code 2).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from umbra.config import Config
from umbra.data.dataset import MultimodalData
from umbra.vertical.errors import VerticalError
from umbra.vertical.layout import PartyData, split_parties

__all__ = [
    "FEATURES_FILE",
    "IDS_FILE",
    "LABELS_FILE",
    "META_FILE",
    "PartyFolder",
    "read_features",
    "read_labels",
    "write_party_folder",
    "write_vertical_folders",
]

META_FILE = "party.json"
IDS_FILE = "ids.txt"
FEATURES_FILE = "features.npz"
LABELS_FILE = "labels.npy"


@dataclass(frozen=True)
class PartyFolder:
    """A party folder as loaded: its index, modalities, ids and (per role) features or
    labels (the other is empty / None)."""

    party: int
    modalities: tuple[str, ...]
    ids: tuple[str, ...]
    features: dict[str, np.ndarray]
    labels: np.ndarray | None = None


def write_party_folder(
    folder: Path,
    party: int,
    ids: tuple[str, ...],
    *,
    features: dict[str, np.ndarray] | None = None,
    labels: np.ndarray | None = None,
    modalities: tuple[str, ...] = (),
) -> Path:
    """Write one party folder (features for a node, labels for the label holder's
    ServerApp) and return it."""
    folder.mkdir(parents=True, exist_ok=True)
    meta = {"party": party, "modalities": list(modalities)}
    (folder / META_FILE).write_text(json.dumps(meta), encoding="utf-8")
    (folder / IDS_FILE).write_text("".join(f"{i}\n" for i in ids), encoding="utf-8")
    if features is not None:
        np.savez(folder / FEATURES_FILE, allow_pickle=False, **features)
    if labels is not None:
        np.save(folder / LABELS_FILE, np.asarray(labels, dtype=np.int64), allow_pickle=False)
    return folder


def write_vertical_folders(
    root: Path, cfg: Config, train: MultimodalData
) -> tuple[list[Path], Path]:
    """Split ``train`` as the simulation does (`split_parties`, ``run.seed``) and write one
    folder per party (its ids and its modalities' features: what its node reads) and the
    label holder's ids and labels (what its ServerApp reads). Returns the party folders
    and the label folder."""
    v = cfg.vertical
    parties, _ = split_parties(train, v.parties, v.label_parties, shared=v.shared,
                               seed=cfg.run.seed)  # fmt: skip
    folders = [
        write_party_folder(
            root / f"party-{p}", p, party.ids, features=party.features, modalities=party.modalities
        )
        for p, party in enumerate(parties)
    ]
    lead = v.label_parties[0]
    holder: PartyData = parties[lead]
    labels = write_party_folder(root / "label-holder", lead, holder.ids, labels=holder.labels)
    return folders, labels


def _meta(folder: Path) -> dict[str, Any]:
    path = folder / META_FILE
    if not folder.is_dir():
        raise VerticalError(f"party folder {str(folder)!r} does not exist")
    if not path.is_file():
        raise VerticalError(f"party folder {str(folder)!r} has no {META_FILE}: it declares no "
                            "party and no modality")  # fmt: skip
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise VerticalError(f"{path}: not a JSON object ({type(err).__name__})") from None
    if not isinstance(meta, dict):
        raise VerticalError(f"{path}: not a JSON object")
    party = meta.get("party")
    if not isinstance(party, int) or isinstance(party, bool) or party < 0:
        raise VerticalError(f'{path} declares no party id ("party": a non-negative integer)')
    mods = meta.get("modalities", [])
    if not isinstance(mods, list) or not all(isinstance(m, str) for m in mods):
        raise VerticalError(f'{path}: "modalities" must be a list of modality names')
    return meta


def _ids(folder: Path) -> tuple[str, ...]:
    path = folder / IDS_FILE
    if not path.is_file():
        raise VerticalError(f"party folder {str(folder)!r} has no {IDS_FILE}")
    return tuple(line for line in path.read_text(encoding="utf-8").splitlines() if line.strip())


def read_features(folder: Path) -> PartyFolder:
    """A feature party's folder: party, modalities (at least one), ids, features."""
    meta = _meta(folder)
    mods = tuple(meta["modalities"])
    if not mods:
        raise VerticalError(f"party folder {str(folder)!r} declares no modality: its node has "
                            "nothing to train on")  # fmt: skip
    ids = _ids(folder)
    path = folder / FEATURES_FILE
    if not path.is_file():
        raise VerticalError(f"party folder {str(folder)!r} has no {FEATURES_FILE}")
    with np.load(path, allow_pickle=False) as z:
        missing = [m for m in mods if m not in z.files]
        if missing:
            raise VerticalError(f"{path} lacks the features of its declared modalities {missing}")
        features = {m: np.asarray(z[m]) for m in mods}
    bad = [m for m, x in features.items() if len(x) != len(ids)]
    if bad:
        raise VerticalError(f"{path}: features of {bad} must have one row per id "
                            f"({len(ids)} ids)")  # fmt: skip
    return PartyFolder(party=int(meta["party"]), modalities=mods, ids=ids, features=features)


def read_labels(folder: Path) -> PartyFolder:
    """The label holder's folder for its ServerApp: party, ids, labels (no features)."""
    meta = _meta(folder)
    ids = _ids(folder)
    path = folder / LABELS_FILE
    if not path.is_file():
        raise VerticalError(f"label folder {str(folder)!r} has no {LABELS_FILE}")
    labels = np.load(path, allow_pickle=False)
    if labels.ndim != 1 or len(labels) != len(ids) or labels.dtype.kind not in "iu":
        raise VerticalError(f"{path}: must hold one integer label per id ({len(ids)} ids)")
    return PartyFolder(party=int(meta["party"]), modalities=tuple(meta.get("modalities", [])),
                       ids=ids, features={}, labels=labels.astype(np.int64))  # fmt: skip
