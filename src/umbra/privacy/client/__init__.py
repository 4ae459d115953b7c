"""Differential privacy as the organisation applies it: one policy per DP mode (no DP,
example-level DP-SGD, client-level clipping and noise), chosen once per train message from
its ``dp-mode`` (:func:`client_policy`) behind a name registry. Runs on the client.
"""

from umbra.privacy.client.client_dp import ClientDP
from umbra.privacy.client.example_dp import ExampleDP
from umbra.privacy.client.no_dp import NoDP
from umbra.privacy.client.policy import ClientPolicy, Scaffold, config_float, config_int
from umbra.privacy.client.registry import CLIENT_POLICIES, client_policy, register_client_policy

__all__ = [
    "CLIENT_POLICIES",
    "ClientDP",
    "ClientPolicy",
    "ExampleDP",
    "NoDP",
    "Scaffold",
    "client_policy",
    "config_float",
    "config_int",
    "register_client_policy",
]
