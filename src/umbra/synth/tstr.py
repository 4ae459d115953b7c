"""Train on synthetic, test on real (TSTR): how well a classifier fitted to the synthetic
records does on the real held-out ones, per modality subset and fused.

The classifier is multinomial logistic regression (scikit-learn, L-BFGS, ``C``
:data:`INVERSE_REGULARISATION`) on the generator's feature maps: each modality's unit
vector ``u`` (:mod:`umbra.synth.feature_map`), zeros where a modality is missing, beside
the presence bits. On scattering features this is the linear ScatterNet classifier of
Tramèr & Boneh (ICLR 2021, https://arxiv.org/abs/2011.11660). For a subset ``S`` the
classifier sees only ``S``'s modalities and is trained on the synthetic records holding
all of ``S``, tested on the real records holding all of ``S``; ``fused`` uses every
modality with each record's own missingness.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from umbra.data.dataset import MultimodalData, modality_subsets
from umbra.synth.feature_map import FeatureMap

__all__ = ["INVERSE_REGULARISATION", "MAX_ITER", "design_matrix", "tstr_accuracy"]

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


def _fit_score(
    train: MultimodalData,
    test: MultimodalData,
    maps: Mapping[str, FeatureMap],
    modalities: Sequence[str],
) -> float | None:
    from sklearn.linear_model import LogisticRegression

    if len(test) == 0 or len(np.unique(train.labels)) < 2:
        return None
    clf = LogisticRegression(C=INVERSE_REGULARISATION, max_iter=MAX_ITER)
    clf.fit(design_matrix(train, maps, modalities), train.labels)
    return float(clf.score(design_matrix(test, maps, modalities), test.labels))


def tstr_accuracy(
    synthetic: MultimodalData,
    real: MultimodalData,
    maps: Mapping[str, FeatureMap],
    subsets: Sequence[tuple[str, ...]] | None = None,
) -> dict[str, float | None]:
    """Accuracy on ``real`` of the classifier trained on ``synthetic``: one entry per
    modality subset (``"image"``, ``"audio+text"``, ...; every subset unless ``subsets``
    names some) and ``"fused"``; None where either side holds no record with the subset
    (or the synthetic side one class only)."""
    if synthetic.modalities != real.modalities:
        raise ValueError(
            f"modalities differ: synthetic {synthetic.modalities}, real {real.modalities}"
        )
    out: dict[str, float | None] = {}
    for subset in modality_subsets(real.modalities) if subsets is None else subsets:
        cols = [real.modality_index(m) for m in subset]
        syn = synthetic.subset(np.flatnonzero(synthetic.mask[:, cols].all(axis=1)))
        ref = real.subset(np.flatnonzero(real.mask[:, cols].all(axis=1)))
        out["+".join(subset)] = _fit_score(syn, ref, maps, subset)
    out["fused"] = _fit_score(synthetic, real, maps, real.modalities)
    return out
