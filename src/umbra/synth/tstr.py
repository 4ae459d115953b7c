"""Train on synthetic, test on real (TSTR): how well a classifier fitted to the synthetic
records does on the real held-out ones, per modality subset and fused.

Two classifiers (``synth.classifier``): ``"linear"`` (:class:`LinearClassifier`, below) and
``"network"``, the run's own architecture trained from scratch
(:class:`~umbra.synth.network_classifier.NetworkClassifier`). Any object with
:meth:`TstrClassifier.fit_score` serves.

The linear classifier is multinomial logistic regression (scikit-learn, L-BFGS, ``C``
:data:`INVERSE_REGULARISATION`) on the generator's feature maps, standardised by the
training set's mean and spread per column: each modality's unit vector ``u``
(:mod:`umbra.synth.feature_map`), zeros where a modality is missing, beside the presence
bits. Standardising lets it use the coefficients of small spread (scattering's order-2
channels hold energies 10⁴ times below order 0's). On scattering features this is the linear ScatterNet classifier of
Tramèr & Boneh (ICLR 2021, https://arxiv.org/abs/2011.11660). For a subset ``S`` the
classifier sees only ``S``'s modalities and is trained on the synthetic records holding
all of ``S``, tested on the real records holding all of ``S``; ``fused`` uses every
modality with each record's own missingness.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from umbra.data.dataset import MultimodalData, modality_subsets
from umbra.synth.feature_map import FeatureMap

__all__ = [
    "INVERSE_REGULARISATION",
    "MAX_ITER",
    "LinearClassifier",
    "TstrClassifier",
    "design_matrix",
    "tstr_accuracy",
]

#: scikit-learn's ``C`` (inverse L2 strength) of the classifier.
INVERSE_REGULARISATION = 10.0
#: L-BFGS iterations of the classifier.
MAX_ITER = 200


def design_matrix(
    data: MultimodalData, maps: Mapping[str, FeatureMap], modalities: Sequence[str]
) -> np.ndarray:
    """``(N, Σ D_m + |modalities|)``: the maps of ``modalities`` (zeros where missing)
    and their presence bits."""
    cols = []
    for m in modalities:
        have = data.mask[:, data.modality_index(m)]
        u, _ = maps[m].forward(np.asarray(data.features[m]))
        cols.append(u * have[:, None])
    bits = np.stack([data.mask[:, data.modality_index(m)] for m in modalities], axis=1)
    return np.concatenate([*cols, bits.astype(np.float64)], axis=1)


class TstrClassifier(Protocol):
    """A classifier of TSTR: trained on one set, scored on another."""

    def fit_score(
        self, train: MultimodalData, test: MultimodalData, modalities: Sequence[str]
    ) -> float | None:
        """Accuracy on ``test`` of the classifier trained on ``train``, both seen through
        ``modalities`` only; None when either side cannot be used."""
        ...


@dataclass(frozen=True)
class LinearClassifier:
    """Standardised logistic regression on the feature maps ``maps`` (see the module
    docstring)."""

    maps: Mapping[str, FeatureMap]

    def fit_score(
        self, train: MultimodalData, test: MultimodalData, modalities: Sequence[str]
    ) -> float | None:
        """Accuracy on ``test``; None when it is empty or ``train`` holds one class."""
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        if len(test) == 0 or len(np.unique(train.labels)) < 2:
            return None
        clf = make_pipeline(
            StandardScaler(), LogisticRegression(C=INVERSE_REGULARISATION, max_iter=MAX_ITER)
        )
        clf.fit(design_matrix(train, self.maps, modalities), train.labels)
        return float(clf.score(design_matrix(test, self.maps, modalities), test.labels))


def tstr_accuracy(
    synthetic: MultimodalData,
    real: MultimodalData,
    maps: Mapping[str, FeatureMap],
    subsets: Sequence[tuple[str, ...]] | None = None,
    classifier: TstrClassifier | None = None,
) -> dict[str, float | None]:
    """Accuracy on ``real`` of the classifier trained on ``synthetic``: one entry per
    modality subset (``"image"``, ``"audio+text"``, ...; every subset unless ``subsets``
    names some) and ``"fused"``; None where either side holds no record with the subset
    (or the synthetic side one class only). ``classifier`` defaults to
    :class:`LinearClassifier` on ``maps``."""
    clf = classifier if classifier is not None else LinearClassifier(maps)
    if synthetic.modalities != real.modalities:
        raise ValueError(
            f"modalities differ: synthetic {synthetic.modalities}, real {real.modalities}"
        )
    out: dict[str, float | None] = {}
    for subset in modality_subsets(real.modalities) if subsets is None else subsets:
        cols = [real.modality_index(m) for m in subset]
        syn = synthetic.subset(np.flatnonzero(synthetic.mask[:, cols].all(axis=1)))
        ref = real.subset(np.flatnonzero(real.mask[:, cols].all(axis=1)))
        out["+".join(subset)] = clf.fit_score(syn, ref, subset)
    out["fused"] = clf.fit_score(synthetic, real, real.modalities)
    return out
