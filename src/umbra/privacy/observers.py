"""ε per observer: who sees what of a run, and the ε that holds against each of them.

A DP guarantee is a statement about an observer (DESIGN.md, "Privacy semantics"). Two facts
about an observer change its ε:

* **It sees the sample.** Amplification by subsampling (Balle, Barthe & Gaboardi 2018,
  https://arxiv.org/abs/1807.01647) holds only against someone who does not know which
  records or clients the sample holds. The party that draws a sample, and anyone told who
  took part, gets the ε of the same releases with sampling rate 1 (no amplification).
* **It sees a release before all of its noise is added.** Then no ε holds against it
  (reported as ``None``: the observer is trusted).

Observers:

``server``
    The aggregation server (honest-but-curious).
``other_clients``
    Any other organisation of the federation: it receives every round's global model and,
    under secure aggregation, the list of the round's participants (the protocol shares
    keys among them).
``model_holder``
    Whoever holds the released global models (a model user), who sees neither the
    participants nor any individual update.

Example-level DP: every organisation Poisson-samples its own records from a CSPRNG and tells
nobody which; its DP-SGD noise is added before anything leaves it (or, with distributed
noise, the securely aggregated sum carries all of it). All three observers get the same,
amplified ε.

Client-level DP (McMahan et al. 2018, https://arxiv.org/abs/1710.06963): the server draws
the client sample, so against the server the ε is the unamplified one (q = 1), and with
central noise (added by the server itself) no ε holds against it at all. Other organisations
see the sample under secure aggregation. Only the model holder gets the amplified ε.
Pure functions: no I/O, no Flower.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from umbra.privacy.ledger import LedgerContents, compute_report

__all__ = ["OBSERVERS", "ObserverView", "observer_epsilons", "observer_views"]

#: Observer names, in the order results and reports list them.
OBSERVERS: tuple[str, ...] = ("server", "other_clients", "model_holder")


@dataclass(frozen=True)
class ObserverView:
    """What one observer sees of the DP releases.

    Attributes:
        observer: one of :data:`OBSERVERS`.
        sees_sample: knows who/what was sampled, so its ε has no amplification (q = 1).
        sees_noise_free: sees a release before its full noise is added: no ε holds.
        why: one sentence saying what the observer sees.
    """

    observer: str
    sees_sample: bool
    sees_noise_free: bool
    why: str


def observer_views(*, unit: str, noise: str, secure: str) -> dict[str, ObserverView]:
    """The view of each observer for a run's DP unit, noise placement and secure mode.

    Args:
        unit: ``"example"`` or ``"client"``.
        noise: ``"central"`` or ``"distributed"``.
        secure: ``"none"``, ``"secagg+"`` or ``"ckks"``.
    """
    if unit not in ("example", "client"):
        raise ValueError(f"unit must be 'example' or 'client', got {unit!r}")
    if noise not in ("central", "distributed"):
        raise ValueError(f"noise must be 'central' or 'distributed', got {noise!r}")
    if unit == "example":
        why = "each organisation Poisson-samples its records secretly, from a CSPRNG"
        return {
            "server": ObserverView("server", False, False, why + "; it sees only "
                                   + ("the sum of " if secure != "none" else "") + "noised updates"),
            "other_clients": ObserverView("other_clients", False, False,
                                          why + "; it sees the global models"),
            "model_holder": ObserverView("model_holder", False, False,
                                         why + "; it sees the global models"),
        }  # fmt: skip
    told = secure != "none"
    server_why = "it draws the client sample" + (
        " and adds the noise itself, so it sees the noise-free " + ("sum" if told else "updates")
        if noise == "central"
        else "; it sees only the sum, which carries the full noise"
    )
    clients_why = (
        "secure aggregation tells it the round's participants"
        if told
        else "it sees the global models but not who took part"
    )
    return {
        "server": ObserverView("server", True, noise == "central", server_why),
        "other_clients": ObserverView("other_clients", told, False, clients_why),
        "model_holder": ObserverView(
            "model_holder", False, False, "it sees the global models only"
        ),
    }


def _unamplified(contents: LedgerContents) -> LedgerContents:
    """The same releases with every sampling rate set to 1 (the sample is known)."""
    return replace(contents, releases=[replace(r, sample_rate=1.0) for r in contents.releases])


def observer_epsilons(
    contents: LedgerContents, views: dict[str, ObserverView]
) -> dict[str, dict[str, Any]]:
    """``observer -> {"epsilon": {"total", <group>...} | None, "amplified", "why"}``.

    ε is the worst party's, from the ledger through dp-accounting; ``None`` when the
    observer sees a release before its noise (no guarantee against it).
    """
    cache: dict[bool, dict[str, float]] = {}
    out: dict[str, dict[str, Any]] = {}
    for name in OBSERVERS:
        v = views[name]
        eps: dict[str, float] | None = None
        if not v.sees_noise_free:
            if v.sees_sample not in cache:
                c = _unamplified(contents) if v.sees_sample else contents
                cache[v.sees_sample] = dict(compute_report(c, worst_only=True).epsilon)
            eps = cache[v.sees_sample]
        out[name] = {"epsilon": eps, "amplified": not v.sees_sample, "why": v.why}
    return out
