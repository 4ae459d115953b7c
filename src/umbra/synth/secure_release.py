"""How a round of the generator's sums reaches the coordinator: each organisation's noise on
its own message (``synth.noise = "local"``), or a share of one noise inside a secure sum
(``"distributed"``).

Every round releases, per group ``g``, the sum over all records of per-record terms of L2
norm ≤ ``C_g``, with Gaussian noise of multiplier ``σ_g`` (the plan's; the ledger records
``σ_g`` and ``C_g`` either way).

* :class:`LocalNoise`: each organisation adds ``N(0, σ_g² C_g²)`` per entry to its own sums
  and sends them in the clear; the coordinator adds them up. Each message is private on
  its own: the guarantee holds against any observer and any collusion, and the sum carries
  ``n`` noises (``√n`` times the standard deviation one central release would need).
* :class:`SecureNoise`: the distributed discrete Gaussian (Kairouz, Liu & Steinke, ICML
  2021; :mod:`umbra.privacy.ddg`) under pairwise additive masks (the masking core of
  Bonawitz et al., CCS 2017; :mod:`umbra.vertical.secure_sum`). Organisation ``i`` encodes
  each group's sums in fixed point over a public range ``±R_g`` (``R_g = N C_g`` plus 12
  standard deviations of its share, ``N`` a public bound on any organisation's records:
  the data set's size), ``γ_g`` integer units per unit; rounds them randomly; adds a
  discrete Gaussian share ``N_Z(0, σ_g² Δ_g² / t)`` with ``Δ_g = γ_g C_g + √d_g``
  (:func:`umbra.privacy.ddg.rounding_sensitivity`: a record's sensitivity after the
  rounding); and adds ``Σ_{j>i} PRG(s_ij) − Σ_{j<i} PRG(s_ij)`` mod 2^32 with ``s_ij`` the
  X25519 agreement of organisations ``i`` and ``j`` (keys from the OS CSPRNG, HKDF label
  :data:`MASK_INFO`; one PRG stream per round and group). The masks cancel in the
  coordinator's sum mod 2^32, which decodes to the organisations' sums plus ``n`` shares:
  a discrete Gaussian of variance ``n σ_g² Δ_g² / t ≥ σ_g² Δ_g²`` while ``n ≥ t``.

Against whom ``"distributed"`` holds (``t`` = ⌈``secure.threshold`` · n⌉ from
:func:`umbra.privacy.client_dp.shares_needed`, as the training rounds size theirs): the
coordinator sees masked vectors, each uniform in Z_{2^32}, and the sum; with ``c`` organisations
colluding with it (subtracting their own shares and masks) the sum of the others keeps
``(n − c) / t`` of the noise variance, so each record keeps its (ε, δ) against the
coordinator while at most ``n − t`` organisations collude with it. Another organisation
or whoever receives the generator sees the released sums only: the full noise. There is
no dropout recovery: every organisation holds its records for the whole fit, and a
missing message stops it. The organisations run in this process, as in the rest of
``umbra synth``; secrets (private keys, seeds) live in memory only.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from umbra.privacy.ddg import DDGGroup, plan_group, rounding_sensitivity
from umbra.privacy.randomness import SecureRandom
from umbra.secure.secagg.crypto import generate_keypair
from umbra.secure.secagg.quantize import QuantizationSpec, dequantize_sum, quantize_with_noise
from umbra.vertical.secure_sum import mask_for, pair_seeds

__all__ = [
    "MASK_INFO",
    "NOISE_MODES",
    "GroupNoise",
    "LocalNoise",
    "SecureNoise",
    "encoding_of",
]

#: ``synth.noise`` values.
NOISE_MODES = ("local", "distributed")
#: HKDF label of the generator's pairwise seeds (apart from every other protocol's).
MASK_INFO = b"umbra-synth-secure-sum-v1"
#: Standard deviations of a noise share kept inside the encoding range.
SHARE_TAIL = 12.0


@dataclass(frozen=True)
class GroupNoise:
    """One group's release: noise multiplier ``sigma`` and per-record L2 bound ``clip``."""

    sigma: float
    clip: float


def encoding_of(
    noise: GroupNoise, *, dim: int, records: int, organisations: int, shares: int
) -> tuple[QuantizationSpec, DDGGroup]:
    """The fixed-point range and the discrete Gaussian plan of one group of ``dim``
    entries whose per-organisation sums are bounded by ``records · clip`` per entry.

    The range ``R`` solves ``R = records·C + 12 s / γ`` with ``γ = L / (2R)`` and ``s`` the
    share's standard deviation ``σ (γ C + √d) / √t`` in integer units (``L`` the ring's
    per-organisation levels), so no value is clipped and no level leaves the ring.

    Raises:
        DDGError: the shares are too narrow for their sum to be one discrete Gaussian.
        ValueError: the noise is too large for the ring at any resolution.
    """
    probe = QuantizationSpec(clip=1.0, num_clients=organisations)
    levels = float(probe.max_level)
    root_t = math.sqrt(shares)
    # R (1 − 24 σ √d / (L √t)) = records C + 12 σ C / √t
    room = 1.0 - 2 * SHARE_TAIL * noise.sigma * math.sqrt(dim) / (levels * root_t)
    if room <= 0.5:
        raise ValueError(
            f"noise multiplier {noise.sigma:.3g} over {dim} entries does not fit a 32-bit "
            "secure sum: lower the noise (a larger ε) or use synth.noise = 'local'"
        )
    value = records * noise.clip + SHARE_TAIL * noise.sigma * noise.clip / root_t
    spec = QuantizationSpec(clip=value / room, num_clients=organisations)
    delta2 = rounding_sensitivity(noise.clip * spec.scale, dim)
    return spec, plan_group(noise_multiplier=noise.sigma, sensitivity=delta2, shares=shares)


@dataclass
class LocalNoise:
    """Each organisation's full noise on its own sums, added up in the clear."""

    organisations: int
    noise: Mapping[str, GroupNoise]
    _total: dict[str, np.ndarray] = field(default_factory=dict)

    def add(self, org: int, sums: Mapping[str, np.ndarray], rng: SecureRandom) -> None:
        """Organisation ``org``'s noised sums (it draws the noise from ``rng``)."""
        for g, v in sums.items():
            n = self.noise[g]
            sent = v + rng.normal(v.shape, std=n.sigma * n.clip)
            self._total[g] = self._total[g] + sent if g in self._total else sent

    def total(self) -> dict[str, np.ndarray]:
        """The sum of every organisation's message."""
        return dict(self._total)

    def noise_std(self, group: str, dim: int) -> float:
        """Standard deviation of the total's noise per entry (``√n σ C``)."""
        n = self.noise[group]
        return math.sqrt(self.organisations) * n.sigma * n.clip


class SecureNoise:
    """The organisations' pairwise keys for one fit, and the rounds' masked shares."""

    def __init__(self, organisations: int, *, shares: int, records: int) -> None:
        if not 1 <= shares <= organisations:
            raise ValueError(f"shares must be in [1, {organisations}], got {shares}")
        if records < 1:
            raise ValueError(f"records must be >= 1, got {records}")
        self.organisations = organisations
        self.shares = shares
        self.records = records
        keys = [generate_keypair() for _ in range(organisations)]
        publics = {i: k.public for i, k in enumerate(keys)}
        # each organisation's seeds with every other; in a deployment each computes its own
        self._seeds = [pair_seeds(i, k, publics, info=MASK_INFO) for i, k in enumerate(keys)]

    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError("SecureNoise holds the organisations' mask seeds and cannot be pickled")

    def round(self, number: int, noise: Mapping[str, GroupNoise]) -> SecureRound:
        """The secure sum of round ``number`` of the groups ``noise`` names."""
        return SecureRound(self, number, dict(noise))

    def _mask(self, org: int, number: int, group: str, length: int) -> np.ndarray:
        purpose = b"synth-" + group.encode()
        return mask_for(org, self._seeds[org], step=number, length=length, purpose=purpose)


@dataclass
class SecureRound:
    """One round of :class:`SecureNoise`: organisations add masked shares, the coordinator
    takes the sum."""

    keys: SecureNoise
    number: int
    noise: dict[str, GroupNoise]
    _shares: dict[str, list[np.ndarray]] = field(default_factory=dict)
    _shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    _encodings: dict[str, tuple[QuantizationSpec, DDGGroup]] = field(default_factory=dict)

    def _encoding(self, group: str, dim: int) -> tuple[QuantizationSpec, DDGGroup]:
        if group not in self._encodings:
            k = self.keys
            self._encodings[group] = encoding_of(
                self.noise[group], dim=dim, records=k.records,
                organisations=k.organisations, shares=k.shares,
            )  # fmt: skip
        return self._encodings[group]

    def add(self, org: int, sums: Mapping[str, np.ndarray], rng: SecureRandom) -> None:
        """What organisation ``org`` sends: per group its levels with a discrete Gaussian
        share (from ``rng``), plus its pairwise masks."""
        for g, v in sums.items():
            v = np.asarray(v, dtype=np.float64)
            spec, plan = self._encoding(g, v.size)
            levels = quantize_with_noise(
                v.ravel(), spec=spec, share_sigma=plan.share_sigma, rng=rng, what=g
            )
            levels += self.keys._mask(org, self.number, g, levels.size)  # wraps mod 2^32
            self._shares.setdefault(g, []).append(levels)
            self._shapes[g] = v.shape

    def total(self) -> dict[str, np.ndarray]:
        """The coordinator's decoded sums (every organisation must have sent)."""
        out: dict[str, np.ndarray] = {}
        for g, shares in self._shares.items():
            if len(shares) != self.keys.organisations:
                raise ValueError(
                    f"group {g!r}: {len(shares)} of {self.keys.organisations} organisations sent"
                )
            total = np.zeros_like(shares[0])
            for s in shares:
                total += s
            spec, _ = self._encodings[g]
            out[g] = dequantize_sum(total, spec=spec, num_summed=len(shares)).reshape(
                self._shapes[g]
            )
        return out

    def noise_std(self, group: str, dim: int) -> float:
        """Standard deviation of the total's noise per entry, in the sums' units
        (``√(n / t) σ Δ / γ``)."""
        spec, plan = self._encoding(group, dim)
        n = self.keys.organisations
        return math.sqrt(n) * plan.share_sigma / spec.scale
