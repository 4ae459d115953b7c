"""Packed messages: a deployed message's content (arrays, configs, metrics) travels as one
record (`umbra.federation.common.pack_content`), unpacked exactly on the other side."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict

import umbra.federation.common as common
from umbra.apps.client import packed_arrays_mod
from umbra.federation.common import (
    PACKED,
    from_record,
    is_packed,
    pack_content,
    pack_message,
    packs_messages,
    to_record,
    unpack_content,
    unpack_message,
)


def _arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "image.w": rng.normal(size=(4, 3)).astype(np.float32),
        "head.b": rng.normal(size=(5,)),  # float64
        "count": np.array([7], dtype=np.int64),
        "empty": np.zeros((0, 3), dtype=np.float32),
        "scalar": np.array(2.5, dtype=np.float32),
        "c.tr": np.asfortranarray(rng.normal(size=(3, 2)).astype(np.float32)),
    }


def _content(arrays: dict[str, np.ndarray]) -> RecordDict:
    return RecordDict({
        "arrays": to_record(arrays),
        "config": ConfigRecord({"lr": 0.1, "stage": "train", "key": b"\x00\x01", "ids": [1, 2]}),
        "metrics": MetricRecord({"num-examples": 12, "loss": 0.5}),
    })  # fmt: skip


def _assert_same(back: RecordDict, arrays: dict[str, np.ndarray]) -> None:
    got = from_record(back.array_records["arrays"])
    assert list(got) == list(arrays)
    for name, a in arrays.items():
        assert got[name].dtype == a.dtype and got[name].shape == a.shape
        np.testing.assert_array_equal(got[name], a)
    assert dict(back.config_records["config"]) == {
        "lr": 0.1, "stage": "train", "key": b"\x00\x01", "ids": [1, 2]}  # fmt: skip
    assert dict(back.metric_records["metrics"]) == {"num-examples": 12, "loss": 0.5}


@pytest.mark.parametrize("inline", [True, False])
def test_pack_then_unpack_gives_back_every_record_exactly(
    inline: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not inline:  # content over the inline limit travels as one Array
        monkeypatch.setattr(common, "INLINE_CONTENT_BYTES", 16)
    arrays = from_record(to_record(_arrays()))  # as a record holds them (0-d made 1-d)
    packed = pack_content(_content(arrays))
    assert is_packed(packed) and list(packed.keys()) == [PACKED]
    record = packed[PACKED]
    assert isinstance(record, ConfigRecord if inline else ArrayRecord)
    _assert_same(unpack_content(packed), arrays)
    # one record instead of three records, six arrays and their chunks, and few bytes more
    raw = sum(a.nbytes for a in arrays.values())
    size = len(record[PACKED]) if inline else record[PACKED].numpy().nbytes
    assert raw < size < raw + 2048


def test_content_that_is_not_packed_passes_through() -> None:
    content = _content(_arrays())
    assert unpack_content(content) is content and not is_packed(content)


@pytest.mark.parametrize(
    "bad",
    [
        ConfigRecord({PACKED: b"\xff\xff\xff"}),  # not a RecordDict protobuf
        ConfigRecord({PACKED: "text"}),  # not bytes
        ArrayRecord({PACKED: Array(np.frombuffer(b"\x0a\xff", dtype=np.uint8))}),  # truncated
        MetricRecord({PACKED: 1}),  # a record that cannot hold packed content
    ],
)
def test_malformed_packed_content_is_one_line(bad) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match=r"^malformed packed message: ") as err:
        unpack_content(RecordDict({PACKED: bad}))
    assert "\n" not in str(err.value)


def _message(arrays: dict[str, np.ndarray]) -> Message:
    return Message(_content(arrays), dst_node_id=1, message_type="train")


def test_the_client_mod_unpacks_the_request_and_packs_the_reply() -> None:
    arrays = _arrays()
    seen: dict[str, np.ndarray] = {}

    def handler(msg: Message, context: Context) -> Message:
        assert dict(msg.content.config_records["config"])["lr"] == 0.1
        seen.update(from_record(msg.content.array_records["arrays"]))
        out = {k: v * 2 for k, v in seen.items()}
        return Message(RecordDict({"arrays": to_record(out)}), reply_to=msg)

    ctx = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})
    reply = packed_arrays_mod(pack_message(_message(arrays)), ctx, handler)
    assert set(seen) == set(arrays)  # the handler saw the records, not the packed one
    assert is_packed(reply.content)
    assert unpack_message(reply) and not unpack_message(reply)
    for name, a in arrays.items():
        np.testing.assert_array_equal(
            from_record(reply.content.array_records["arrays"])[name], a * 2
        )
    # a message that was not packed gets a reply that is not packed (the simulation's path)
    plain = packed_arrays_mod(_message(arrays), ctx, handler)
    assert not is_packed(plain.content)


def test_only_the_deployment_grid_packs() -> None:
    from flwr.superlink.grid import HttpGrid
    from flwr.superlink.grid.inmemory_grid import InMemoryGrid

    assert packs_messages(HttpGrid.__new__(HttpGrid))
    assert not packs_messages(InMemoryGrid.__new__(InMemoryGrid))
