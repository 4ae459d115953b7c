"""No DP: plain local training, the reply as trained."""

from __future__ import annotations

from umbra.privacy.client.policy import ClientPolicy

__all__ = ["NoDP"]


class NoDP(ClientPolicy):
    """Local SGD (FedProx/SCAFFOLD as configured), nothing to post-process: every hook is
    :class:`~umbra.privacy.client.policy.ClientPolicy`'s default."""

    name = "none"
