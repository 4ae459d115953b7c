"""Models: per-modality encoders, projections into one embedding space, masked fusion, losses."""

from umbra.models.encoders import build_encoder, channels_last, encoder_names, register_encoder
from umbra.models.fusion import MaskedMeanFusion, masked_mean, modality_dropout
from umbra.models.losses import info_nce, multimodal_loss
from umbra.models.multimodal import (
    SHARED_GROUP,
    ModelSpec,
    MultimodalNet,
    num_parameters,
    parameter_groups,
    parameter_modality,
)
from umbra.models.text_lora import TOKEN_ENCODERS, LoraSettings, MiniLMEncoder
from umbra.models.travel import frozen_names, load_travelling_state, travelling_state

__all__ = [
    "SHARED_GROUP",
    "TOKEN_ENCODERS",
    "LoraSettings",
    "MaskedMeanFusion",
    "MiniLMEncoder",
    "ModelSpec",
    "MultimodalNet",
    "build_encoder",
    "channels_last",
    "encoder_names",
    "frozen_names",
    "info_nce",
    "load_travelling_state",
    "masked_mean",
    "modality_dropout",
    "multimodal_loss",
    "num_parameters",
    "parameter_groups",
    "parameter_modality",
    "register_encoder",
    "travelling_state",
]
