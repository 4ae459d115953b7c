"""TSTR's network classifier: the run's own model architecture, trained from scratch on the
synthetic records and tested on the real held-out ones.

The run's :class:`~umbra.models.MultimodalNet` (its encoders per modality, e.g. the
GroupNorm + Linear scattering head, the masked fusion and the head; ``model.hidden``,
``model.embed_dim``, ``model.encoders`` of the run's config) restricted to the modalities
of one subset, trained with Adam on cross-entropy for a fixed number of epochs, without
DP: the synthetic records are released already, and training on them is post-processing.
This is the classifier a consortium would train on a shared synthetic set, and the
counterpart of the image classifiers the published DP image generators are measured with
(a network trained on the synthetic images, tested on real ones).

Given the generator's feature maps, the network sees every record, synthetic or real,
through them and back (``inverse(forward(x))``: pooled, then spread back over the
``(C, H, W)`` map at the record's own norm): the synthetic records carry no detail finer
than the pooled map, and a network trained on them should not be scored on detail it
never saw (without this, image-only accuracy on ``default`` falls by 13-17 points).

Its randomness (initialisation, batch order, dropout) comes from a seeded generator: it
protects nobody.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from umbra.data.dataset import MultimodalData
from umbra.synth.feature_map import FeatureMap

__all__ = ["NetworkClassifier", "restrict"]


def restrict(data: MultimodalData, modalities: Sequence[str]) -> MultimodalData:
    """``data`` with only ``modalities`` (features and mask columns), in that order."""
    cols = [data.modality_index(m) for m in modalities]
    return MultimodalData(
        {m: data.features[m] for m in modalities},
        data.mask[:, cols],
        data.labels,
        tuple(modalities),
        data.class_names,
    )


@dataclass(frozen=True)
class NetworkClassifier:
    """The run's architecture as a TSTR classifier.

    Attributes:
        hidden, embed_dim, dropout: the run's ``model.*`` widths and dropout.
        encoders: modality -> registered encoder name (the run's ``model.encoders``).
        encoder_options: modality -> its encoder's settings.
        epochs: passes over the synthetic records (>= 1); more when a small set would
            give fewer than ``min_steps`` Adam steps.
        min_steps: the fewest Adam steps of a training (>= 1): a few hundred records at
            batch 256 would otherwise leave the network near its initialisation.
        batch_size: records per Adam step (>= 1).
        lr: Adam's learning rate (> 0).
        seed: the classifier's own seed (not privacy-relevant).
        maps: modality -> the generator's feature map, each record seen through it and back;
            empty: the features as they are.
    """

    hidden: int
    embed_dim: int
    dropout: float = 0.1
    encoders: Mapping[str, str] = field(default_factory=dict)
    encoder_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    epochs: int = 10
    min_steps: int = 200
    batch_size: int = 256
    lr: float = 1e-3
    seed: int = 0
    maps: Mapping[str, FeatureMap] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if min(self.epochs, self.batch_size, self.min_steps) < 1:
            raise ValueError(
                "epochs, batch_size and min_steps must be >= 1, got "
                f"{self.epochs}, {self.batch_size}, {self.min_steps}"
            )
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")

    def _model(self, data: MultimodalData) -> nn.Module:
        from umbra.models import ModelSpec, MultimodalNet

        keep = set(data.modalities)
        spec = ModelSpec.from_data(
            data,
            hidden=self.hidden,
            embed_dim=self.embed_dim,
            dropout=self.dropout,
            encoders={m: e for m, e in self.encoders.items() if m in keep},
            encoder_options={m: dict(o) for m, o in self.encoder_options.items() if m in keep},
        )
        return MultimodalNet(spec)

    @staticmethod
    def _tensors(
        data: MultimodalData, idx: np.ndarray
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """The inputs and mask of records ``idx``."""
        inputs = {m: torch.as_tensor(x, dtype=torch.float32) for m, x in data.features.items()}
        return {m: x[idx] for m, x in inputs.items()}, torch.as_tensor(data.mask[idx])

    def _seen(self, data: MultimodalData) -> MultimodalData:
        """``data`` as the network sees it: through each modality's map and back."""
        feats = {}
        for m in data.modalities:
            x = np.asarray(data.features[m], dtype=np.float32)
            fmap = self.maps.get(m)
            feats[m] = x if fmap is None else fmap.inverse(*fmap.forward(x))
        return MultimodalData(feats, data.mask, data.labels, data.modalities, data.class_names)

    def fit_score(
        self, train: MultimodalData, test: MultimodalData, modalities: Sequence[str]
    ) -> float | None:
        """Accuracy on ``test`` after training on ``train``, both restricted to
        ``modalities``; None when ``test`` is empty or ``train`` holds fewer than 2 classes."""
        if len(test) == 0 or len(np.unique(train.labels)) < 2:
            return None
        train = self._seen(restrict(train, modalities))
        test = self._seen(restrict(test, modalities))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            model = self._model(train)
            opt = torch.optim.Adam(model.parameters(), lr=self.lr)
            labels = torch.as_tensor(train.labels, dtype=torch.long)
            order = np.random.default_rng(self.seed)
            model.train()
            batches = math.ceil(len(train) / self.batch_size)
            for _ in range(max(self.epochs, math.ceil(self.min_steps / batches))):
                perm = order.permutation(len(train))
                for start in range(0, len(perm), self.batch_size):
                    idx = perm[start : start + self.batch_size]
                    inputs, mask = self._tensors(train, idx)
                    loss = nn.functional.cross_entropy(model(inputs, mask), labels[idx])
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
            model.eval()
            correct = 0
            with torch.no_grad():
                for start in range(0, len(test), 1024):
                    idx = np.arange(start, min(start + 1024, len(test)))
                    inputs, mask = self._tensors(test, idx)
                    pred = model(inputs, mask).argmax(dim=1).numpy()
                    correct += int((pred == test.labels[idx]).sum())
        return correct / len(test)
