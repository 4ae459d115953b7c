"""Everything a vertical run starts from, built from a config and the pooled records.

For a simulation or a benchmark: the parties' own records (:func:`split_parties`), their
PSI alignment, each party's data file (its aligned rows, its modalities) and spec, the
joint initial model (seeded, so that split training can be compared with centralized
training from the same start), and the label holder with its (randomised, under label
DP) labels. Under label DP the release is announced (``on_label_release``, the ledger's
write-ahead) before any label is randomised.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from umbra.config import Config
from umbra.data.dataset import MultimodalData
from umbra.models import ModelSpec
from umbra.privacy.ledger import LabelRelease
from umbra.vertical.alignment import Alignment, align
from umbra.vertical.label_dp import randomized_response
from umbra.vertical.label_holder import LabelHolder
from umbra.vertical.layout import PartyData, split_parties
from umbra.vertical.party import PartySpec

__all__ = ["VerticalSetup", "build_vertical", "entity_labels"]


@dataclass
class VerticalSetup:
    """A vertical run before training (see the module docstring).

    ``true_labels``: the label holder's labels of the aligned entities (for evaluation and
    the leakage audit); ``train_labels``: what the top model trains on.
    """

    parties: list[PartyData]
    sources: list[np.ndarray]
    alignment: Alignment
    specs: list[PartySpec]
    holder: LabelHolder
    init: dict[str, np.ndarray]
    true_labels: np.ndarray
    train_labels: np.ndarray

    def pooled(self, train: MultimodalData) -> tuple[MultimodalData, np.ndarray]:
        """The aligned entities as one centralized data set (features of the parties that
        hold each entity, the others masked) and the label holder's labels, for the
        centralized reference on the same records."""
        rows = self.sources[self.alignment.label_party][self.alignment.entities]
        pooled = train.subset(rows)
        mask = np.zeros_like(pooled.mask)
        for p, party in enumerate(self.parties):
            held = self.alignment.slots[p] >= 0
            for m in party.modalities:
                mask[:, train.modality_index(m)] = held
        return pooled.with_mask(mask), self.true_labels


def entity_labels(setup: VerticalSetup, party: int, positions: np.ndarray) -> np.ndarray:
    """True labels of the entities at ``positions`` of ``party``'s aligned rows."""
    pos = setup.alignment.positions[party]
    inverse = np.full(len(setup.alignment.party_rows[party]), -1, dtype=np.int64)
    have = np.flatnonzero(pos >= 0)
    inverse[pos[have]] = have
    return setup.true_labels[inverse[np.asarray(positions, dtype=np.int64)]]


def build_vertical(
    cfg: Config,
    train: MultimodalData,
    model_spec: dict[str, Any],
    *,
    work_dir: Path,
    state_root: Path,
    init: dict[str, np.ndarray],
    on_label_release: Callable[[LabelRelease], None] | None = None,
) -> VerticalSetup:
    """Split ``train`` into the configured parties, align them and write their files;
    under label DP, ``on_label_release`` is called before the labels are randomised."""
    v, fed = cfg.vertical, cfg.federation
    seed = cfg.run.seed
    parties, sources = split_parties(train, v.parties, v.label_parties, shared=v.shared, seed=seed)
    alignment = align(parties, v.label_parties)
    work_dir.mkdir(parents=True, exist_ok=True)
    init_file = work_dir / "init.npz"
    np.savez(init_file, allow_pickle=False, **init)
    specs = []
    for p, party in enumerate(parties):
        rows = alignment.party_rows[p]
        data_file = work_dir / f"party-{p}.npz"
        np.savez(
            data_file, allow_pickle=False, **{m: party.features[m][rows] for m in party.modalities}
        )
        specs.append(
            PartySpec(
                index=p,
                modalities=party.modalities,
                data_file=str(data_file),
                state_dir=str(state_root / f"party-{p}"),
                model_spec=model_spec,
                init_file=str(init_file),
                lr=fed.lr,
                momentum=fed.momentum,
                weight_decay=fed.weight_decay,
                seed=seed,
                parties=len(parties),
                clip=v.clip,
                embedding_noise=v.embedding_noise,
                embedding_clip=v.embedding_clip,
                observe_records=v.attack_records,
            )
        )
    lead = parties[alignment.label_party]
    assert lead.labels is not None
    true_labels = lead.labels[alignment.entities]
    spec = ModelSpec.from_dict(model_spec)
    train_labels = true_labels
    if v.label_dp == "randomized-response":
        release = LabelRelease(round=0, party=lead.name, epsilon=v.label_epsilon,
                               num_classes=spec.num_classes)  # fmt: skip
        if on_label_release is not None:
            on_label_release(release)
        train_labels = randomized_response(true_labels, num_classes=spec.num_classes,
                                           epsilon=v.label_epsilon)  # fmt: skip
    holder = LabelHolder(
        spec,
        init,
        train_labels,
        alignment.positions,
        [len(p.modalities) for p in parties],
        batch_size=fed.batch_size,
        lr=fed.lr,
        momentum=fed.momentum,
        weight_decay=fed.weight_decay,
        seed=seed,
    )
    return VerticalSetup(
        parties, sources, alignment, specs, holder, init, true_labels, train_labels
    )
