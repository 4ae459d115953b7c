"""A feature party: its bottom model, its aligned rows, and one split-learning step.

Runs inside the organisation (the ClientApp calls it). The party knows its own rows of the
entities it shares with the label holder (its PSI view, in the canonical order), its
bottom model and optimizer, and, under the secure sum, its pairwise mask seeds. It sees per
step which of its rows are in the batch and, one step later, the gradient at those rows.

State between messages: model and optimizer in ``state_dir/party.pt``, the X25519 key of
the pairwise masks as raw bytes in ``state_dir/mask-key`` (outside the run folder, never
pickled). An object kept in memory is reused only while it is current (``last_step``),
so the simulation engine may route messages to any worker process.

The step's embedding is recomputed for the backward pass when the graph of the previous
message is not at hand, under the same dropout seed, so it is the same function.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from umbra.models import ModelSpec
from umbra.privacy.randomness import SecureRandom
from umbra.secure.secagg.crypto import KeyPair, generate_keypair, keypair_from, private_bytes
from umbra.secure.secagg.quantize import QuantizationSpec
from umbra.vertical.bottom_model import BottomModel
from umbra.vertical.secure_sum import masked_share, pair_seeds
from umbra.vertical.split_step import bottom_backward, make_optimizer

__all__ = ["FeatureParty", "PartySpec", "clip_rows"]


@dataclass(frozen=True)
class PartySpec:
    """One party's settings (public) and where its data and state live.

    ``data_file``: npz with one array per modality, rows in the party's aligned order.
    ``init``: the joint initial model's arrays (a seeded :class:`MultimodalNet`; the party
    keeps its slice), so that a run is comparable with centralized training.
    """

    index: int
    modalities: tuple[str, ...]
    data_file: str
    state_dir: str
    model_spec: dict[str, Any]
    init_file: str
    lr: float
    momentum: float
    weight_decay: float
    seed: int
    parties: int
    clip: float = 64.0
    embedding_noise: float = 0.0
    embedding_clip: float = 1.0
    observe_records: int = 500


def clip_rows(x: Tensor, bound: float) -> Tensor:
    """Each row scaled to L2 norm at most ``bound`` (differentiable; per-record DP)."""
    norms = x.norm(dim=1, keepdim=True)
    return x * torch.clamp(bound / (norms + 1e-12), max=1.0)


class FeatureParty:
    """The party's side of the vertical protocol (see the module docstring)."""

    def __init__(self, spec: PartySpec) -> None:
        self.spec = spec
        self.state_dir = Path(spec.state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with np.load(spec.data_file) as z:
            self.x = {
                m: torch.from_numpy(np.asarray(z[m], dtype=np.float32)) for m in spec.modalities
            }
        self.model = BottomModel(ModelSpec.from_dict(spec.model_spec), spec.modalities)
        with np.load(spec.init_file) as z:
            self.model.load_from_joint({k: z[k] for k in z.files})
        self.optimizer = make_optimizer(self.model, lr=spec.lr, momentum=spec.momentum,
                                        weight_decay=spec.weight_decay)  # fmt: skip
        self.last_step = -1
        self.pending: np.ndarray | None = None  # positions of the batch awaiting its gradient
        self._graph: Tensor | None = None
        self.observed_pos: list[np.ndarray] = []
        self.observed_grad: list[np.ndarray] = []
        self._seeds: dict[int, bytes] | None = None
        self._publics: dict[int, bytes] | None = None
        if (self.state_dir / "party.pt").exists():
            self._load()

    # ------------------------------------------------------------------ state
    def _load(self) -> None:
        state = torch.load(self.state_dir / "party.pt", weights_only=False)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optim"])
        self.last_step = int(state["last_step"])
        self.pending = state["pending"]
        self.observed_pos = list(state["observed_pos"])
        self.observed_grad = list(state["observed_grad"])
        self._publics = state["publics"]
        self._graph = None

    def _save(self) -> None:
        state = {
            "model": self.model.state_dict(),
            "optim": self.optimizer.state_dict(),
            "last_step": self.last_step,
            "pending": self.pending,
            "observed_pos": self.observed_pos,
            "observed_grad": self.observed_grad,
            "publics": self._publics,  # public keys only; the private key is in mask-key
        }
        tmp = self.state_dir / "party.pt.tmp"
        torch.save(state, tmp)
        os.replace(tmp, self.state_dir / "party.pt")

    def current(self, step: int) -> bool:
        """Whether this in-memory object is the party's latest state before ``step``."""
        return self.last_step == step - 1

    # ------------------------------------------------------------------ secure sum keys
    def public_key(self) -> bytes:
        """A fresh X25519 key pair (OS CSPRNG); the private key stays in the state folder."""
        keys = generate_keypair()
        path = self.state_dir / "mask-key"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(private_bytes(keys.private))
        self._seeds = None
        return keys.public

    def _keys(self) -> KeyPair:
        return keypair_from((self.state_dir / "mask-key").read_bytes())

    def set_peers(self, publics: dict[int, bytes]) -> None:
        """Derive the pair seeds with every other party (kept in memory only)."""
        self._publics = dict(publics)
        self._seeds = pair_seeds(self.spec.index, self._keys(), self._publics)
        self._save()

    def _pair_seeds(self) -> dict[int, bytes]:
        if self._seeds is None:
            if self._publics is None:
                raise RuntimeError("the secure sum needs the peers' public keys first")
            self._seeds = pair_seeds(self.spec.index, self._keys(), self._publics)
        return self._seeds

    # ------------------------------------------------------------------ one step
    def _forward(self, positions: np.ndarray, step: int) -> Tensor:
        idx = torch.as_tensor(positions, dtype=torch.int64)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.spec.seed * 1_000_003 + 7919 * self.spec.index + step)
            self.model.train()
            e = self.model({m: self.x[m][idx] for m in self.spec.modalities})  # (n, D)
        if self.spec.embedding_noise > 0:
            e = clip_rows(e, self.spec.embedding_clip)
        return e

    def step(
        self,
        step: int,
        *,
        positions: np.ndarray | None,
        slots: np.ndarray | None,
        batch: int,
        grad: np.ndarray | None,
        secure: bool,
        observe: bool,
    ) -> np.ndarray | None:
        """Apply ``grad`` to the previous batch, then embed ``positions`` (None: flush only).

        Returns the embedding rows ``(n_p, D)`` float32, or under ``secure`` the masked
        share ``(batch·D,)`` uint32 of the full batch (zeros at the other entities' slots).
        """
        if grad is not None:
            if self.pending is None:
                raise RuntimeError("a gradient arrived with no batch awaiting it")
            if len(grad) != len(self.pending):
                raise ValueError(
                    f"gradient has {len(grad)} rows, the batch had {len(self.pending)}"
                )
            emb = self._graph if self._graph is not None else self._forward(self.pending, step - 1)
            bottom_backward(self.optimizer, emb, grad)
            if observe and len(self.pending):
                seen = sum(len(p) for p in self.observed_pos)
                room = self.spec.observe_records - seen
                if room > 0:
                    self.observed_pos.append(self.pending[:room].copy())
                    self.observed_grad.append(np.asarray(grad[:room], dtype=np.float32).copy())
        self._graph = None
        self.pending = None
        out: np.ndarray | None = None
        if positions is not None:
            emb = self._forward(positions, step)
            self._graph = emb
            self.pending = np.asarray(positions, dtype=np.int64)
            rows = emb.detach().numpy().astype(np.float64)
            if self.spec.embedding_noise > 0:
                std = self.spec.embedding_noise * self.spec.embedding_clip
                rows = rows + SecureRandom().normal(rows.shape, std=std)
            if secure:
                assert slots is not None
                full = np.zeros((batch, rows.shape[1]), dtype=np.float64)
                full[np.asarray(slots, dtype=np.int64)] = rows
                spec = QuantizationSpec(clip=self.spec.clip, num_clients=self.spec.parties)
                out = masked_share(full, own=self.spec.index, seeds=self._pair_seeds(),
                                   step=step, spec=spec)  # fmt: skip
            else:
                out = rows.astype(np.float32)
        self.last_step = step
        self._save()
        return out

    def observed(self) -> tuple[np.ndarray, np.ndarray]:
        """The (positions, gradients) this party kept for the label-leakage audit."""
        if not self.observed_pos:
            return np.zeros(0, dtype=np.int64), np.zeros((0, 0), dtype=np.float32)
        return np.concatenate(self.observed_pos), np.concatenate(self.observed_grad)

    def export(self) -> dict[str, np.ndarray]:
        """The bottom model's arrays (names as in the joint network)."""
        return {k: v.detach().numpy().copy() for k, v in self.model.state_dict().items()}
