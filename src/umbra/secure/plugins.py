"""Registers the secure-aggregation round transports and client actions with the federation.

Importing this module (done by `umbra.experiment` when ``secure.aggregation != "none"``)
registers the server workflows under the names of `umbra.config.SecureConfig.aggregation`
(``"secagg+"``, ``"ckks"``) and the client handlers of ``train.secagg`` / ``train.ckks``
messages. `SECURE_MODES` maps each mode to the client actions its ClientApp needs.
"""

from __future__ import annotations

from umbra.federation.client_app import CLIENT_ACTIONS, register_client_action
from umbra.federation.rounds import TRAIN_ROUNDS, register_train_round
from umbra.secure.he.client_mod import make_ckks_handler
from umbra.secure.he.workflow import ckks_train_round
from umbra.secure.secagg.client_mod import make_secagg_handler
from umbra.secure.secagg.workflow import secagg_train_round

__all__ = ["SECURE_MODES"]

#: secure aggregation mode -> client action names the ClientApp must register
SECURE_MODES: dict[str, tuple[str, ...]] = {"secagg+": ("secagg",), "ckks": ("ckks",)}

if "secagg+" not in TRAIN_ROUNDS:
    register_train_round("secagg+", secagg_train_round)
if "ckks" not in TRAIN_ROUNDS:
    register_train_round("ckks", ckks_train_round)
if "secagg" not in CLIENT_ACTIONS:
    register_client_action("secagg", make_secagg_handler)
if "ckks" not in CLIENT_ACTIONS:
    register_client_action("ckks", make_ckks_handler)
