"""The manifest loader: round trip of real PNG/JPEG/WAV/text files, validation, statistics."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image
from rich.console import Console

from umbra.data import manifest as mf
from umbra.data.cache import atomic_savez
from umbra.data.dataset import MultimodalData
from umbra.data.manifest import (
    MAX_REPORTED_ROWS,
    ManifestError,
    TabularMoments,
    inspect_manifest,
    load_manifest,
    moments_by_client,
    standardize_tabular,
    summarize_manifest,
    tabular_moments,
)
from umbra.data.manifest import features as mf_features
from umbra.data.manifest import load as mf_load
from umbra.data.sources import speech, text
from umbra.errors import DataError

DIM = text.TEXT_DIM


def fake_embedding(t: str) -> np.ndarray:
    """A deterministic stand-in for MiniLM: a unit vector seeded by the text's hash."""
    seed = int.from_bytes(hashlib.sha256(t.encode()).digest()[:8], "little")
    v = np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)
    return v / np.linalg.norm(v)


@pytest.fixture
def fake_text(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """Replace the sentence encoder; returns the list of calls it received."""
    calls: list[list[str]] = []

    def embed(texts: list[str], cache_dir: Path | None = None) -> np.ndarray:
        calls.append(list(texts))
        return np.stack([fake_embedding(t) for t in texts]) if texts else np.zeros((0, DIM))

    monkeypatch.setattr(text, "embed_texts", embed)
    monkeypatch.setattr(text, "warm_up", lambda texts, cache_dir=None: False)
    return calls


def luma(rgb: tuple[int, int, int]) -> float:
    """ITU-R 601-2 luma, the transform PIL documents for RGB -> L, in [0, 1]."""
    r, g, b = rgb
    return (r * 299 + g * 587 + b * 114) / 1000 / 255


# Each image spec: (file name, mode, size, fill value, expected gray level in [0, 1]).
IMAGES: list[tuple[str, str, tuple[int, int], int | tuple[int, ...], float]] = [
    ("a.png", "L", (28, 28), 200, 200 / 255),
    ("b.png", "RGB", (64, 40), (10, 200, 90), luma((10, 200, 90))),
    ("c.png", "RGBA", (13, 77), (250, 20, 30, 255), luma((250, 20, 30))),
    ("d.jpg", "L", (300, 300), 77, 77 / 255),
    ("e.png", "I;16", (30, 30), 40000, 40000 / 65535),
]


def write_wave(path: Path, wave: np.ndarray, rate: int) -> None:
    sf.write(path, wave, rate, subtype="FLOAT")  # float WAV: the file holds exactly `wave`


def tone(rate: int, seconds: float, hz: float, channels: int = 1) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    w = (0.3 * np.sin(2 * np.pi * hz * t)).astype(np.float32)
    return w if channels == 1 else np.stack([w, 0.5 * w], axis=1)


AUDIO = [("a.wav", 8000, 1), ("b.wav", 16000, 1), ("c.wav", 22050, 2), ("d.wav", 44100, 1)]


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


@pytest.fixture
def media(tmp_path: Path) -> Path:
    """A folder with real PNG/JPEG and WAV files."""
    (tmp_path / "img").mkdir()
    (tmp_path / "wav").mkdir()
    for name, mode, size, fill, _ in IMAGES:
        Image.new(mode, size, fill).save(tmp_path / "img" / name, quality=95)
    for k, (name, rate, ch) in enumerate(AUDIO):
        write_wave(tmp_path / "wav" / name, tone(rate, 0.5 + 0.3 * k, 300 + 200 * k, ch), rate)
    return tmp_path


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A feature cache shared by the tests that do not test caching (the media are equal)."""
    return tmp_path_factory.mktemp("cache")


HEADER = ["id", "client", "label", "image", "audio", "text", "tab:hr", "tab:temp"]


def good_rows() -> list[list[str]]:
    """12 records over 3 clients, with every pattern of missing modalities."""
    rows = []
    for i in range(12):
        img = f"img/{IMAGES[i % len(IMAGES)][0]}" if i % 4 != 1 else ""
        wav = f"wav/{AUDIO[i % len(AUDIO)][0]}" if i % 3 != 2 else ""
        txt = f"record {i} says {'cat' if i % 2 else 'dog'}" if i % 5 != 3 else ""
        tab = [str(60 + i), str(36.5 + 0.1 * i)] if i % 6 != 4 else ["", ""]
        rows.append([f"r{i}", f"org{i % 3}", str(i % 3 + 1), img, wav, txt, *tab])
    return rows


def test_round_trip_csv(media: Path, fake_text: list[list[str]]) -> None:
    rows = good_rows()
    path = write_csv(media / "m.csv", HEADER, rows)
    out = load_manifest(path, cache_dir=media / "cache")
    d = out.data
    assert d.modalities == ("image", "audio", "text", "tabular")
    assert out.label_names == ("1", "2", "3")
    assert out.skipped == 0
    assert out.clients == tuple(r[1] for r in rows)
    assert d.ids is not None and d.ids.tolist() == [r[0] for r in rows]
    assert d.labels.tolist() == [int(r[2]) - 1 for r in rows]
    assert out.tabular_columns == ("tab:hr", "tab:temp")
    assert d.feature_shapes() == {
        "image": (1, 28, 28),
        "audio": speech.AUDIO_SHAPE,
        "text": (DIM,),
        "tabular": (2,),
    }
    cols = {"image": 3, "audio": 4, "text": 5, "tabular": 6}
    expected_mask = np.array([[bool(r[c]) for c in cols.values()] for r in rows])
    np.testing.assert_array_equal(d.mask, expected_mask)
    by_name_img = {f"img/{n}": v for n, _, _, _, v in IMAGES}
    by_name_wav = {f"wav/{n}": (r, ch) for n, r, ch in AUDIO}
    for i, r in enumerate(rows):
        if r[3]:  # constant images: any resize keeps the level (JPEG within 1/255)
            np.testing.assert_allclose(d.features["image"][i], by_name_img[r[3]], atol=1.5 / 255)
        else:
            assert not d.features["image"][i].any()
        if r[4]:  # reference: log_mel of the wave the test generated, channels averaged
            rate, ch = by_name_wav[r[4]]
            k = [n for n, _, _ in AUDIO].index(r[4].split("/")[1])
            wave = tone(rate, 0.5 + 0.3 * k, 300 + 200 * k, ch)
            ref = speech.log_mel(wave if ch == 1 else wave.mean(axis=1), rate)
            np.testing.assert_allclose(d.features["audio"][i], ref, atol=1e-4)
        else:
            assert not d.features["audio"][i].any()
        if r[5]:
            np.testing.assert_allclose(d.features["text"][i], fake_embedding(r[5]), atol=1e-6)
        else:
            assert not d.features["text"][i].any()
        want_tab = [float(r[6]), float(r[7])] if r[6] else [0.0, 0.0]
        np.testing.assert_allclose(d.features["tabular"][i], want_tab, rtol=1e-6)
    # The encoder saw exactly the non-empty texts.
    assert sorted(t for c in fake_text for t in c) == sorted(r[5] for r in rows if r[5])


def test_rgb_image_shape(media: Path, fake_text: list[list[str]]) -> None:
    path = write_csv(media / "m.csv", ["label", "image"], [["x", "img/b.png"], ["y", "img/a.png"]])
    d = load_manifest(path, image_shape=(3, 8, 10), cache_dir=media / "cache").data
    assert d.features["image"].shape == (2, 3, 8, 10)
    np.testing.assert_allclose(
        d.features["image"][0].mean(axis=(1, 2)), np.array([10, 200, 90]) / 255, atol=1e-6
    )
    with pytest.raises(ValueError, match="image_shape"):
        load_manifest(path, image_shape=(2, 8, 8))


def test_parquet_equals_csv(media: Path, fake_text: list[list[str]]) -> None:
    pa = pytest.importorskip("pyarrow", reason="pyarrow is not installed")
    import pyarrow.parquet as pq

    rows = good_rows()
    a = load_manifest(write_csv(media / "m.csv", HEADER, rows), cache_dir=media / "c1")
    cols: dict[str, list[object]] = {h: [r[j] or None for r in rows] for j, h in enumerate(HEADER)}
    for h in ("tab:hr", "tab:temp"):  # typed numeric columns, None = missing
        cols[h] = [None if v is None else float(str(v)) for v in cols[h]]
    cols["label"] = [int(str(v)) for v in cols["label"]]
    pq.write_table(pa.table(cols), media / "m.parquet")
    b = load_manifest(media / "m.parquet", cache_dir=media / "c2")
    assert a.label_names == b.label_names and a.clients == b.clients
    np.testing.assert_array_equal(a.data.mask, b.data.mask)
    np.testing.assert_array_equal(a.data.labels, b.data.labels)
    for m in a.data.modalities:
        np.testing.assert_array_equal(a.data.features[m], b.data.features[m])


def test_cached_load_decodes_nothing(
    media: Path, fake_text: list[list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_csv(media / "m.csv", HEADER, good_rows())
    first = load_manifest(path, cache_dir=media / "cache")
    assert sorted(p.name.split("-")[0] for p in (media / "cache" / "manifest").iterdir()) == [
        "audio",
        "image",
    ]

    def boom(*a: object, **k: object) -> None:
        raise AssertionError("decoded although cached")

    monkeypatch.setattr(mf_features, "decode_image", boom)
    monkeypatch.setattr(mf_features, "decode_audio", boom)
    second = load_manifest(path, cache_dir=media / "cache")
    for m in first.data.modalities:
        np.testing.assert_array_equal(first.data.features[m], second.data.features[m])
    # A changed file (same path, new bytes) is a cache miss: its content hash differs.
    Image.new("L", (28, 28), 3).save(media / "img" / "a.png")
    with pytest.raises(AssertionError, match="decoded although cached"):
        load_manifest(path, cache_dir=media / "cache")


def test_damaged_cache_is_ignored(media: Path, fake_text: list[list[str]]) -> None:
    path = write_csv(media / "m.csv", ["label", "image"], [["x", "img/a.png"]])
    load_manifest(path, cache_dir=media / "cache")
    for f in (media / "cache" / "manifest").iterdir():
        f.write_bytes(b"garbage")
    d = load_manifest(path, cache_dir=media / "cache").data
    np.testing.assert_allclose(d.features["image"], 200 / 255, atol=1e-6)


def test_round_trip_through_training(tmp_path: Path, fake_text: list[list[str]]) -> None:
    """Real files -> manifest -> per-client standardisation -> local training that learns:
    trained on one organisation's records, scored on the other's. The tabular column is
    noise (it must not carry the label), so image, audio and text have to do the work."""
    from umbra.federation.train import Batchable, TrainSettings, evaluate, train_local
    from umbra.models import ModelSpec, MultimodalNet

    rng = np.random.default_rng(1)
    (tmp_path / "f").mkdir()
    rows = []
    for i in range(36):
        c = i % 3
        level = int(60 + 70 * c + rng.integers(-5, 6))
        Image.new("RGB", (20 + i, 30), (level, level, level)).save(tmp_path / "f" / f"{i}.png")
        write_wave(tmp_path / "f" / f"{i}.wav", tone(16000, 0.5, 250 * (c + 1)), 16000)
        rows.append(
            [
                f"org{i % 2}",
                ["small", "medium", "large"][c],
                f"f/{i}.png" if i % 5 else "",
                f"f/{i}.wav" if i % 7 else "",
                f"a {['small', 'medium', 'large'][c]} item" if i % 4 else "",
                f"{rng.normal():.3f}",  # uninformative: no label leak
            ]
        )
    path = write_csv(
        tmp_path / "m.csv", ["client", "label", "image", "audio", "text", "tab:x"], rows
    )
    out = load_manifest(path, cache_dir=tmp_path / "cache")
    parts = [standardize_tabular(out.data.subset(ix)) for ix in out.client_indices().values()]
    for part in parts:  # each client's own statistics: mean 0, std 1 over its present rows
        z = part.features["tabular"][part.mask[:, -1]]
        np.testing.assert_allclose([z.mean(), z.std()], [0.0, 1.0], atol=1e-5)
    data, held_out = Batchable.from_data(parts[0]), Batchable.from_data(parts[1])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model: more threads only add contention
    try:
        torch.manual_seed(0)
        model = MultimodalNet(ModelSpec.from_data(out.data, hidden=32, embed_dim=16))
        before = evaluate(model, data, subsets=[])
        for epoch in range(80):
            train_local(model, data, TrainSettings(batch_size=9, lr=0.1), seed=epoch)
        after = evaluate(model, data, subsets=[])
        unseen = evaluate(model, held_out, subsets=[])
    finally:
        torch.set_num_threads(threads)
    assert float(after["loss"]) < 0.5 * float(before["loss"])  # type: ignore[arg-type]
    assert float(unseen["accuracy"]) >= 0.75  # type: ignore[arg-type]  # chance: 1/3


# --------------------------------------------------------------------------- fast path = reference


def _reference_features(
    root: Path, rows: list[list[str]], image_shape: tuple[int, int, int]
) -> dict[str, list[np.ndarray | None]]:
    """Features computed the straightforward way, one record at a time, no cache."""
    ref: dict[str, list[np.ndarray | None]] = {"image": [], "audio": [], "text": []}
    for _, img, wav, txt in rows:
        ref["image"].append(
            mf.decode_image((root / img).read_bytes(), image_shape) if img else None
        )
        if wav:
            wave, rate = sf.read(root / wav, dtype="float64", always_2d=True)
            ref["audio"].append(speech.log_mel(wave.mean(axis=1), rate))
        else:
            ref["audio"].append(None)
        ref["text"].append(fake_embedding(txt) if txt else None)
    return ref


@pytest.mark.parametrize("image_shape", [(1, 28, 28), (3, 12, 9)])
def test_batched_load_equals_per_record_reference(
    tmp_path: Path,
    fake_text: list[list[str]],
    monkeypatch: pytest.MonkeyPatch,
    image_shape: tuple[int, int, int],
) -> None:
    """Threads, batches that end mid-manifest, de-duplicated files and texts, the cache:
    every feature equals the one-record-at-a-time reference (decode_image, log_mel)."""
    import dataclasses

    rng = np.random.default_rng(7)
    (tmp_path / "f").mkdir()
    rates = (8000, 11025, 16000, 22050, 44100)
    for k in range(9):  # random pixels: resizing and colour conversion must match exactly
        mode, size = [("RGB", (40, 30)), ("L", (17, 64)), ("RGBA", (28, 28))][k % 3]
        arr = rng.integers(0, 256, size=(size[1], size[0], len(mode)), dtype=np.uint8)
        img = Image.fromarray(arr[..., 0] if mode == "L" else arr, mode)
        if k % 4 == 3:
            img.convert("RGB").save(tmp_path / "f" / f"{k}.jpg", quality=90)
        else:
            img.save(tmp_path / "f" / f"{k}.png")
        rate, ch = rates[k % len(rates)], 1 + k % 2
        seconds = [0.3, 1.0, 2.0, 2.7][k % 4]  # shorter and longer than the 2 s window
        wave = 0.2 * rng.standard_normal((int(rate * seconds), ch)).astype(np.float32)
        write_wave(tmp_path / "f" / f"{k}.wav", wave, rate)
    (tmp_path / "f" / "copy.png").write_bytes((tmp_path / "f" / "0.png").read_bytes())
    images = sorted(p.name for p in (tmp_path / "f").iterdir() if p.suffix in (".png", ".jpg"))
    texts = [f"item {i % 11}" + " word" * (i % 13) for i in range(40)]  # repeats, lengths
    rows = [
        [
            str(i % 3),
            f"f/{images[i % len(images)]}" if i % 6 != 1 else "",
            f"f/{i % 9}.wav" if i % 5 != 2 else "",
            texts[i] if i % 7 != 3 else "",
        ]
        for i in range(40)
    ]
    path = write_csv(tmp_path / "m.csv", ["label", "image", "audio", "text"], rows)
    for name in ("image_featurizer", "audio_featurizer"):  # batches of 4: many batches
        make = getattr(mf_load, name)
        monkeypatch.setattr(
            mf_load, name, lambda *a, make=make: dataclasses.replace(make(*a), batch=4)
        )
    ref = _reference_features(tmp_path, rows, image_shape)
    for attempt in ("first", "cached"):
        d = load_manifest(path, image_shape=image_shape, cache_dir=tmp_path / "cache").data
        for m, j in (("image", 0), ("audio", 1), ("text", 2)):
            np.testing.assert_array_equal(d.mask[:, j], [r is not None for r in ref[m]])
            for i, want in enumerate(ref[m]):
                got = d.features[m][i]
                if want is None:
                    assert not got.any(), (attempt, m, i)
                else:
                    np.testing.assert_allclose(got, want, atol=1e-5, err_msg=f"{attempt} {m} {i}")
    # the text source got the non-empty texts in row order (it de-duplicates and caches)
    assert fake_text == [[r[3] for r in rows if r[3]]] * 2


class _FakeSentenceModel(torch.nn.Module):
    """A stand-in for SentenceTransformer: ``preprocess`` pads token ids per batch, the
    forward pass mean-pools a fixed embedding over the unpadded tokens, then normalises."""

    def __init__(self) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.table = torch.nn.Parameter(torch.randn(128, DIM, generator=gen))
        self.batches: list[int] = []

    @staticmethod
    def ids(t: str) -> list[int]:
        return [1 + ord(ch) % 127 for ch in t] or [0]

    def preprocess(self, texts: list[str]) -> dict[str, torch.Tensor]:
        self.batches.append(len(texts))
        width = max(len(self.ids(t)) for t in texts)
        ids = torch.zeros(len(texts), width, dtype=torch.long)
        mask = torch.zeros(len(texts), width)
        for i, t in enumerate(texts):
            ids[i, : len(self.ids(t))] = torch.tensor(self.ids(t))
            mask[i, : len(self.ids(t))] = 1
        return {"input_ids": ids, "attention_mask": mask}

    def forward(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        assert torch.get_num_threads() == 1 and not torch.is_grad_enabled()
        emb = self.table[features["input_ids"]] * features["attention_mask"][..., None]
        pooled = emb.sum(1) / features["attention_mask"].sum(1, keepdim=True)
        return {"sentence_embedding": torch.nn.functional.normalize(pooled, dim=1)}

    def one(self, t: str) -> np.ndarray:
        with torch.no_grad():
            pooled = self.table[torch.tensor(self.ids(t))].mean(0)
            return torch.nn.functional.normalize(pooled, dim=0).numpy()


def test_parallel_text_encoding_keeps_order(monkeypatch: pytest.MonkeyPatch) -> None:
    """Length-sorted batches in worker threads: each embedding lands on its own text."""
    model = _FakeSentenceModel()
    rng = np.random.default_rng(3)
    texts = ["".join(rng.choice(list("abcdefgh "), size=int(n))) for n in rng.integers(0, 40, 50)]
    texts = list(dict.fromkeys(texts))
    threads = torch.get_num_threads()
    monkeypatch.setattr(text, "_cpus", lambda: 2)
    out = text._encode(model, texts, batch_size=7)
    assert torch.get_num_threads() == threads  # restored
    assert model.batches == [7] * (len(texts) // 7) + [len(texts) % 7] * bool(len(texts) % 7)
    want = np.stack([model.one(t) for t in texts])
    np.testing.assert_allclose(out, want, atol=1e-6)


def test_text_warm_up_only_when_a_text_is_new(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loads: list[int] = []
    monkeypatch.setattr(text, "_MODEL", None)
    monkeypatch.setattr(text, "_WARM_UP", None)
    monkeypatch.setattr(text, "_model", lambda: loads.append(1))
    store = tmp_path / "text" / f"{text.TEXT_MODEL}.npz"
    atomic_savez(store, keys=np.array([text.text_key("old")]), emb=np.zeros((1, DIM)))
    assert not text.warm_up(["old", "old"], tmp_path)  # all embedded: no model needed
    assert text.warm_up(["old", "new"], tmp_path)
    assert text._WARM_UP is not None
    text._WARM_UP.join(timeout=30)
    assert loads == [1]


def test_manifest_warms_up_encoder_only_for_valid_text_rows(
    media: Path, fake_text: list[list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    warmed: list[list[str]] = []
    monkeypatch.setattr(text, "warm_up", lambda texts, cache_dir=None: warmed.append(texts))
    rows = good_rows()
    load_manifest(write_csv(media / "m.csv", HEADER, rows), cache_dir=media / "cache")
    assert warmed == [[r[5] for r in rows if r[5]]]
    rows[0][2] = ""  # an empty label: the load fails, the encoder is not needed
    with pytest.raises(ManifestError):
        load_manifest(write_csv(media / "m.csv", HEADER, rows), cache_dir=media / "cache")
    assert len(warmed) == 1
    load_manifest(media / "m.csv", cache_dir=media / "cache", on_bad_rows="skip")
    assert len(warmed) == 2


# --------------------------------------------------------------------------- validation

GARBAGE = b"this is not a picture nor a sound"


def _bad_media(root: Path) -> None:
    (root / "img" / "junk.png").write_bytes(GARBAGE)
    (root / "wav" / "junk.wav").write_bytes(GARBAGE)
    sf.write(root / "wav" / "flac.wav", tone(8000, 0.2, 300), 8000, format="FLAC")
    sf.write(root / "wav" / "empty.wav", np.zeros(0, dtype=np.float32), 8000)
    Image.new("L", (4, 4)).save(root / "img" / "gif.png", format="GIF")
    (root.parent / "outside.png").write_bytes((root / "img" / "a.png").read_bytes())
    os.symlink(root.parent / "outside.png", root / "img" / "link.png")


# (column to edit, new value, column named in the report, words of the reason)
ROW_CASES: list[tuple[str, str, str, str]] = [
    ("image", "img/nope.png", "image", "file not found"),
    ("image", "img", "image", "not a regular file"),
    ("image", "img/junk.png", "image", "not an image file"),
    ("image", "img/gif.png", "image", "not a PNG or JPEG"),
    ("image", "../outside.png", "image", "escapes the manifest's folder"),
    ("image", "img/link.png", "image", "escapes the manifest's folder"),
    ("audio", "wav/junk.wav", "audio", "not a readable WAV file"),
    ("audio", "wav/flac.wav", "audio", "wrong audio format: FLAC"),
    ("audio", "wav/empty.wav", "audio", "no samples"),
    ("tab:hr", "fast", "tab:hr", "not a number: 'fast'"),
    ("tab:hr", "nan", "tab:hr", "not a finite number"),
    ("tab:temp", "inf", "tab:temp", "not a finite number"),
    ("tab:temp", "", "tab:temp", "fill all or none"),
    ("label", "", "label", "empty label"),
    ("id", "r0", "id", "duplicate id 'r0'"),
    ("id", "", "id", "empty id"),
    ("client", "", "client", "empty client"),
]


@pytest.mark.parametrize(("column", "value", "named", "reason"), ROW_CASES)
def test_each_bad_row_class(
    media: Path,
    fake_text: list[list[str]],
    cache: Path,
    column: str,
    value: str,
    named: str,
    reason: str,
) -> None:
    _bad_media(media)
    rows = good_rows()
    rows[5][HEADER.index(column)] = value
    rows[5][HEADER.index("tab:hr")] = rows[5][HEADER.index("tab:hr")] or "70"
    path = write_csv(media / "m.csv", HEADER, rows)
    with pytest.raises(ManifestError) as info:
        load_manifest(path, cache_dir=cache)
    err = info.value
    assert [(b.row, b.column) for b in err.bad_rows] == [(7, named)]  # line 7 = record 6
    assert reason in err.bad_rows[0].reason
    assert reason in str(err) and "row 7" in str(err)
    assert isinstance(err, DataError)
    assert fake_text == []  # the slow text encoder never ran on a bad manifest


def test_absolute_path_outside_refused_and_inside_allowed(
    media: Path, fake_text: list[list[str]], cache: Path
) -> None:
    (media.parent / "outside.png").write_bytes((media / "img" / "a.png").read_bytes())
    rows = [["x", str(media.parent / "outside.png")], ["y", str(media / "img" / "a.png")]]
    with pytest.raises(ManifestError) as info:
        load_manifest(write_csv(media / "m.csv", ["label", "image"], rows))
    assert [b.row for b in info.value.bad_rows] == [2]


def test_unknown_label_text_required_no_modality_unknown_client(
    media: Path, fake_text: list[list[str]], cache: Path
) -> None:
    rows = good_rows()
    path = write_csv(media / "m.csv", HEADER, rows)
    with pytest.raises(ManifestError) as info:
        load_manifest(path, label_names=["1", "2"], cache_dir=cache)
    want = {(r, "label") for r, row in enumerate(rows, start=2) if row[2] == "3"}
    assert {(b.row, b.column) for b in info.value.bad_rows} == want
    assert all(b.reason == "unknown label '3'" for b in info.value.bad_rows)

    with pytest.raises(ManifestError) as info:
        load_manifest(path, text_required=True, cache_dir=cache)
    want = {(r, "text") for r, row in enumerate(rows, start=2) if not row[5]}
    assert {(b.row, b.column) for b in info.value.bad_rows} == want
    assert "empty text where text is required" in str(info.value)

    rows[0][3:] = ["", "", "", "", ""]
    path = write_csv(media / "m.csv", HEADER, rows)
    with pytest.raises(ManifestError, match="record has no modality") as info:
        load_manifest(path, cache_dir=cache)
    assert [b.row for b in info.value.bad_rows] == [2]

    rows = good_rows()
    path = write_csv(media / "m.csv", HEADER, rows)
    with pytest.raises(ManifestError) as info:
        load_manifest(path, expected_clients=["org0", "org1", "org9"], cache_dir=cache)
    want = {(r, "client") for r, row in enumerate(rows, start=2) if row[1] == "org2"}
    assert {(b.row, b.column) for b in info.value.bad_rows} == want
    assert info.value.problems == ("client 'org9' has no records (no row names it)",)


def test_client_with_only_bad_rows(media: Path, fake_text: list[list[str]], cache: Path) -> None:
    rows = good_rows()
    for r in rows:
        if r[1] == "org1":
            r[6] = "oops"
    path = write_csv(media / "m.csv", HEADER, rows)
    for mode in ("error", "skip"):
        with pytest.raises(ManifestError, match="client 'org1' has no records"):
            load_manifest(path, on_bad_rows=mode, cache_dir=cache)


def test_wrong_field_count(media: Path, fake_text: list[list[str]], cache: Path) -> None:
    path = media / "m.csv"
    path.write_text("label,text\na,hello\nb,hi,extra\n\nc\n")
    with pytest.raises(ManifestError) as info:
        load_manifest(path, cache_dir=cache)
    assert [(b.row, b.reason) for b in info.value.bad_rows if b.column == "*"] == [
        (3, "has 3 fields but the header has 2"),
        (5, "has 1 fields but the header has 2"),
    ]
    assert {b.row for b in info.value.bad_rows} == {3, 5}


FILE_CASES: list[tuple[str, bytes, str]] = [
    ("m.txt", b"label,text\na,b\n", "is not CSV or Parquet"),
    ("m.xlsx", b"PK\x03\x04 binary", "is not CSV or Parquet"),
    ("m.csv", b"\xff\xfe\x00\x01binary", "not a CSV text file"),
    ("m.parquet", b"PAR1 but not really", "not a readable Parquet file"),
    ("m.csv", b"text,image\nhello,\n", "lacks the required 'label' column"),
    ("m.csv", b"label,imgae\na,x.png\n", "unknown column(s) 'imgae'"),
    ("m.csv", b"label,id\na,1\n", "has no modality column"),
    ("m.csv", b"label,text\n", "has a header but no records"),
    ("m.csv", b"", "is empty"),
    ("m.csv", b"label,text,text\na,b,c\n", "repeats column(s) 'text'"),
]


@pytest.mark.parametrize(("name", "content", "message"), FILE_CASES)
def test_file_level_errors(
    tmp_path: Path, fake_text: list[list[str]], cache: Path, name: str, content: bytes, message: str
) -> None:
    (tmp_path / name).write_bytes(content)
    with pytest.raises(DataError) as info:
        load_manifest(tmp_path / name, cache_dir=tmp_path / "c")
    assert message in str(info.value)
    assert not isinstance(info.value, ManifestError)


def test_missing_manifest(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_manifest(tmp_path / "nope.csv")
    with pytest.raises(ValueError, match="on_bad_rows"):
        load_manifest(tmp_path / "nope.csv", on_bad_rows="ignore")
    with pytest.raises(ValueError, match="label_names"):
        load_manifest(tmp_path / "nope.csv", label_names=["a", "a"])
    with pytest.raises(ValueError, match="expected_clients"):
        load_manifest(tmp_path / "nope.csv", expected_clients=[""])


def test_all_bad_rows_reported_together_and_skip(
    media: Path, fake_text: list[list[str]], cache: Path
) -> None:
    good = good_rows()
    rows = [r[:] for _ in range(6) for r in good]  # 72 records
    for i, r in enumerate(rows):
        r[0] = f"id{i}"
    one = list(range(0, 72, 3))[:13]  # one problem each: a non-numeric value
    two = [i for i in range(1, 72, 2) if i not in one]  # two each: escaping path, no label
    bad_idx = sorted(one + two)
    for i in one:
        rows[i][6] = "x"
    for i in two:
        rows[i][4] = "wav/../../escape.wav"
        rows[i][2] = ""
    path = write_csv(media / "m.csv", HEADER, rows)
    with pytest.raises(ManifestError) as info:
        load_manifest(path, cache_dir=cache)
    err = info.value
    n_problems = len(one) + 2 * len(two)
    assert len(err.bad_rows) == n_problems
    assert {b.row for b in err.bad_rows} == {i + 2 for i in bad_idx}
    assert [b.row for b in err.bad_rows] == sorted(b.row for b in err.bad_rows)
    msg = str(err)
    assert msg.count("\n  row ") == MAX_REPORTED_ROWS
    assert f"... and {n_problems - MAX_REPORTED_ROWS} more not shown" in msg
    assert f"{len(bad_idx)} bad rows" in msg

    out = load_manifest(path, on_bad_rows="skip", cache_dir=cache)
    assert out.skipped == len(bad_idx)
    keep = [r for i, r in enumerate(rows) if i not in set(bad_idx)]
    assert out.data.ids is not None and out.data.ids.tolist() == [r[0] for r in keep]
    clean = load_manifest(write_csv(media / "clean.csv", HEADER, keep), cache_dir=cache)
    for m in clean.data.modalities:
        np.testing.assert_array_equal(clean.data.features[m], out.data.features[m])
    np.testing.assert_array_equal(clean.data.mask, out.data.mask)


# --------------------------------------------------------------------------- tabular statistics


def _tab_data(x: np.ndarray, present: np.ndarray) -> MultimodalData:
    n = len(x)
    return MultimodalData(
        {"tabular": x.astype(np.float32)},
        present[:, None],
        np.zeros(n, dtype=np.int64),
        ("tabular",),
        ("a",),
    )


def test_per_client_standardization_against_numpy() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal([5.0, -3.0, 100.0], [2.0, 0.5, 10.0], size=(300, 3))
    x[:, 2] = np.where(np.arange(300) < 100, 7.0, x[:, 2])  # constant for client a
    x = x.astype(np.float32).astype(np.float64)  # the values as stored (float32)
    present = rng.random(300) < 0.8
    clients = ["a"] * 100 + ["b"] * 120 + ["c"] * 80
    data = _tab_data(x, present)
    moments = moments_by_client(data, clients)
    for c, ix in mf.client_indices(clients).items():
        part = data.subset(ix)
        z = standardize_tabular(part).features["tabular"]
        p = present[ix]
        ref = x[ix][p]
        std = ref.std(axis=0)
        want = (ref - ref.mean(axis=0)) / np.where(std < 1e-6, 1.0, std)
        np.testing.assert_allclose(z[p], want, atol=1e-4)
        assert not z[~p].any()
        np.testing.assert_allclose(moments[c].mean, ref.mean(axis=0), rtol=1e-9)
    # Moments add up to the pooled moments: what secure aggregation would sum.
    total = sum(moments.values(), start=TabularMoments(0.0, np.zeros(3), np.zeros(3)))
    summed = TabularMoments.from_vector(np.sum([m.to_vector() for m in moments.values()], axis=0))
    pooled = tabular_moments(x, present)
    for agg in (total, summed):
        assert agg.count == present.sum()
        np.testing.assert_allclose(agg.mean, x[present].mean(axis=0), rtol=1e-9)
        np.testing.assert_allclose(agg.std, x[present].std(axis=0), rtol=1e-7)
        np.testing.assert_allclose(agg.to_vector(), pooled.to_vector(), rtol=1e-12)
    z = standardize_tabular(data, total).features["tabular"]
    np.testing.assert_allclose(
        z[present], (x[present] - x[present].mean(0)) / x[present].std(0), atol=1e-4
    )
    with pytest.raises(ValueError, match="min_std"):
        standardize_tabular(data, min_std=0.0)
    with pytest.raises(ValueError, match="odd length"):
        TabularMoments.from_vector(np.zeros(4))


# --------------------------------------------------------------------------- inspect


def test_inspect_counts(media: Path) -> None:
    rows = good_rows()
    path = write_csv(media / "m.csv", HEADER, rows)
    s = summarize_manifest(path)
    assert s.records == len(rows)
    assert s.per_client == dict(Counter(r[1] for r in rows))
    assert s.per_label == dict(sorted(Counter(r[2] for r in rows).items()))
    names = ["image", "audio", "text", "tabular"]
    cols: dict[str, Callable[[list[str]], bool]] = {
        "image": lambda r: bool(r[3]),
        "audio": lambda r: bool(r[4]),
        "text": lambda r: bool(r[5]),
        "tabular": lambda r: bool(r[6] or r[7]),
    }
    assert s.per_modality == {m: sum(cols[m](r) for r in rows) for m in names}
    want = Counter(tuple(m for m in names if cols[m](r)) for r in rows)
    assert s.patterns == dict(want)
    console = Console(record=True, width=160)
    console.print(inspect_manifest(path))
    out = console.export_text()
    assert f"{len(rows)} records" in out
    assert "image + audio + text + tabular" in out and "(missing image)" in out


# --------------------------------------------------------------------------- the real encoder


@pytest.mark.slow
def test_real_text_encoder(tmp_path: Path) -> None:
    """One load through the bundled MiniLM: paraphrases land closer than unrelated texts."""
    texts = ["A red leather handbag.", "A handbag made of red leather.", "Running shoes."]
    path = write_csv(tmp_path / "m.csv", ["label", "text"], [["a", t] for t in texts])
    d = load_manifest(path, cache_dir=tmp_path / "cache").data
    e = d.features["text"]
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-4)
    assert e[0] @ e[1] > e[0] @ e[2] + 0.2


@pytest.mark.slow
def test_real_text_encoder_parallel_equals_encode() -> None:
    """The threaded, length-sorted path gives SentenceTransformer.encode's embeddings."""
    sentence = "a red leather handbag with long straps and a golden zip for evening wear"
    texts = [f"{sentence[: 4 + (13 * i) % len(sentence)]} no. {i}" for i in range(20)]
    model = text._model()
    got = text._encode(model, texts, batch_size=8)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny batches: on a busy machine OpenMP threads only spin
    try:
        one_by_one = np.stack([model.encode([t], convert_to_numpy=True)[0] for t in texts])
        together = model.encode(texts, batch_size=128, convert_to_numpy=True)
    finally:
        torch.set_num_threads(threads)
    np.testing.assert_allclose(got, one_by_one, atol=1e-5)
    np.testing.assert_allclose(got, together, atol=1e-5)


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(Path(mf.__file__).parents[3])}
    return subprocess.run([sys.executable, "-m", "umbra.cli", *args], capture_output=True,
                          text=True, timeout=300, cwd=cwd, env=env)  # fmt: skip


def _small_manifest(root: Path) -> tuple[Path, Counter[str]]:
    """24 image + tabular records over 4 organisations, labelled heron/otter."""
    (root / "img").mkdir()
    rows, labels = [], Counter[str]()
    for i in range(24):
        label = "heron" if i % 2 else "otter"
        Image.new("L", (28, 28), 40 + 8 * i).save(root / "img" / f"{i}.png")
        rows.append([f"r{i}", f"org{i % 4}", label, f"img/{i}.png", str(float(i))])
        labels[label] += 1
    return write_csv(root / "m.csv", ["id", "client", "label", "image", "tab:x"], rows), labels


def test_cli_manifest_alone_selects_it(tmp_path: Path) -> None:
    """`--set data.manifest=...` on a preset that names fmnist-avt trains on the manifest."""
    path, labels = _small_manifest(tmp_path)
    out = tmp_path / "run"
    proc = _cli("run", "--preset", "smoke", "--out", str(out), "--set", f"data.manifest={path}",
                "--set", f"data.cache_dir={tmp_path / 'cache'}", "--set", "run.progress=false",
                cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    data = json.loads((out / "results.json").read_text())["data"]
    assert data["source"] == "manifest"
    assert data["manifest"] == str(path)
    assert sorted(data["class_names"]) == ["heron", "otter"]
    assert sorted(data["modalities"]) == ["image", "tabular"]
    assert data["n_train"] + data["n_test"] == sum(labels.values())


@pytest.mark.parametrize("source", ["fmnist-avt", "synthetic"])
def test_cli_manifest_with_another_source_is_refused(tmp_path: Path, source: str) -> None:
    path, _ = _small_manifest(tmp_path)
    proc = _cli("run", "--preset", "smoke", "--out", str(tmp_path / "run"), "--set",
                f"data.source={source}", "--set", f"data.manifest={path}", cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert "data.manifest" in lines[0] and f"data.source = '{source}'" in lines[0]
    assert not (tmp_path / "run" / "results.json").exists()
