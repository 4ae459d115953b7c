"""The client side of a DP mode: how an organisation trains and what its reply carries.

The ClientApp's ``train`` runs the same steps under every mode (load, train, SCAFFOLD's
control update, public metrics) and asks the mode's policy, chosen once per message from
its ``dp-mode`` (:func:`~umbra.privacy.client.registry.client_policy`), for the three things
that differ: the optimiser settings, the local trainer, and the post-processing of the
update and metrics before they leave (as Flower's ``LocalDpMod`` post-processes a reply).

Why a hook and not a ``ClientApp(mods=[...])`` mod: the secure-aggregation stages
(``train.<x>`` messages) call the train function directly and quantise, noise and mask its
update afterwards, so the DP post-processing must happen inside that function, before them;
an app-level mod would see the masked vector.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from umbra.federation.train import Batchable, TrainSettings, train_local
from umbra.models import MultimodalNet

__all__ = ["Arrays", "ClientPolicy", "Scaffold", "config_float", "config_int"]

Arrays = dict[str, np.ndarray]
#: SCAFFOLD's (c, c_i): the server's and this client's control variates
Scaffold = tuple[Mapping[str, np.ndarray], Mapping[str, np.ndarray]]


def config_float(config: Mapping[str, Any], key: str, default: float | None = None) -> float:
    """``config[key]`` as a float (``default`` when absent; no default: the key is required)."""
    return float(config[key] if default is None else config.get(key, default))


def config_int(config: Mapping[str, Any], key: str, default: int | None = None) -> int:
    """``config[key]`` as an int (``default`` when absent; no default: the key is required)."""
    return int(config[key] if default is None else config.get(key, default))


class ClientPolicy:
    """One DP mode as an organisation applies it to one train message.

    Built from the message's ConfigRecord (the server's plan for this client); subclasses
    set ``name`` (a ``privacy.mode``, or ``"none"``), override the hooks their mode changes
    and may keep state between :meth:`train` and :meth:`reply` of the same message. The
    defaults are training without DP: the base settings, local SGD, the reply as trained.
    """

    name: ClassVar[str]

    def __init__(self, config: Mapping[str, Any]) -> None:
        self.config = config

    def settings(self, base: TrainSettings) -> TrainSettings:
        """The optimiser settings of this round (default: ``base``)."""
        return base

    def train(
        self,
        model: MultimodalNet,
        data: Batchable,
        settings: TrainSettings,
        *,
        seed: int,
        scaffold: Scaffold | None,
    ) -> dict[str, float]:
        """Train ``model`` in place; returns local metrics (``steps`` among them).
        Default: local SGD (:func:`~umbra.federation.train.train_local`)."""
        return train_local(model, data, settings, seed=seed, scaffold=scaffold)

    def reply(
        self, x: Arrays, y: Arrays, out: Arrays, metrics: dict[str, float]
    ) -> tuple[Arrays, dict[str, float]]:
        """The arrays and metrics to send for global ``x`` and trained ``y`` (``out`` is
        ``y`` plus SCAFFOLD's control-variate delta). Default: unchanged."""
        return out, metrics
