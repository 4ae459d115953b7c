"""The MiniLM text encoder with LoRA adapters: what trains, what travels, what merging gives.

References are independent of the code under test: the pretrained weights read straight
from the bundled safetensors file, ``peft``'s own ``merge_and_unload``, a numpy
``W + (alpha / r) B A``, and MiniLM's tokenizer called directly.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from umbra.data.text_tokens import tokenize_texts
from umbra.federation.common import to_record
from umbra.federation.train import Batchable, TrainSettings, get_arrays, set_arrays, train_local
from umbra.models import LoraSettings, ModelSpec, MultimodalNet, frozen_names, num_parameters
from umbra.models.multimodal import parameter_groups
from umbra.models.text_lora import minilm_dir
from umbra.privacy.dpsgd import DPSGD
from umbra.privacy.randomness import SecureRandom

os.environ.setdefault("HF_HUB_OFFLINE", "1")

L = 8  # token ids per text
RANK, ALPHA = 4, 8
LORA = {"rank": RANK, "alpha": ALPHA, "targets": ["query", "value"]}


def _spec(encoder: str = "minilm-lora", **options: object) -> ModelSpec:
    opts = {"text": {**LORA, **options}} if encoder == "minilm-lora" else {}
    return ModelSpec(input_shapes={"image": (1, 8, 8), "text": (L,)}, num_classes=3, hidden=16,
                     embed_dim=8, dropout=0.0, encoders={"text": encoder},
                     encoder_options=opts)  # fmt: skip


def _batch(n: int = 6) -> Batchable:
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 2000, (n, L), generator=gen)
    ids[:, 0], ids[:, -2:] = 101, 0  # [CLS] ... [PAD] [PAD]
    mask = torch.ones(n, 2, dtype=torch.bool)
    mask[0, 1] = False  # a record without text: all padding
    ids[0] = 0
    return Batchable({"image": torch.randn(n, 1, 8, 8, generator=gen), "text": ids.float()},
                     mask, torch.arange(n) % 3)  # fmt: skip


def _record_bytes(arrays: dict[str, np.ndarray]) -> int:
    return sum(len(a.data) for a in to_record(arrays).values())


def test_only_adapters_train_and_travel() -> None:
    torch.manual_seed(0)
    model = MultimodalNet(_spec())
    text = {f"encoders.text.{n}": p for n, p in model.encoders["text"].named_parameters()}
    trainable = {n for n, p in text.items() if p.requires_grad}
    adapters = {n for n in trainable if ".lora_A." in n or ".lora_B." in n}
    # 6 layers x (query, value) x (A, B); the rest of the text encoder's trainables is its head
    assert len(adapters) == 6 * 2 * 2
    assert trainable - adapters == {"encoders.text.out.1.weight", "encoders.text.out.1.bias"}
    # every pretrained weight is frozen (22.7M of them, the bundled file's count)
    base = load_file(str(minilm_dir() / "model.safetensors"))
    n_base = sum(v.size for k, v in base.items() if not k.startswith("pooler") and "_ids" not in k)
    assert sum(text[n].numel() for n in frozen_names(model)) == n_base
    # what travels is exactly the trainable parameters: no frozen weight in any message
    arrays = get_arrays(model)
    assert set(arrays) == {n for n, p in model.named_parameters() if p.requires_grad}
    assert not set(arrays) & frozen_names(model)
    assert sum(a.size for a in arrays.values()) == num_parameters(model)

    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    settings = TrainSettings(epochs=1, batch_size=3, lr=0.1, modality_dropout=0.0)
    train_local(model, _batch(), settings, seed=0)
    after = dict(model.named_parameters())
    for n in frozen_names(model):  # training never touches the base weights
        assert torch.equal(before[n], after[n].detach()), n
    lora_b = sorted(n for n in adapters if ".lora_B." in n)
    assert all(not torch.equal(before[n], after[n].detach()) for n in lora_b)  # B left zero

    # the fully fine-tuned encoder sends everything: LoRA's message is > 99 % smaller
    full = MultimodalNet(_spec("minilm"))
    assert not frozen_names(full)
    text_only = [n for n in arrays if n.startswith("encoders.text.")]
    full_text = [n for n in get_arrays(full) if n.startswith("encoders.text.")]
    lora_b_text = _record_bytes({n: arrays[n] for n in text_only})
    full_b_text = _record_bytes({n: get_arrays(full)[n] for n in full_text})
    assert lora_b_text < 0.01 * full_b_text


def test_set_arrays_loads_only_what_travels() -> None:
    torch.manual_seed(0)
    a, b = MultimodalNet(_spec()), MultimodalNet(_spec())
    set_arrays(b, get_arrays(a))
    for (n, pa), (_, pb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(pa, pb), n  # same adapters, and the same pretrained base
    frozen = sorted(frozen_names(a))[0]
    with pytest.raises(ValueError, match="unexpected"):  # a base weight is never accepted
        set_arrays(b, {**get_arrays(a), frozen: a.state_dict()[frozen].numpy()})
    arrays = get_arrays(a)
    arrays.pop(next(iter(arrays)))
    with pytest.raises(ValueError, match="missing"):
        set_arrays(b, arrays)


def test_merged_weights_are_base_plus_scaled_adapter_product() -> None:
    torch.manual_seed(0)
    model = MultimodalNet(_spec())
    enc = model.encoders["text"]
    with torch.no_grad():  # B starts at zero: give it values so the product matters
        for n, p in enc.named_parameters():
            if ".lora_B." in n:
                p.normal_(0.0, 0.05)
    batch = _batch()
    inputs, mask, _ = batch.take(torch.arange(len(batch)))
    model.eval()
    with torch.no_grad():
        expected_out = model(inputs, mask)

    base = load_file(str(minilm_dir() / "model.safetensors"))
    arrays = get_arrays(model)
    merged_model = copy.deepcopy(model)
    merged_model.encoders["text"].transformer = enc.transformer.merge_and_unload()
    merged = merged_model.encoders["text"].transformer.state_dict()
    prefix = "encoders.text.transformer.base_model.model."
    scale = ALPHA / RANK
    for layer in range(6):
        for target in ("query", "value"):
            name = f"encoder.layer.{layer}.attention.self.{target}"
            w0 = base[f"{name}.weight"].astype(np.float64)  # (384, 384)
            a = arrays[f"{prefix}{name}.lora_A.default.weight"].astype(np.float64)  # (r, 384)
            b = arrays[f"{prefix}{name}.lora_B.default.weight"].astype(np.float64)  # (384, r)
            reference = w0 + scale * b @ a
            np.testing.assert_allclose(merged[f"{name}.weight"].numpy(), reference, atol=1e-6)
            np.testing.assert_array_equal(merged[f"{name}.bias"].numpy(), base[f"{name}.bias"])
        key = f"encoder.layer.{layer}.attention.self.key.weight"
        np.testing.assert_array_equal(merged[key].numpy(), base[key])  # no adapter there
    merged_model.eval()
    with torch.no_grad():  # the merged plain transformer computes what the adapters did
        torch.testing.assert_close(merged_model(inputs, mask), expected_out, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"rank": 0}, "model.lora_rank must be >= 1"),
        ({"alpha": 0}, "model.lora_alpha"),
        ({"targets": ("query", "qkv")}, "no module 'qkv'"),
        ({"targets": ()}, "at least one module"),
    ],
)
def test_lora_settings_reject_bad_values(kwargs: dict[str, Any], needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        LoraSettings(**kwargs)


def test_lora_targets_accept_every_linear_layer_name() -> None:
    settings = LoraSettings(targets=("key", "attention.output.dense", "intermediate.dense"))
    assert settings.scaling == 16 / 8
    torch.manual_seed(0)
    model = MultimodalNet(_spec(targets=["output.dense"]))  # attention's and the FFN's output
    adapted = {n.split(".lora_")[0] for n in get_arrays(model) if ".lora_A." in n}
    assert len(adapted) == 6 * 2
    assert all(n.endswith("output.dense") for n in adapted)


def test_tokenize_texts_matches_the_tokenizer_and_caches(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    texts = ["a red shirt with long sleeves", "trousers", "a " * 40 + "dress"]
    ids = tokenize_texts(texts, 12, tmp_path)
    tok = AutoTokenizer.from_pretrained(str(minilm_dir()))
    reference = tok(texts, padding="max_length", truncation=True, max_length=12)["input_ids"]
    np.testing.assert_array_equal(ids, np.asarray(reference, dtype=np.float32))
    assert ids.dtype == np.float32 and ids[1, 3:].sum() == 0  # padded with [PAD] = 0
    assert (tmp_path / "text" / "all-MiniLM-L6-v2-ids12.npz").exists()
    np.testing.assert_array_equal(tokenize_texts(texts[::-1], 12, tmp_path), ids[::-1])


@pytest.mark.parametrize(
    ("setting", "needle"),
    [
        ("model.lora_rank=0", "model.lora_rank"),
        ('model.lora_targets=["query", "qkv"]', "model.lora_targets: no module 'qkv'"),
    ],
)
def test_cli_bad_lora_settings_are_one_line_and_exit_2(
    setting: str, needle: str, tmp_path: Path
) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    args = ["run", "--preset", "smoke", "--set", 'model.encoders={text="minilm-lora"}',
            "--set", setting, "--out", str(tmp_path / "r")]  # fmt: skip
    proc = subprocess.run([sys.executable, "-m", "umbra.cli", *args], capture_output=True,
                          text=True, timeout=120, env=env)  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in proc.stderr, lines
    assert not (tmp_path / "r" / "results.json").exists()


def test_dp_sgd_clips_and_noises_only_the_adapters_and_heads() -> None:
    """DP-SGD on the LoRA model (the default per-record backend) against a loop over single
    records: the clipped sum over the trainable weights, nothing for the frozen base."""
    torch.manual_seed(0)
    spec = ModelSpec(input_shapes={"text": (L,)}, num_classes=3, hidden=16, embed_dim=8,
                     dropout=0.0, encoders={"text": "minilm-lora"},
                     encoder_options={"text": LORA})  # fmt: skip
    model = MultimodalNet(spec)
    for module in model.modules():  # MiniLM's own dropout off: the loop must see the same net
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    with torch.no_grad():
        for n, p in model.named_parameters():
            if ".lora_B." in n:
                p.normal_(0.0, 0.05)  # B = 0 would leave A without gradient
    twin = copy.deepcopy(model)
    groups = parameter_groups(model)
    clip = {"text": 0.05, "shared": 0.05}  # small: every record is clipped
    x, mask, y = _batch(5).take(torch.arange(1, 5))  # records that hold text
    batch = {"x": {"text": x["text"]}, "mask": mask[:, 1:], "y": y}

    def loss(m: torch.nn.Module, b: dict[str, Any]) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(m(b["x"], b["mask"]), b["y"], reduction="none")

    dp = DPSGD(model, groups=groups, clip_norms=clip, noise_multipliers=dict.fromkeys(clip, 1.0),
               sample_rate=0.5, num_samples=8, rng=SecureRandom.for_testing(0))  # fmt: skip
    dp.noise_multipliers = dict.fromkeys(clip, 0.0)  # clipping alone, to compare exactly
    model.train()
    dp.step(loss, batch)
    dp.close()

    params = dict(twin.named_parameters())
    trainable = [n for n, p in params.items() if p.requires_grad]
    ref = {n: torch.zeros_like(params[n]) for n in trainable}
    twin.train()
    for i in range(4):
        twin.zero_grad()
        one = {"x": {"text": batch["x"]["text"][i : i + 1]}, "mask": batch["mask"][i : i + 1],
               "y": batch["y"][i : i + 1]}  # fmt: skip
        loss(twin, one).sum().backward()
        for g, names in groups.items():
            live = [n for n in names if params[n].requires_grad]
            norm = float(torch.sqrt(sum((params[n].grad.double() ** 2).sum() for n in live)))
            for n in live:
                ref[n] += min(1.0, clip[g] / norm) * params[n].grad
    for n, p in model.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(p.grad, ref[n] / (0.5 * 8), rtol=1e-4, atol=1e-7)
        else:
            assert p.grad is None, n  # the frozen base gets no gradient, hence no noise


def test_manifest_texts_become_token_ids(tmp_path: Path) -> None:
    from umbra.data.manifest import load_manifest

    rows = [("top", "a red shirt"), ("bag", ""), ("bag", "a leather bag with a strap")]
    path = tmp_path / "m.csv"
    path.write_text("label,text,tab:x\n" + "".join(f"{y},{t},1.5\n" for y, t in rows))
    md = load_manifest(path, cache_dir=tmp_path, text_tokens=L)
    ids = md.data.features["text"]
    has_text = md.data.mask[:, md.data.modality_index("text")]
    assert ids.shape == (3, L) and has_text.tolist() == [True, False, True]
    expected = tokenize_texts([rows[0][1], rows[2][1]], L, tmp_path)
    np.testing.assert_array_equal(ids[[0, 2]], expected)
    assert not ids[1].any()  # no text: all [PAD], masked out
