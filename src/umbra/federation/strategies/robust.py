"""Byzantine-robust aggregation rules, composed with modality-aware averaging.

Each rule is Flower's own strategy (``FedMedian``, ``FedTrimmedAvg``, ``Krum``,
``MultiKrum``, ``Bulyan``): :func:`robust_aggregate` hands it the clients' arrays as
reply messages and returns its ``aggregate_train`` result, so what a rule computes is
exactly what Flower computes. :func:`modality_robust_aggregate` applies a rule per
parameter group the way :func:`~umbra.federation.strategies.modality.modality_weighted_average`
applies the mean: a modality's encoder over the clients holding that modality, shared
parameters over everyone. Krum's distances and Bulyan's selection therefore see one
group's parameters at a time.

``centered-clip`` is not a Flower strategy and keeps state between rounds (the clients'
momenta, the previous aggregate): :mod:`umbra.federation.strategies.centered_clip`.

The rules (``f`` = ``byzantine``, the assumed number of attackers; ``n`` clients):

* ``median``: coordinate-wise median (Yin et al. 2018, https://arxiv.org/abs/1803.01498);
* ``trimmed-mean``: coordinate-wise mean after cutting ``int(trim_fraction * n)`` values
  at each end (same paper);
* ``krum``: the one update with the smallest sum of squared distances to its ``n - f - 2``
  nearest neighbours (Blanchard et al. 2017, https://arxiv.org/abs/1703.02757), n ≥ 2f + 3;
* ``multi-krum``: the weighted mean of the ``n - f`` best Krum scores, n ≥ 2f + 3;
* ``bulyan``: Multi-Krum selects ``n - 2f``, then per coordinate the mean of the
  ``n - 4f`` values closest to their median (El Mhamdi et al. 2018,
  https://arxiv.org/abs/1802.07927), n ≥ 4f + 3.

All of them are translation-equivariant, so aggregating the returned models equals
aggregating the updates (model − global) and adding the global model back.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np
from flwr.app import Array, ArrayRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp.strategy import Bulyan, FedAvg, FedMedian, FedTrimmedAvg, Krum, MultiKrum
from flwr.serverapp.strategy.bulyan import aggregate_n_closest_weights

from umbra.federation.common import NUM_EXAMPLES, count_key
from umbra.federation.strategies.modality import strip_prefix

__all__ = [
    "AGGREGATORS",
    "CENTERED_CLIP",
    "ROBUST_RULES",
    "max_byzantine",
    "modality_robust_aggregate",
    "register_robust_rule",
    "robust_aggregate",
]

log = logging.getLogger("umbra")

#: the stateful rule with its own module (:mod:`umbra.federation.strategies.centered_clip`)
CENTERED_CLIP = "centered-clip"
#: ``federation.aggregator`` values; ``mean`` is the modality-aware weighted mean.
AGGREGATORS = ("mean", "median", "trimmed-mean", "krum", "multi-krum", "bulyan", CENTERED_CLIP)

#: rule name -> (number of clients n, trim fraction, f) -> Flower's strategy
RuleFactory = Callable[[int, float, int], FedAvg]
ROBUST_RULES: dict[str, RuleFactory] = {}


def register_robust_rule(name: str, factory: RuleFactory) -> None:
    """Register a Flower strategy factory as the robust rule ``name``; duplicates raise."""
    if name in ROBUST_RULES:
        raise ValueError(f"robust rule {name!r} is already registered")
    ROBUST_RULES[name] = factory


def max_byzantine(rule: str, n: int) -> int:
    """The largest f the rule tolerates with ``n`` clients (−1: not even f = 0)."""
    if rule in ("krum", "multi-krum"):
        return (n - 3) // 2 if n >= 3 else (0 if n >= 1 else -1)
    if rule == "bulyan":
        return (n - 3) // 4 if n >= 3 else -1
    return n


def _replies(arrays: Sequence[Mapping[str, np.ndarray]], weights: Sequence[float]) -> list[Message]:
    out = []
    for a, w in zip(arrays, weights, strict=True):
        record = ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in a.items()})
        content = RecordDict({"arrays": record, "metrics": MetricRecord({NUM_EXAMPLES: w})})
        out.append(Message(content=content, dst_node_id=0, message_type=MessageType.TRAIN))
    return out


def robust_aggregate(
    rule: str,
    arrays: Sequence[Mapping[str, np.ndarray]],
    weights: Sequence[float],
    *,
    trim_fraction: float = 0.2,
    byzantine: int = 0,
) -> dict[str, np.ndarray]:
    """Aggregate ``arrays`` (one mapping per client, same names and shapes) with Flower's
    strategy for ``rule``; ``weights`` (e.g. record counts) only weight Multi-Krum's mean.

    Raises ValueError for an unknown rule, no clients, or ``byzantine`` beyond what the
    rule tolerates with ``len(arrays)`` clients (:func:`max_byzantine`). Runs where Flower
    can build messages (inside a ServerApp, or with its task identity set, as in tests).
    """
    if rule not in ROBUST_RULES:
        raise ValueError(f"unknown robust rule {rule!r}; registered: {', '.join(ROBUST_RULES)}")
    n = len(arrays)
    if n == 0:
        raise ValueError("arrays: need at least one client")
    if byzantine < 0 or byzantine > max_byzantine(rule, n):
        raise ValueError(f"{rule} cannot tolerate byzantine = {byzantine} with {n} clients")
    strategy = ROBUST_RULES[rule](n, trim_fraction, byzantine)
    record, _ = strategy.aggregate_train(0, _replies(arrays, weights))
    if record is None:
        raise ValueError(f"{rule} returned no aggregate for {n} clients")
    return {k: np.asarray(v.numpy()) for k, v in record.items()}


def modality_robust_aggregate(
    rule: str,
    arrays: Sequence[Mapping[str, np.ndarray]],
    counts: Sequence[Mapping[str, float]],
    key_modality: Callable[[str], str | None],
    previous: Mapping[str, np.ndarray] | None = None,
    *,
    trim_fraction: float = 0.2,
    byzantine: int = 0,
) -> dict[str, np.ndarray]:
    """:func:`robust_aggregate` per parameter group: each modality's parameters over the
    clients with ``n-<modality>`` > 0 (weights: those counts), shared parameters over all
    (weights: ``num-examples``). A group nobody holds keeps ``previous``; a group held by
    too few clients for ``byzantine`` uses the largest f it tolerates (a warning says so),
    and the median when not even f = 0 fits (Bulyan with fewer than 3 holders)."""
    if not arrays:
        raise ValueError("arrays: need at least one client")
    if len(arrays) != len(counts):
        raise ValueError(f"arrays ({len(arrays)}) and counts ({len(counts)}) differ in length")
    groups: dict[str | None, list[str]] = {}
    for key in arrays[0]:
        groups.setdefault(key_modality(strip_prefix(key)), []).append(key)
    out: dict[str, np.ndarray] = {}
    for modality, keys in groups.items():
        wkey = NUM_EXAMPLES if modality is None else count_key(modality)
        weights = [float(c.get(wkey, 0.0)) for c in counts]
        holders = [i for i, w in enumerate(weights) if w > 0]
        if not holders:
            if previous is None or any(k not in previous for k in keys):
                raise ValueError(f"no client holds {modality!r} and no previous value")
            out.update({k: np.array(previous[k], copy=True) for k in keys})
            continue
        n = len(holders)
        group_rule, f = rule, min(byzantine, max_byzantine(rule, n))
        if f < 0:
            group_rule, f = "median", 0
        if (group_rule, f) != (rule, byzantine):
            log.warning(
                "%s: only %d client(s) hold %s; aggregating them with %s, f = %d",
                rule, n, modality or "the shared parameters", group_rule, f,
            )  # fmt: skip
        agg = robust_aggregate(
            group_rule,
            [{k: arrays[i][k] for k in keys} for i in holders],
            [weights[i] for i in holders],
            trim_fraction=trim_fraction,
            byzantine=f,
        )
        for k in keys:
            out[k] = agg[k].astype(np.asarray(arrays[0][k]).dtype, copy=False)
    return {k: out[k] for k in arrays[0]}


def _median(n: int, trim: float, f: int) -> FedAvg:
    return FedMedian()


def _trimmed(n: int, trim: float, f: int) -> FedAvg:
    return FedTrimmedAvg(beta=trim)


def _krum(n: int, trim: float, f: int) -> FedAvg:
    return Krum(num_malicious_nodes=f)


def _multi_krum(n: int, trim: float, f: int) -> FedAvg:
    return MultiKrum(num_malicious_nodes=f, num_nodes_to_select=n - f)


class _Bulyan(Bulyan):
    """Flower's Bulyan with its own two stages (``selection_rule``, Multi-Krum, and
    ``aggregate_n_closest_weights``), reading the selected arrays without
    ``to_numpy_ndarrays(keep_input=False)``: that forces a full garbage collection per
    client, seconds per round in a training process. Same arithmetic, same result."""

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        valid, _ = self._check_and_log_replies(replies, is_train=True)
        f = self.num_malicious_nodes
        if len(valid) < 4 * f + 3:
            return None, None
        theta = len(valid) - 2 * f  # Multi-Krum keeps theta
        beta = theta - 2 * f  # per coordinate, the beta closest to the median
        selected = self.selection_rule([m.content for m in valid], f, theta)
        key = next(iter(selected[0].array_records))
        names = list(selected[0].array_records[key])
        stacks = [[c.array_records[key][k].numpy() for k in names] for c in selected]
        medians = [np.median(layer, axis=0) for layer in zip(*stacks, strict=True)]
        agg = aggregate_n_closest_weights(medians, stacks, beta)
        record = ArrayRecord({k: Array(np.asarray(v)) for k, v in zip(names, agg, strict=True)})
        return record, self.train_metrics_aggr_fn(selected, self.weighted_by_key)


def _bulyan(n: int, trim: float, f: int) -> FedAvg:
    return _Bulyan(num_malicious_nodes=f)


for _name, _factory in (
    ("median", _median),
    ("trimmed-mean", _trimmed),
    ("krum", _krum),
    ("multi-krum", _multi_krum),
    ("bulyan", _bulyan),
):
    register_robust_rule(_name, _factory)
