"""Umbra as a Flower App for the Deployment Engine: the module-level ServerApp and
ClientApp that ``flwr run`` loads (``umbra.apps:server_app``, ``umbra.apps:client_app``),
which build their specs from the run config and each node's own node config."""

from umbra.apps.client import client_app
from umbra.apps.server import server_app

__all__ = ["client_app", "server_app"]
