"""Packed ArrayRecords: a deployed message's arrays travel as one object per record
(`umbra.federation.common.pack_arrays`), unpacked exactly on the other side."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict

from umbra.apps.client import packed_arrays_mod
from umbra.federation.common import (
    PACKED_ARRAYS,
    from_record,
    is_packed,
    pack_arrays,
    pack_message,
    packs_messages,
    to_record,
    unpack_arrays,
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


def test_pack_then_unpack_gives_back_every_array_exactly() -> None:
    arrays = from_record(to_record(_arrays()))  # as a record holds them (0-d made 1-d)
    packed = pack_arrays(to_record(arrays))
    assert list(packed.keys()) == [PACKED_ARRAYS] and is_packed(packed)
    back = from_record(unpack_arrays(packed))
    assert list(back) == list(arrays)
    for name, a in arrays.items():
        assert back[name].dtype == a.dtype and back[name].shape == a.shape
        np.testing.assert_array_equal(back[name], a)
    # one object instead of one per array, and no more bytes than the arrays plus a header
    raw = sum(a.nbytes for a in arrays.values())
    assert raw < packed[PACKED_ARRAYS].numpy().nbytes < raw + 1024


def test_an_unpacked_record_passes_through() -> None:
    record = to_record(_arrays())
    assert unpack_arrays(record) is record and not is_packed(record)


@pytest.mark.parametrize(
    "damage",
    [
        lambda b: b[:-1],  # truncated
        lambda b: b + b"\0",  # bytes left over
        lambda b: (10**6).to_bytes(8, "little") + b[8:],  # header length past the end
        lambda b: b[:8] + b"{" + b[9:],  # header not JSON
    ],
)
def test_a_malformed_packed_record_is_one_line(damage) -> None:  # type: ignore[no-untyped-def]
    buf = pack_arrays(to_record(_arrays()))[PACKED_ARRAYS].numpy().tobytes()
    bad = ArrayRecord({PACKED_ARRAYS: Array(np.frombuffer(damage(buf), dtype=np.uint8))})
    with pytest.raises(ValueError, match=r"^malformed packed arrays: ") as err:
        unpack_arrays(bad)
    assert "\n" not in str(err.value)


def _message(arrays: dict[str, np.ndarray]) -> Message:
    content = RecordDict({"arrays": to_record(arrays), "config": ConfigRecord({"lr": 0.1})})
    return Message(content, dst_node_id=1, message_type="train")


def test_the_client_mod_unpacks_the_request_and_packs_the_reply() -> None:
    arrays = _arrays()
    seen: dict[str, np.ndarray] = {}

    def handler(msg: Message, context: Context) -> Message:
        seen.update(from_record(msg.content.array_records["arrays"]))
        out = {k: v * 2 for k, v in seen.items()}
        return Message(RecordDict({"arrays": to_record(out)}), reply_to=msg)

    ctx = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})
    reply = packed_arrays_mod(pack_message(_message(arrays)), ctx, handler)
    assert set(seen) == set(arrays)  # the handler saw the arrays, not the packed record
    assert is_packed(reply.content.array_records["arrays"])
    assert unpack_message(reply)
    for name, a in arrays.items():
        np.testing.assert_array_equal(
            from_record(reply.content.array_records["arrays"])[name], a * 2
        )
    # a message that was not packed gets a reply that is not packed (the simulation's path)
    plain = packed_arrays_mod(_message(arrays), ctx, handler)
    assert not is_packed(plain.content.array_records["arrays"])


def test_only_the_deployment_grid_packs() -> None:
    from flwr.superlink.grid import HttpGrid
    from flwr.superlink.grid.inmemory_grid import InMemoryGrid

    assert packs_messages(HttpGrid.__new__(HttpGrid))
    assert not packs_messages(InMemoryGrid.__new__(InMemoryGrid))
