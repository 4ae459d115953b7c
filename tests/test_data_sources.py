"""Data sources: the Fashion-MNIST reader, log-mel features, speech augmentation, the
text encoder cache, the synthetic set and the embedded fmnist-avt set."""

from __future__ import annotations

import gzip
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

from umbra.data.cache import default_cache_dir
from umbra.data.dataset import MultimodalData
from umbra.data.sources import avt, fmnist, speech, text
from umbra.data.sources.synthetic import SYNTHETIC_SHAPES, make_synthetic
from umbra.errors import DataError

N_TRAIN, N_TEST, SEED = 600, 300, 20_261_128


def nearest_centroid_accuracy(
    x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray
) -> float:
    """Accuracy of the Euclidean nearest-class-mean rule (a brute-force reference)."""
    classes = np.unique(y_train)
    centroids = np.stack([x_train[y_train == c].mean(axis=0) for c in classes])  # (C, D)
    dist = ((x_test[:, None, :] - centroids[None, :, :]) ** 2).sum(axis=2)  # (N, C)
    return float((classes[dist.argmin(axis=1)] == y_test).mean())


# --------------------------------------------------------------------------- Fashion-MNIST
def test_fmnist_reader_shapes_and_balance() -> None:
    images, labels = fmnist.read_fmnist_raw("train")
    assert images.shape == (60_000, 28, 28) and images.dtype == np.uint8
    assert np.array_equal(np.bincount(labels), np.full(10, 6000))
    test_images, test_labels = fmnist.read_fmnist_raw("test")
    assert test_images.shape == (10_000, 28, 28)
    assert np.array_equal(np.bincount(test_labels), np.full(10, 1000))
    x = fmnist.standardize_images(images[:1000])
    assert x.shape == (1000, 1, 28, 28) and x.dtype == np.float32
    ref = (images[:1000].astype(np.float64) / 255.0 - 0.2860) / 0.3530
    np.testing.assert_allclose(x[:, 0], ref, atol=1e-5)
    # the fixed constants are the train statistics (to 3 decimals)
    assert abs(images.mean() / 255.0 - fmnist.FMNIST_MEAN) < 1e-3
    assert abs(images.std() / 255.0 - fmnist.FMNIST_STD) < 1e-3


def _write_idx(path: Path, magic: int, shape: tuple[int, ...], payload: bytes) -> None:
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in shape)
    with gzip.open(path, "wb") as fh:
        fh.write(header + payload)


def test_idx_reader_checks_magic_and_size(tmp_path: Path) -> None:
    good = tmp_path / "good.gz"
    _write_idx(good, 2049, (3,), bytes([1, 2, 3]))
    assert fmnist.read_idx(good, magic=2049).tolist() == [1, 2, 3]
    with pytest.raises(DataError, match="magic 2049, expected 2051"):
        fmnist.read_idx(good, magic=2051)
    short = tmp_path / "short.gz"
    _write_idx(short, 2051, (2, 2, 2), bytes(7))
    with pytest.raises(DataError, match="header declares 8"):
        fmnist.read_idx(short, magic=2051)


def test_fmnist_missing_names_the_install_command(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        fmnist.read_fmnist_raw("train", root=tmp_path / "nowhere")


# --------------------------------------------------------------------------- log-mel
def test_mel_scale_reference_points() -> None:
    assert float(speech.hz_to_mel(1000.0)) == pytest.approx(1000.0, abs=0.05)  # HTK anchor
    f = np.array([0.0, 50.0, 440.0, 3999.0])
    np.testing.assert_allclose(speech.mel_to_hz(speech.hz_to_mel(f)), f, atol=1e-9)


def test_mel_filterbank_triangles_and_coverage() -> None:
    fb = speech.mel_filterbank().astype(np.float64)
    n_bins = speech.N_FFT // 2 + 1
    assert fb.shape == (speech.N_MELS, n_bins)
    freqs = np.linspace(0, speech.SAMPLE_RATE / 2, n_bins)
    mels = np.linspace(
        speech.hz_to_mel(speech.F_MIN), speech.hz_to_mel(speech.F_MAX), speech.N_MELS + 2
    )
    edges = speech.mel_to_hz(mels)
    for k in range(speech.N_MELS):
        # independent reference: piecewise-linear interpolation through (lo,0),(c,1),(hi,0)
        ref = np.interp(freqs, edges[k : k + 3], [0.0, 1.0, 0.0], left=0.0, right=0.0)
        np.testing.assert_allclose(fb[k], ref, atol=1e-6)
        nz = np.flatnonzero(fb[k])
        assert nz.size >= 1  # no empty filter
        assert np.all(np.diff(nz) == 1)  # one contiguous support
        peak = int(fb[k].argmax())
        assert np.all(np.diff(fb[k][: peak + 1]) >= -1e-12)  # rises ...
        assert np.all(np.diff(fb[k][peak:]) <= 1e-12)  # ... then falls
    inside = (freqs >= edges[1]) & (freqs <= edges[-2])
    # between the first and last centre adjacent triangles sum to exactly one
    np.testing.assert_allclose(fb.sum(axis=0)[inside], 1.0, atol=1e-6)
    assert fb.sum(axis=0)[(freqs > edges[0]) & (freqs < edges[-1])].min() > 0  # coverage


def test_log_mel_shape_finite_and_tone_lands_in_its_band() -> None:
    rate = 22_050
    t = np.arange(int(1.5 * rate)) / rate
    for tone in (300.0, 1200.0, 2500.0):
        feats = speech.log_mel(0.3 * np.sin(2 * np.pi * tone * t), rate)
        assert feats.shape == speech.AUDIO_SHAPE and feats.dtype == np.float32
        assert np.isfinite(feats).all()
        band = int(feats[0, :, 5:15].mean(axis=1).argmax())
        centers = speech.mel_to_hz(
            np.linspace(
                speech.hz_to_mel(speech.F_MIN), speech.hz_to_mel(speech.F_MAX), speech.N_MELS + 2
            )
        )[1:-1]
        assert abs(band - int(np.abs(centers - tone).argmin())) <= 1
    # silence after 1.5 s: the last frames sit at the log floor
    floor = (math.log(speech.LOG_FLOOR) - speech.LOGMEL_MEAN) / speech.LOGMEL_STD
    assert np.allclose(feats[0, :, -3:], floor, atol=1e-3)
    silent = speech.log_mel(np.zeros(100), 8000)
    assert np.allclose(silent, floor, atol=1e-5)


def test_log_mel_batch_matches_single_and_resampling() -> None:
    rng = np.random.default_rng(0)
    waves = (0.1 * rng.standard_normal((5, speech.CLIP_SAMPLES))).astype(np.float32)
    batch = speech.log_mel_batch(waves, chunk=2)
    assert batch.shape == (5, *speech.AUDIO_SHAPE)
    for i in range(5):
        np.testing.assert_allclose(batch[i], speech.log_mel(waves[i], 8000), atol=1e-4)
    # the same tone given at 16 kHz or 8 kHz gives nearly the same features
    t16 = np.arange(32_000) / 16_000
    t8 = np.arange(16_000) / 8_000
    a = speech.log_mel(0.2 * np.sin(2 * np.pi * 700 * t16), 16_000)
    b = speech.log_mel(0.2 * np.sin(2 * np.pi * 700 * t8), 8_000)
    strong = b > 0  # compare where there is energy
    assert np.abs(a - b)[strong].max() < 0.1


def _toy_pool(length: int) -> speech.SpeechPool:
    waves = np.zeros((2, speech.CLIP_SAMPLES), dtype=np.float32)
    t = np.arange(length) / speech.SAMPLE_RATE
    waves[0, :length] = 0.1 * np.sqrt(2) * np.sin(2 * np.pi * 440 * t)
    waves[1, :length] = 0.1 * np.sqrt(2) * np.sin(2 * np.pi * 880 * t)
    power = (waves[:, :length].astype(np.float64) ** 2).mean(axis=1).astype(np.float32)
    return speech.SpeechPool(waves, np.full(2, length), np.array([0, 1]), power, ("a440", "a880"))


def test_augmentation_hits_the_requested_snr() -> None:
    pool = _toy_pool(speech.CLIP_SAMPLES)  # full-length clips: no room to shift
    rng = np.random.default_rng(1)
    idx = np.array([0, 1] * 20)
    out = speech.augment_clips(pool, idx, rng, snr_db=(10.0, 10.0), gain_db=(0.0, 0.0))
    noise = out - pool.waves[idx]
    snr = 10 * np.log10(pool.power[idx] / (noise.astype(np.float64) ** 2).mean(axis=1))
    assert np.all(np.abs(snr - 10.0) < 0.3)  # 16,000 noise samples: sd of the estimate ~0.05 dB


def test_augmentation_shifts_uniformly_within_the_window() -> None:
    length = 2000
    pool = _toy_pool(length)
    rng = np.random.default_rng(2)
    out = speech.augment_clips(
        pool, np.zeros(400, dtype=int), rng, snr_db=(200.0, 200.0), gain_db=(0.0, 0.0)
    )
    loud = np.abs(out) > 1e-3
    starts = loud.argmax(axis=1)
    ends = speech.CLIP_SAMPLES - loud[:, ::-1].argmax(axis=1)
    assert np.all(ends - starts <= length) and np.all(ends - starts >= length - 20)
    span = speech.CLIP_SAMPLES - length
    assert starts.min() < 0.05 * span and starts.max() > 0.95 * span
    assert abs(starts.mean() - span / 2) < 4 * span / math.sqrt(12 * 400)  # uniform mean


def test_missing_espeak_names_the_install_command(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(DataError, match="apt-get install espeak-ng"):
        speech.synthesize_pool([["warm"]], clips_per_class=1, cache_dir=tmp_path)


def test_speech_pool_is_balanced_and_cycles_phrases() -> None:
    phrases = avt.attribute_phrases()
    pool = speech.synthesize_pool(phrases, clips_per_class=80)  # the cached fmnist-avt pool
    assert len(pool) == 4 * 80
    assert np.array_equal(np.bincount(pool.classes), np.full(4, 80))
    assert np.all((pool.lengths > 0) & (pool.lengths <= speech.CLIP_SAMPLES))
    assert np.isfinite(pool.waves).all()
    for c, own in enumerate(phrases):
        spoken = [pool.phrases[i] for i in pool.clips_of(c)]
        assert set(spoken) == set(own)  # every phrasing is used, only its own class's
    for i in range(0, len(pool), 37):  # silence after the voiced span, RMS normalized
        assert not pool.waves[i, pool.lengths[i] :].any()
        rms = np.sqrt(pool.power[i])
        assert abs(rms - 0.1) < 0.01


def test_stratified_subset_keeps_class_shares() -> None:
    labels = np.repeat(np.arange(3), [500, 300, 200])
    rng = np.random.default_rng(0)
    idx = avt.stratified_subset(labels, 101, rng)
    assert len(set(idx.tolist())) == 101
    counts = np.bincount(labels[idx], minlength=3)
    assert np.all(np.abs(counts - 101 * np.array([0.5, 0.3, 0.2])) < 1)


def test_corrupt_cache_is_rebuilt(avt_data) -> None:
    train, _, path = avt_data
    path.write_bytes(b"not a zip file")
    again, _ = avt.load_fmnist_avt(n_train=N_TRAIN, n_test=N_TEST, seed=SEED)
    assert np.array_equal(again.features["audio"], train.features["audio"])


# --------------------------------------------------------------------------- synthetic
def test_synthetic_shapes_and_learnable_signal() -> None:
    train = make_synthetic(n=400, num_classes=4, seed=0, noise=0.5)
    test = make_synthetic(n=400, num_classes=4, seed=1, noise=0.5)
    assert train.modalities == ("image", "audio", "text", "tabular")
    assert np.array_equal(np.bincount(train.labels), np.full(4, 100))
    for m in train.modalities:
        assert train.features[m].shape == (400, *SYNTHETIC_SHAPES[m])
        assert train.features[m].dtype == np.float32
        acc = nearest_centroid_accuracy(
            train.features[m].reshape(400, -1),
            train.labels,
            test.features[m].reshape(400, -1),
            test.labels,
        )
        assert acc > (0.55 if m == "tabular" else 0.95), (m, acc)
    noisy = make_synthetic(n=400, num_classes=4, seed=1, noise=0.0, modalities=["text", "image"])
    assert noisy.modalities == ("image", "text")
    with pytest.raises(ValueError, match="modalities"):
        make_synthetic(n=4, modalities=("video",))


# --------------------------------------------------------------------------- text
class _NoModel:
    def encode(self, *args: object, **kwargs: object) -> np.ndarray:
        raise AssertionError("the encoder must not run for cached texts")


def test_embed_texts_caches_by_content_hash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    texts = ["a pair of shoes", "a red dress", "a pair of shoes"]
    emb = text.embed_texts(texts, tmp_path)
    assert emb.shape == (3, text.TEXT_DIM) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-4)
    assert np.array_equal(emb[0], emb[2])
    with np.load(tmp_path / "text" / f"{text.TEXT_MODEL}.npz") as z:
        assert sorted(z["keys"].tolist()) == sorted({text.text_key(t) for t in texts})
    # the real MiniLM: related descriptions are closer than unrelated ones
    e = text.embed_texts(["a pair of shoes", "footwear for running", "a silk evening gown"])
    assert e[0] @ e[1] > e[0] @ e[2]
    # a second call is served from the store: with the encoder poisoned it still works
    monkeypatch.setattr(text, "_MODEL", _NoModel())
    again = text.embed_texts(["a red dress"], tmp_path)
    assert np.array_equal(again[0], emb[1])
    with pytest.raises(AssertionError, match="must not run"):
        text.embed_texts(["never seen before"], tmp_path)


# --------------------------------------------------------------------------- fmnist-avt
@pytest.fixture(scope="module")
def avt_data() -> tuple[MultimodalData, MultimodalData, Path]:
    """Built from scratch each session (the speech pool and embeddings stay cached)."""
    cache = default_cache_dir()
    path = avt.avt_cache_path(
        cache,
        n_train=N_TRAIN,
        n_test=N_TEST,
        seed=SEED,
        text_uninformative=0.15,
        audio_snr_db=(0.0, 20.0),
    )
    path.unlink(missing_ok=True)
    train, test = avt.load_fmnist_avt(n_train=N_TRAIN, n_test=N_TEST, seed=SEED)
    assert path.exists()
    return train, test, path


def test_avt_shapes_stratification_and_images(avt_data) -> None:
    train, test, _ = avt_data
    for data, n, split in ((train, N_TRAIN, "train"), (test, N_TEST, "test")):
        assert len(data) == n and data.modalities == ("image", "audio", "text")
        assert data.feature_shapes() == {
            "image": (1, 28, 28),
            "audio": speech.AUDIO_SHAPE,
            "text": (text.TEXT_DIM,),
        }
        assert all(data.features[m].dtype == np.float32 for m in data.modalities)
        assert all(np.isfinite(data.features[m]).all() for m in data.modalities)
        assert data.mask.all()
        assert np.array_equal(np.bincount(data.labels, minlength=10), np.full(10, n // 10))
        assert data.ids is not None and len(set(data.ids.tolist())) == n
        raw, labels = fmnist.read_fmnist_raw(split)  # type: ignore[arg-type]
        assert np.array_equal(labels[data.ids], data.labels)
        ref = (raw[data.ids].astype(np.float64) / 255.0 - 0.2860) / 0.3530
        np.testing.assert_allclose(data.features["image"][:, 0], ref, atol=1e-5)


def test_avt_is_deterministic_and_cached(avt_data) -> None:
    train, test, path = avt_data
    again_train, again_test = avt.load_fmnist_avt(n_train=N_TRAIN, n_test=N_TEST, seed=SEED)
    for a, b in ((train, again_train), (test, again_test)):
        assert np.array_equal(a.labels, b.labels)
        for m in a.modalities:
            assert np.array_equal(a.features[m], b.features[m])
    path.unlink()  # rebuilt from scratch: bit-identical to the first build
    rebuilt, _ = avt.load_fmnist_avt(n_train=N_TRAIN, n_test=N_TEST, seed=SEED)
    assert all(np.array_equal(train.features[m], rebuilt.features[m]) for m in train.modalities)
    other, _ = avt.load_fmnist_avt(n_train=N_TRAIN, n_test=N_TEST, seed=SEED + 1)
    assert train.ids is not None and other.ids is not None
    assert not np.array_equal(train.ids, other.ids)


def test_avt_text_carries_the_group_but_not_the_class(avt_data) -> None:
    train, test, _ = avt_data
    group = np.asarray(avt.CLASS_GROUP)
    x_tr, x_te = train.features["text"], test.features["text"]
    by_group = nearest_centroid_accuracy(x_tr, group[train.labels], x_te, group[test.labels])
    by_class = nearest_centroid_accuracy(x_tr, train.labels, x_te, test.labels)
    # groups: right unless the text is generic (15 %); classes: at most 0.5 (5 groups / 10)
    assert by_group > 0.75
    assert by_class < 0.58
    tops = np.isin(train.labels, [0, 2, 4, 6])
    tops_te = np.isin(test.labels, [0, 2, 4, 6])
    within = nearest_centroid_accuracy(
        x_tr[tops], train.labels[tops], x_te[tops_te], test.labels[tops_te]
    )
    assert within < 0.45  # chance is 0.25


def test_avt_audio_carries_the_attribute_but_not_the_class(avt_data) -> None:
    train, test, _ = avt_data
    attribute = np.asarray(avt.CLASS_ATTRIBUTE)

    def pooled(d: MultimodalData) -> np.ndarray:  # shift-invariant summary per mel band
        a = d.features["audio"][:, 0]  # (N, mels, frames)
        return np.concatenate([a.mean(axis=2), a.std(axis=2), a.max(axis=2)], axis=1)

    lda = LinearDiscriminantAnalysis(solver="lsqr", shrinkage="auto")
    acc = lda.fit(pooled(train), attribute[train.labels]).score(
        pooled(test), attribute[test.labels]
    )
    assert acc > 0.6  # majority attribute is 0.3
    warm, warm_te = np.isin(train.labels, [2, 4, 9]), np.isin(test.labels, [2, 4, 9])
    within = LinearDiscriminantAnalysis(solver="lsqr", shrinkage="auto")
    within.fit(pooled(train)[warm], train.labels[warm])
    assert within.score(pooled(test)[warm_te], test.labels[warm_te]) < 0.5  # chance 1/3


def test_avt_text_pool_and_phrases() -> None:
    texts, groups = avt.text_pool()
    assert len(texts) == len(set(texts))  # distinct strings
    assert np.array_equal(np.bincount(groups[groups >= 0]), np.full(len(avt.TEXT_GROUPS), 200))
    forbidden = ("t-shirt", "pullover", "coat", "shirt", "sandal", "sneaker", "boot")
    assert not any(w in t.lower().split() for t in texts for w in forbidden)
    for cls, attr in enumerate(avt.CLASS_ATTRIBUTE):
        assert avt.AUDIO_ATTRIBUTES[attr] in {"warm", "light", "casual", "carry"}
        assert cls < 10
    pairs = {(avt.CLASS_GROUP[c], avt.CLASS_ATTRIBUTE[c]) for c in range(10)}
    assert len(pairs) == 9  # text x audio pins all but Pullover vs Coat


def test_avt_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="n_train"):
        avt.load_fmnist_avt(n_train=0, n_test=10, seed=0)
    with pytest.raises(ValueError, match="text_uninformative"):
        avt.load_fmnist_avt(n_train=10, n_test=10, seed=0, text_uninformative=1.5)
    with pytest.raises(ValueError, match="audio_snr_db"):
        avt.load_fmnist_avt(n_train=10, n_test=10, seed=0, audio_snr_db=(20.0, 0.0))


def test_resample_equals_scipy_resample_poly_bit_for_bit() -> None:
    """The one audio resampler (speech and manifests) designs scipy's default polyphase
    filter once per rate pair: the output must equal ``resample_poly`` exactly."""
    import math

    from scipy.signal import resample_poly

    from umbra.data.sources.speech import SAMPLE_RATE, resample

    rng = np.random.default_rng(0)
    for sr in (8000, 22050, 44100, 48000):
        wave = rng.normal(size=(3, sr // 4))
        g = math.gcd(sr, SAMPLE_RATE)
        ref = resample_poly(wave, SAMPLE_RATE // g, sr // g, axis=-1)
        assert np.array_equal(resample(wave, sr), ref), sr
    same = rng.normal(size=100)
    assert resample(same, SAMPLE_RATE) is same
