"""Vertical federation: parties holding different modalities of the same entities.

Aligned by PSI (alignment.py), trained by split learning: each feature party runs the
bottom model of its modalities (bottom_model.py, party.py), the label holder the fusion and
head (top_model.py, label_holder.py); split_step.py is one step as pure functions. See
docs/vertical.md for who learns what.
"""

from umbra.vertical.alignment import Alignment, align
from umbra.vertical.errors import VerticalError
from umbra.vertical.layout import PartyData, split_parties

__all__ = ["Alignment", "PartyData", "VerticalError", "align", "split_parties"]
