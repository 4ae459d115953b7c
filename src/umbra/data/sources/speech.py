"""Spoken phrases synthesized with espeak-ng, augmented per record, as log-mel features.

A *pool* of clips is synthesized once with the Debian ``espeak-ng`` binary (several
voices, speeds and pitches) and cached on disk; records never call espeak. Each record
takes a pool clip of its class and gets a random time shift, gain and additive noise at a
random signal-to-noise ratio (the usual speech augmentation recipe, e.g. Ko et al., "Audio
augmentation for speech recognition", Interspeech 2015), then log-mel features
(Davis & Mermelstein, IEEE TASSP 1980; HTK mel scale ``2595 log10(1 + f / 700)``).

Features: 8 kHz audio, 2 s window, 64 ms Hann frames every 62.5 ms, 32 mel bands over
50-4000 Hz, natural log of power, standardized with fixed constants -> ``AUDIO_SHAPE``.
"""

from __future__ import annotations

import functools
import math
import shutil
import subprocess
import tempfile
import zipfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import firwin, resample_poly

from umbra.data.cache import atomic_savez, params_key, resolve_cache_dir
from umbra.errors import DataError

__all__ = [
    "AUDIO_SHAPE",
    "CLIP_SAMPLES",
    "DEFAULT_PITCHES",
    "DEFAULT_SPEEDS",
    "DEFAULT_VOICES",
    "SAMPLE_RATE",
    "SpeechPool",
    "augment_clips",
    "espeak_binary",
    "hz_to_mel",
    "log_mel",
    "log_mel_batch",
    "mel_filterbank",
    "mel_to_hz",
    "resample",
    "speech_features",
    "synthesize_pool",
]

AUDIO_SHAPE: tuple[int, int, int] = (1, 32, 32)
SAMPLE_RATE = 8_000  # Hz, every waveform is resampled to this rate
CLIP_SECONDS = 2.0
CLIP_SAMPLES = int(SAMPLE_RATE * CLIP_SECONDS)  # 16,000
N_FFT = 512  # 64 ms frames
HOP = 500  # 62.5 ms hop: CLIP_SAMPLES / HOP = 32 frames
N_MELS = AUDIO_SHAPE[1]
N_FRAMES = AUDIO_SHAPE[2]
F_MIN = 50.0
F_MAX = SAMPLE_RATE / 2
LOG_FLOOR = 1e-6  # added to mel power before the log, so silence stays finite
#: Fixed standardization of log-mel values (measured on augmented fmnist-avt speech).
LOGMEL_MEAN = 0.63
LOGMEL_STD = 1.91

DEFAULT_VOICES: tuple[str, ...] = (
    "en-us",
    "en-gb",
    "en+f2",
    "en+f3",
    "en+f4",
    "en+m3",
    "en+m5",
    "en-gb-scotland",
    "en-029",
)
DEFAULT_SPEEDS: tuple[int, ...] = (150, 180, 210)  # words per minute (espeak -s)
DEFAULT_PITCHES: tuple[int, ...] = (35, 50, 65)  # 0-99 (espeak -p)
_POOL_FORMAT = 1
_POOL_RMS = 0.1  # every pool clip is scaled to this RMS over its voiced span


# --------------------------------------------------------------------------- mel features
def hz_to_mel(f: np.ndarray | float) -> np.ndarray:
    """HTK mel scale: ``2595 log10(1 + f / 700)`` (f in Hz)."""
    return 2595.0 * np.log10(1.0 + np.asarray(f, dtype=np.float64) / 700.0)


def mel_to_hz(m: np.ndarray | float) -> np.ndarray:
    """Inverse of :func:`hz_to_mel` (Hz)."""
    return 700.0 * (10.0 ** (np.asarray(m, dtype=np.float64) / 2595.0) - 1.0)


def mel_filterbank(
    n_mels: int = N_MELS,
    n_fft: int = N_FFT,
    sample_rate: int = SAMPLE_RATE,
    f_min: float = F_MIN,
    f_max: float = F_MAX,
) -> np.ndarray:
    """Triangular mel filters, shape ``(n_mels, n_fft // 2 + 1)``, peak height 1.

    Filter k rises linearly (in Hz) from edge k to a peak at edge k+1 and falls to zero at
    edge k+2, where the ``n_mels + 2`` edges are equally spaced on the HTK mel scale
    between ``f_min`` and ``f_max``.
    """
    if not 0 <= f_min < f_max <= sample_rate / 2:
        raise ValueError(f"need 0 <= f_min < f_max <= sample_rate/2, got {f_min}, {f_max}")
    if n_mels < 1 or n_fft < 2:
        raise ValueError(f"n_mels must be >= 1 and n_fft >= 2, got {n_mels}, {n_fft}")
    freqs = np.linspace(0.0, sample_rate / 2, n_fft // 2 + 1)  # (F,)
    edges = mel_to_hz(np.linspace(hz_to_mel(f_min), hz_to_mel(f_max), n_mels + 2))  # (M+2,)
    lower, center, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]  # (M, 1)
    rising = (freqs[None, :] - lower) / (center - lower)
    falling = (upper - freqs[None, :]) / (upper - center)
    return np.maximum(0.0, np.minimum(rising, falling)).astype(np.float32)  # (M, F)


_FILTERBANK = mel_filterbank()


def _fit_length(waves: np.ndarray, length: int) -> np.ndarray:
    """Zero-pad or crop the last axis to ``length``."""
    n = waves.shape[-1]
    if n >= length:
        return waves[..., :length]
    pad = [(0, 0)] * (waves.ndim - 1) + [(0, length - n)]
    return np.pad(waves, pad)


@functools.lru_cache(maxsize=32)
def _polyphase_filter(up: int, down: int) -> np.ndarray:
    """The FIR filter ``scipy.signal.resample_poly`` designs by default for ``up/down``.

    Passing it as ``window=`` gives bit-identical output (same ``firwin`` call, Kaiser
    β = 5, half-length 10·max(up, down)); designing it once per rate pair instead of once
    per file makes resampling 2-5× faster.
    """
    max_rate = max(up, down)
    h = firwin(2 * 10 * max_rate + 1, 1.0 / max_rate, window=("kaiser", 5.0))
    h.flags.writeable = False
    return h


def resample(wave: np.ndarray, sample_rate: int) -> np.ndarray:
    """``wave`` (last axis: time, at ``sample_rate`` Hz) at ``SAMPLE_RATE`` Hz, polyphase
    (``scipy.signal.resample_poly`` with its default filter, designed once per rate pair)."""
    if sample_rate == SAMPLE_RATE:
        return wave
    g = math.gcd(int(sample_rate), SAMPLE_RATE)
    up, down = SAMPLE_RATE // g, int(sample_rate) // g
    return resample_poly(wave, up, down, axis=-1, window=_polyphase_filter(up, down))


def log_mel_batch(waves: np.ndarray, *, chunk: int = 1024) -> np.ndarray:
    """Standardized log-mel features of many ``SAMPLE_RATE`` waveforms.

    Args:
        waves: float array ``(N, L)`` sampled at ``SAMPLE_RATE``; padded with zeros or
            cropped to ``CLIP_SAMPLES`` (2 s).
        chunk: records per ``torch.stft`` call (bounds memory: ~70 kB per record).

    Returns:
        float32 ``(N, *AUDIO_SHAPE)``.
    """
    import torch  # local: keeps `import umbra.data` light

    waves = np.asarray(waves)
    if waves.ndim != 2:
        raise ValueError(f"waves must have shape (N, L), got {waves.shape}")
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    out = np.empty((len(waves), *AUDIO_SHAPE), dtype=np.float32)
    window = torch.hann_window(N_FFT)
    fb = torch.from_numpy(_FILTERBANK)  # (M, F)
    with torch.no_grad():
        for start in range(0, len(waves), chunk):
            block = _fit_length(waves[start : start + chunk], CLIP_SAMPLES)
            x = torch.from_numpy(np.ascontiguousarray(block, dtype=np.float32))  # (B, L)
            spec = torch.stft(
                x,
                N_FFT,
                HOP,
                window=window,
                center=True,
                pad_mode="constant",
                return_complex=True,
            )  # (B, F, T)
            power = spec.real.square_() + spec.imag.square_()  # (B, F, T)
            mel = torch.matmul(fb, power[..., :N_FRAMES])  # (B, M, T)
            mel.add_(LOG_FLOOR).log_().sub_(LOGMEL_MEAN).div_(LOGMEL_STD)
            out[start : start + len(block), 0] = mel.numpy()
    return out


def log_mel(wave: np.ndarray, sample_rate: int) -> np.ndarray:
    """Standardized log-mel features of one mono waveform.

    Args:
        wave: float samples ``(L,)`` in [-1, 1] (or ``(L, C)``: channels are averaged).
        sample_rate: Hz; resampled to ``SAMPLE_RATE`` (8 kHz) with a polyphase filter.

    Returns:
        float32 ``AUDIO_SHAPE`` = (1, 32 mel bands, 32 frames of 62.5 ms); the wave is
        zero-padded or cropped to 2 s.
    """
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be > 0 Hz, got {sample_rate}")
    x = np.asarray(wave, dtype=np.float64)
    if x.ndim == 2:
        x = x.mean(axis=1)
    if x.ndim != 1:
        raise ValueError(f"wave must have shape (L,) or (L, C), got {x.shape}")
    x = resample(x, sample_rate)
    return log_mel_batch(x[None, :])[0]


# --------------------------------------------------------------------------- the pool
@dataclass(frozen=True)
class SpeechPool:
    """Synthesized clips at ``SAMPLE_RATE``, voiced span left-aligned, zero-padded.

    Attributes:
        waves: float32 ``(P, CLIP_SAMPLES)``.
        lengths: int64 ``(P,)`` voiced samples of each clip (<= CLIP_SAMPLES).
        classes: int64 ``(P,)`` class of each clip (index into the phrase lists).
        power: float32 ``(P,)`` mean square over the voiced span.
        phrases: the phrase each clip speaks.
    """

    waves: np.ndarray
    lengths: np.ndarray
    classes: np.ndarray
    power: np.ndarray
    phrases: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.classes)

    def clips_of(self, cls: int) -> np.ndarray:
        """Indices of the clips of class ``cls``."""
        return np.flatnonzero(self.classes == cls)


def espeak_binary() -> str:
    """Path of ``espeak-ng``; :class:`DataError` with the install command if missing."""
    path = shutil.which("espeak-ng")
    if path is None:
        raise DataError(
            "espeak-ng not found on PATH; install it with: sudo apt-get install espeak-ng "
            "(or run `make install`)"
        )
    return path


def _espeak_version(binary: str) -> str:
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False)
    return out.stdout.strip()


def _synthesize(
    binary: str, text: str, voice: str, speed: int, pitch: int, wav: Path
) -> np.ndarray:
    """One espeak-ng call -> trimmed, RMS-normalized float32 wave at SAMPLE_RATE."""
    cmd = [binary, "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", str(wav), text]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    if proc.returncode != 0:
        raise DataError(f"espeak-ng failed for voice {voice!r}: {proc.stderr.strip()}")
    data, rate = sf.read(wav, dtype="float32", always_2d=True)
    x = resample(data.mean(axis=1).astype(np.float64), int(rate))
    voiced = np.flatnonzero(np.abs(x) > 0.02 * max(float(np.abs(x).max()), 1e-9))
    if voiced.size == 0:
        raise DataError(f"espeak-ng produced silence for {text!r} ({voice})")
    margin = SAMPLE_RATE // 50  # keep 20 ms around the voiced span
    x = x[max(0, voiced[0] - margin) : voiced[-1] + margin][:CLIP_SAMPLES]
    x *= _POOL_RMS / max(float(np.sqrt(np.mean(x**2))), 1e-9)
    return x.astype(np.float32)


def _load_pool(path: Path) -> SpeechPool | None:
    """The cached pool at ``path``; None if absent or unreadable (then it is rebuilt)."""
    if not path.exists():
        return None
    try:
        with np.load(path) as z:
            return SpeechPool(
                waves=z["waves"].astype(np.float32),
                lengths=z["lengths"],
                classes=z["classes"],
                power=z["power"],
                phrases=tuple(str(p) for p in z["phrases"]),
            )
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):
        return None


def synthesize_pool(
    phrases_by_class: Sequence[Sequence[str]],
    *,
    clips_per_class: int,
    cache_dir: Path | None = None,
    voices: Sequence[str] = DEFAULT_VOICES,
    speeds: Sequence[int] = DEFAULT_SPEEDS,
    pitches: Sequence[int] = DEFAULT_PITCHES,
    workers: int = 2,
) -> SpeechPool:
    """Synthesize (once, then load from the cache) ``clips_per_class`` clips per class.

    Class c's clips cycle through ``phrases_by_class[c]``; voice, speed and pitch are drawn
    from a generator seeded by the arguments, so the pool is reproducible. About 40 ms of
    espeak per clip, ``workers`` calls in parallel.
    """
    if clips_per_class < 1:
        raise ValueError(f"clips_per_class must be >= 1, got {clips_per_class}")
    if not phrases_by_class or any(len(p) == 0 for p in phrases_by_class):
        raise ValueError("phrases_by_class must hold at least one phrase per class")
    if not voices or not speeds or not pitches:
        raise ValueError("voices, speeds and pitches must be non-empty")
    spec = {
        "format": _POOL_FORMAT,
        "phrases": [list(p) for p in phrases_by_class],
        "clips_per_class": clips_per_class,
        "voices": list(voices),
        "speeds": list(speeds),
        "pitches": list(pitches),
        "sample_rate": SAMPLE_RATE,
    }
    path = resolve_cache_dir(cache_dir) / "speech" / f"pool-{params_key(spec)}.npz"
    cached = _load_pool(path)
    if cached is not None:
        return cached
    binary = espeak_binary()

    rng = np.random.default_rng(int(params_key(spec), 16))
    jobs: list[tuple[int, str, str, int, int]] = []
    for c, phrases in enumerate(phrases_by_class):
        for k in range(clips_per_class):
            jobs.append(
                (
                    c,
                    phrases[k % len(phrases)],
                    str(voices[int(rng.integers(len(voices)))]),
                    int(speeds[int(rng.integers(len(speeds)))]),
                    int(pitches[int(rng.integers(len(pitches)))]),
                )
            )
    with tempfile.TemporaryDirectory(prefix="umbra-espeak-") as tmp:

        def run(i: int) -> np.ndarray:
            _, text, voice, speed, pitch = jobs[i]
            return _synthesize(binary, text, voice, speed, pitch, Path(tmp) / f"{i}.wav")

        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            clips = list(pool.map(run, range(len(jobs))))

    waves = np.zeros((len(clips), CLIP_SAMPLES), dtype=np.float32)
    lengths = np.array([len(clip) for clip in clips], dtype=np.int64)
    for i, clip in enumerate(clips):
        waves[i, : len(clip)] = clip
    power = np.array([np.mean(clip.astype(np.float64) ** 2) for clip in clips], dtype=np.float32)
    result = SpeechPool(
        waves=waves,
        lengths=lengths,
        classes=np.array([j[0] for j in jobs], dtype=np.int64),
        power=power,
        phrases=tuple(j[1] for j in jobs),
    )
    atomic_savez(
        path,
        waves=waves.astype(np.float16),
        lengths=lengths,
        classes=result.classes,
        power=power,
        phrases=np.array(result.phrases),
        espeak_version=np.array(_espeak_version(binary)),
    )
    # Reload through the same float16 path so first and cached calls agree bit for bit.
    return SpeechPool(
        waves.astype(np.float16).astype(np.float32),
        lengths,
        result.classes,
        power,
        result.phrases,
    )


# --------------------------------------------------------------------------- augmentation
def augment_clips(
    pool: SpeechPool,
    clip_index: np.ndarray,
    rng: np.random.Generator,
    *,
    snr_db: tuple[float, float] = (0.0, 20.0),
    gain_db: tuple[float, float] = (-6.0, 6.0),
    noise_bank: np.ndarray | None = None,
) -> np.ndarray:
    """Waveforms ``(B, CLIP_SAMPLES)`` float32: pool clips with shift, gain and noise.

    Each clip is placed at a uniformly random offset inside the 2 s window, scaled by a
    gain drawn uniformly in ``gain_db`` (dB), and white Gaussian noise is added at an SNR
    drawn uniformly in ``snr_db`` (dB, relative to the clip's power after gain). The noise
    is a random crop of ``noise_bank`` (a long unit-variance white noise buffer; drawn from
    ``rng`` if None), which is much cheaper than fresh noise per record.
    """
    lo, hi = snr_db
    if not lo <= hi:
        raise ValueError(f"snr_db must be (low, high) with low <= high, got {snr_db}")
    if not gain_db[0] <= gain_db[1]:
        raise ValueError(f"gain_db must be (low, high) with low <= high, got {gain_db}")
    idx = np.asarray(clip_index, dtype=np.int64)
    if noise_bank is None:
        noise_bank = rng.standard_normal(4 * CLIP_SAMPLES, dtype=np.float32)
    if len(noise_bank) < CLIP_SAMPLES:
        raise ValueError(f"noise_bank must hold >= {CLIP_SAMPLES} samples")
    n = len(idx)
    lengths = pool.lengths[idx]
    offsets = (rng.random(n) * (CLIP_SAMPLES - lengths + 1)).astype(np.int64)
    gains = 10.0 ** (rng.uniform(gain_db[0], gain_db[1], n) / 20.0)
    snrs = rng.uniform(lo, hi, n)
    noise_std = np.sqrt(pool.power[idx] * gains**2 / 10.0 ** (snrs / 10.0))
    noise_at = rng.integers(0, len(noise_bank) - CLIP_SAMPLES + 1, n)
    out = np.empty((n, CLIP_SAMPLES), dtype=np.float32)
    for b in range(n):
        np.multiply(noise_bank[noise_at[b] : noise_at[b] + CLIP_SAMPLES], noise_std[b], out=out[b])
        o, length = offsets[b], lengths[b]
        out[b, o : o + length] += pool.waves[idx[b], :length] * np.float32(gains[b])
    return out


def speech_features(
    pool: SpeechPool,
    clip_index: np.ndarray,
    rng: np.random.Generator,
    *,
    snr_db: tuple[float, float] = (0.0, 20.0),
    gain_db: tuple[float, float] = (-6.0, 6.0),
    chunk: int = 1024,
) -> np.ndarray:
    """Augmented log-mel features ``(N, *AUDIO_SHAPE)`` of pool clips ``clip_index``.

    Deterministic for a given ``rng`` state; works in chunks of ``chunk`` records.
    """
    idx = np.asarray(clip_index, dtype=np.int64)
    noise_bank = rng.standard_normal(1 << 22, dtype=np.float32)  # 524 s of unit noise
    out = np.empty((len(idx), *AUDIO_SHAPE), dtype=np.float32)
    for start in range(0, len(idx), chunk):
        waves = augment_clips(
            pool,
            idx[start : start + chunk],
            rng,
            snr_db=snr_db,
            gain_db=gain_db,
            noise_bank=noise_bank,
        )
        out[start : start + chunk] = log_mel_batch(waves, chunk=chunk)
    return out
