"""A SuperNode reading its own manifest: the records it prepares equal the coordinator's
partition of the same rows, the shared schema keeps every node's label indices and model,
and bad input is one line naming the file or key."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from umbra.apps import node_data
from umbra.apps.client import _cached_spec
from umbra.apps.node_data import own_records, prepared_records
from umbra.apps.run_config import join_overrides
from umbra.config import Config, load_config
from umbra.data.dataset import MultimodalData
from umbra.data.manifest import MANIFEST_NAME, DataSchema, load_manifest
from umbra.errors import ConfigError, DataError, UmbraError
from umbra.federation.client_data import load_client_data
from umbra.run.deploy import plan_local, schema_overrides, write_party_manifests
from umbra.run.prepare import model_spec_for, prepare_data

LABELS = ("small", "medium", "large")
HEADER = ["client", "label", "image", "tab:hr", "tab:temp"]


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


@pytest.fixture
def manifest(tmp_path: Path) -> Path:
    """45 records of three organisations: grey images (some missing) and two tab: columns
    (some missing); org2 holds no record of class "large"."""
    root = tmp_path / "data"
    (root / "img").mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(45):
        org = i % 3
        c = (i // 3) % 3 if org != 2 else (i // 3) % 2
        level = int(40 + 80 * c + rng.integers(-10, 10))
        Image.new("L", (20, 24), level).save(root / "img" / f"{i}.png")
        img = f"img/{i}.png" if i % 5 else ""
        tab = (
            [f"{60 + 10 * c + rng.normal():.3f}", f"{rng.normal(37):.3f}"]
            if i % 5 != 2
            else ["", ""]
        )
        rows.append([f"org{org}", LABELS[c], img, *tab])
    return write_csv(root / "m.csv", HEADER, rows)


def manifest_config(manifest: Path, *extra: str) -> tuple[Config, list[str]]:
    """The deployed config of ``manifest`` (schema published as plan_local does) and its
    overrides."""
    base = [f"data.manifest={manifest}", "federation.num_clients=3",
            f"data.cache_dir={manifest.parent.parent / 'cache'}", *extra]  # fmt: skip
    overrides = base + schema_overrides(load_config("smoke", overrides=base))
    return load_config("smoke", overrides=overrides), overrides


def assert_same_records(got: MultimodalData, want: MultimodalData) -> None:
    assert got.modalities == want.modalities and got.class_names == want.class_names
    np.testing.assert_array_equal(got.labels, want.labels)
    np.testing.assert_array_equal(got.mask, want.mask)
    for m in want.modalities:
        np.testing.assert_allclose(got.features[m], want.features[m], rtol=0, atol=1e-6)


@pytest.mark.parametrize("stats", ["per-client", "public", "identity"])
def test_node_records_equal_the_prepared_partition(
    manifest: Path, tmp_path: Path, stats: str
) -> None:
    if stats == "public":
        (manifest.parent / "stats.json").write_text(
            json.dumps({"hr": [70.0, 8.0], "temp": [37.0, 1.0]})
        )
        stats = "stats.json"  # relative to the coordinator's manifest: inlined for nodes
    cfg, overrides = manifest_config(manifest, f"data.tabular_stats={stats}")
    assert cfg.data.labels == ["large", "medium", "small"]
    assert cfg.data.tabular_columns == ["tab:hr", "tab:temp"]
    assert not isinstance(cfg.data.tabular_stats, str) or stats != "stats.json"
    prep = prepare_data(cfg)
    assert prep.source_records is not None
    manifests, test = write_party_manifests(tmp_path / "run", cfg, prep)
    run_config = {"preset": "smoke", "overrides": join_overrides(overrides)}
    for i, path in enumerate(manifests):
        want = prep.train.subset(prep.parts[i]).with_mask(prep.masks[i])
        # the node's folder holds its rows and their images only, paths resolving inside it
        assert len(list((path.parent / "img").iterdir())) == int(want.mask[:, 0].sum())
        assert_same_records(own_records(cfg, path), want)
        spec = _cached_spec(tuple(sorted(run_config.items())),
                            (("manifest", str(path)), ("partition-id", i),
                             ("state-dir", str(tmp_path / "state"))))  # fmt: skip
        assert_same_records(load_client_data(spec.data_dir, 0), want)
        assert spec.model_spec == model_spec_for(cfg, prep.train)
    assert len(load_client_data(str(test), 0)) == len(prep.test)


def test_a_node_lacking_a_class_and_a_modality_keeps_the_shared_schema(
    manifest: Path, tmp_path: Path
) -> None:
    cfg, _ = manifest_config(manifest)
    (tmp_path / "img").mkdir()
    for k in (1, 2):  # the node's own images (paths must stay inside its folder)
        src = manifest.parent / "img" / f"{k}.png"
        (tmp_path / "img" / f"{k}.png").write_bytes(src.read_bytes())
    own = write_csv(tmp_path / "own.csv", ["label", "image"],
                    [["medium", "img/1.png"], ["medium", "img/2.png"], ["small", "img/2.png"]])  # fmt: skip
    data = own_records(cfg, own)
    assert data.class_names == ("large", "medium", "small")
    np.testing.assert_array_equal(data.labels, [1, 1, 2])  # the federation's indices
    assert data.modalities == ("image", "tabular")  # the schema's, for the shared model
    assert data.features["tabular"].shape == (3, 2) and not data.mask[:, 1].any()
    assert data.mask[:, 0].all()
    assert model_spec_for(cfg, data) == model_spec_for(cfg, prepare_data(cfg).train)
    alone = load_manifest(own, cache_dir=tmp_path / "c").data  # the node's own view
    assert alone.class_names == ("medium", "small")  # would have used other indices


def test_a_second_message_reuses_the_prepared_records(
    manifest: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg, _ = manifest_config(manifest)
    first = prepared_records(cfg, manifest, tmp_path / "records")

    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("loaded again")

    monkeypatch.setattr(node_data, "load_manifest", boom)
    assert prepared_records(cfg, manifest, tmp_path / "records") == first
    (manifest.parent / "img" / "1.png").write_bytes(b"changed")  # a media file changed
    with pytest.raises(AssertionError, match="loaded again"):
        prepared_records(cfg, manifest, tmp_path / "records")


def one_line(err: pytest.ExceptionInfo[UmbraError]) -> str:
    text = str(err.value)
    assert "\n" not in text
    return text


def test_bad_node_input_is_one_line_naming_it(manifest: Path, tmp_path: Path) -> None:
    cfg, overrides = manifest_config(manifest)
    records = tmp_path / "records"
    with pytest.raises(DataError) as err:
        prepared_records(cfg, tmp_path / "nowhere.csv", records)
    assert "nowhere.csv" in one_line(err)
    alien = write_csv(tmp_path / "alien.csv", ["label", "image"], [["huge", ""], ["small", ""]])
    with pytest.raises(DataError) as err:
        prepared_records(cfg, alien, records)
    assert "alien.csv" in one_line(err) and "'huge'" in one_line(err)
    wide = write_csv(tmp_path / "wide.csv", ["label", "tab:hr", "tab:temp", "tab:bp"],
                     [["small", "1", "2", "3"]])  # fmt: skip
    with pytest.raises(DataError) as err:
        prepared_records(cfg, wide, records)
    assert "wide.csv" in one_line(err) and "3 tab: column(s)" in one_line(err)
    other = write_csv(tmp_path / "other.csv", ["label", "audio"], [["small", ""]])
    with pytest.raises(DataError) as err:
        prepared_records(cfg, other, records)
    assert "other.csv" in one_line(err) and "'audio'" in one_line(err)
    run = tuple(sorted({"preset": "smoke", "overrides": join_overrides(overrides)}.items()))
    both = (("data-dir", str(tmp_path)), ("manifest", str(manifest)), ("partition-id", 0))
    with pytest.raises(ConfigError) as cerr:
        _cached_spec(run, both)
    assert "both data-dir and manifest" in one_line(cerr)
    plain = tuple(sorted({"preset": "smoke", "overrides": f"data.manifest={manifest}"}.items()))
    with pytest.raises(ConfigError) as cerr:
        _cached_spec(plain, (("manifest", str(manifest)), ("partition-id", 0)))
    assert "data.labels" in one_line(cerr)


def test_unreadable_node_manifest(
    manifest: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg, _ = manifest_config(manifest)
    monkeypatch.setattr(node_data.os, "access", lambda *a: False)  # chmod does not bind root
    with pytest.raises(DataError) as err:
        prepared_records(cfg, manifest, tmp_path / "records")
    assert "not readable" in one_line(err) and "m.csv" in one_line(err)


def test_schema_config_is_checked_and_decides_the_modalities(manifest: Path) -> None:
    base = [f"data.manifest={manifest}"]
    with pytest.raises(ConfigError, match="come together"):
        load_config("smoke", overrides=[*base, 'data.labels=["a"]'])
    with pytest.raises(ConfigError, match="tab:<name>"):
        load_config("smoke", overrides=[*base, 'data.labels=["a"]',
                                        'data.modalities=["tabular"]',
                                        'data.tabular_columns=["hr"]'])  # fmt: skip
    with pytest.raises(ConfigError, match="describes a manifest"):
        load_config("smoke", overrides=['data.labels=["a"]', 'data.modalities=["image"]'])
    # a node's machine lacks the coordinator's manifest: the declared modalities decide
    gone = ["data.manifest=/nowhere/m.csv", 'data.labels=["a"]', 'data.modalities=["image"]']
    here = [*base, 'data.labels=["a"]', 'data.modalities=["image"]']
    assert load_config("smoke", overrides=gone).model == load_config("smoke", overrides=here).model
    schema = DataSchema.of_manifest(manifest)
    assert schema == DataSchema(("large", "medium", "small"), ("image", "tabular"),
                                ("tab:hr", "tab:temp"))  # fmt: skip


def test_plan_local_publishes_the_schema_of_a_manifest_with_clients(
    manifest: Path, tmp_path: Path
) -> None:
    plan = plan_local(preset="smoke", overrides=[f"data.manifest={manifest}"], nodes=3,
                      out=tmp_path / "r", resume=None)  # fmt: skip
    assert plan.cfg.data.labels == ["large", "medium", "small"]
    assert plan.cfg.data.modalities == ["image", "tabular"]
    assert 'data.tabular_columns=["tab:hr", "tab:temp"]' in plan.runner.overrides
    no_clients = write_csv(manifest.parent / "n.csv", ["label", "image"], [["small", ""]])
    plan = plan_local(preset="smoke", overrides=[f"data.manifest={no_clients}"], nodes=1,
                      out=tmp_path / "r", resume=None)  # fmt: skip
    assert plan.cfg.data.labels == []  # the partitioner splits: nodes get prepared folders
    assert (manifest.parent / MANIFEST_NAME).exists() is False


def test_data_schema_prints_what_a_coordinator_publishes(manifest: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from umbra.cli import app

    result = CliRunner().invoke(app, ["data", "schema", str(manifest)])
    assert result.exit_code == 0, result.output
    printed = [
        line.removeprefix("--set '").removesuffix("'") for line in result.output.split("\n") if line
    ]
    cfg = load_config("smoke", overrides=[f"data.manifest={manifest}", *printed])
    assert cfg.data.labels == ["large", "medium", "small"]
    assert cfg.data.tabular_columns == ["tab:hr", "tab:temp"]
    missing = CliRunner().invoke(app, ["data", "schema", str(tmp_path / "nowhere.csv")])
    # an UmbraError: main() prints it as one line and exits 2
    assert isinstance(missing.exception, DataError) and "nowhere.csv" in str(missing.exception)
