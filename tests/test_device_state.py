"""DeviceState: what every ListAndWatch stream receives as the list changes."""

from __future__ import annotations

import pytest
from state_support import watched

from sdplite import Device, DeviceListError
from sdplite.api import deviceplugin_pb2 as pb
from sdplite.devices import (
    MAX_LIST_BYTES,
    encode_device_entry,
    encode_device_list,
    join_device_list,
    split_device_list,
)
from sdplite.service import DeviceState
from sdplite.wire.framing import DEFAULT_MAX_MESSAGE


def test_a_health_change_sends_exactly_the_full_encoding_of_the_new_list() -> None:
    # IDs long enough for multi-byte lengths, and NUMA nodes, so every entry shape is covered.
    devices = [Device("d" * 200, numa_nodes=[0, 1]), Device("e", numa_nodes=[300]), Device("f" * 20)]
    state, watcher = watched(devices)
    assert state.set_health("e", False)
    assert state.set_health("d" * 200, False)
    assert state.set_health("e", True)
    expected = [d.with_health(h) for d, h in zip(devices, [False, True, True])]
    assert watcher.sent[-1] == encode_device_list(expected)
    assert state.devices == tuple(expected)
    assert state.get("d" * 200) == expected[0]
    health = [d.health for d in pb.ListAndWatchResponse.FromString(watcher.sent[-1]).devices]
    assert health == ["Unhealthy", "Healthy", "Healthy"]


def test_an_unchanged_health_sends_nothing() -> None:
    state, watcher = watched([Device("a"), Device("b", healthy=False)])
    assert not state.set_health("a", True)
    assert not state.set_health("b", False)
    assert len(watcher.sent) == 1


def test_a_health_change_after_a_new_list_applies_to_the_new_list() -> None:
    state, watcher = watched([Device("a"), Device("b")])
    state.set_health("a", False)
    state.publish([Device("c"), Device("b"), Device("a")])
    state.set_health("b", False)
    assert watcher.sent[-1] == encode_device_list([Device("c"), Device("b", healthy=False), Device("a")])


def test_a_snapshot_taken_before_a_change_keeps_its_devices() -> None:
    state, _ = watched([Device("a")])
    before = state.snapshot()
    state.set_health("a", False)
    assert before["a"].healthy and not state.snapshot()["a"].healthy


def test_health_must_be_a_bool() -> None:
    state, watcher = watched([Device("a")])
    with pytest.raises(TypeError, match="True or False"):
        state.set_health("a", "Unhealthy")  # type: ignore[arg-type]
    with pytest.raises(KeyError, match="no device 'z'"):
        state.set_health("z", False)
    assert state.devices == (Device("a"),) and len(watcher.sent) == 1


def test_a_change_that_would_overflow_the_kubelet_limit_is_refused_and_the_list_stays() -> None:
    # One device that fits with a byte or two to spare: "Unhealthy" is two bytes longer.
    overhead = len(encode_device_list([Device("x" * 3_000_000)])) - 3_000_000  # same for any 3-4 MB ID
    devices = [Device("x" * (MAX_LIST_BYTES - overhead))]
    assert len(encode_device_list(devices)) == MAX_LIST_BYTES
    state, watcher = watched(devices)
    with pytest.raises(DeviceListError, match="4 MiB limit"):
        state.set_health(devices[0].id, False)
    assert state.devices == tuple(devices) and len(watcher.sent) == 1
    # The state is intact: a list that fits still goes out.
    state.publish([Device("a")])
    assert state.set_health("a", False)
    assert watcher.sent[-1] == encode_device_list([Device("a", healthy=False)])


# -- what the owner said and what the implementation reports ---------------------------


def test_a_repeated_report_keeps_the_health_the_owner_set() -> None:
    """The first list after a restart repeats the last one: set_health must survive it."""
    state = DeviceState("example.com/x")
    state.report([Device("a"), Device("b")])
    state.set_health("b", False)
    assert not state.report([Device("a"), Device("b")])
    assert [d.health for d in state.devices] == ["Healthy", "Unhealthy"]
    assert state.told_health == {"b": False}


def test_a_report_with_another_change_still_keeps_the_owners_health() -> None:
    state = DeviceState("example.com/x")
    state.report([Device("a"), Device("b")])
    state.set_health("b", False)
    assert state.report([Device("a"), Device("b"), Device("c")])
    assert {d.id: d.healthy for d in state.devices} == {"a": True, "b": False, "c": True}


def test_a_report_that_changes_a_devices_health_has_the_last_word() -> None:
    state = DeviceState("example.com/x")
    state.report([Device("a"), Device("b", healthy=False)])
    state.set_health("b", True)  # the owner knows better ...
    state.report([Device("a"), Device("b", healthy=False)])
    assert state.get("b") == Device("b")
    state.report([Device("a"), Device("b")])  # ... until the implementation changes its mind
    state.report([Device("a"), Device("b", healthy=False)])
    assert state.get("b") == Device("b", healthy=False)
    assert state.told_health == {}


def test_a_device_that_leaves_the_list_forgets_its_told_health() -> None:
    state = DeviceState("example.com/x")
    state.report([Device("a"), Device("b")])
    state.set_health("b", False)
    state.report([Device("a")])
    state.report([Device("a"), Device("b")])
    assert state.get("b") == Device("b")


def test_a_published_list_stands_until_the_reported_list_changes() -> None:
    state = DeviceState("example.com/x")
    state.report([Device("a"), Device("b")])
    state.publish([Device("a"), Device("b", healthy=False), Device("c")])
    assert not state.report([Device("a"), Device("b")])  # the same list again: a restart
    assert [(d.id, d.healthy) for d in state.devices] == [("a", True), ("b", False), ("c", True)]
    assert state.report([Device("a"), Device("b"), Device("d")])  # a new list replaces it ...
    assert [(d.id, d.healthy) for d in state.devices] == [("a", True), ("b", False), ("d", True)]


def test_a_bad_report_changes_nothing_the_owner_said() -> None:
    state = DeviceState("example.com/x")
    state.report([Device("a"), Device("b")])
    state.set_health("b", False)
    with pytest.raises(DeviceListError):
        state.report([Device("a"), Device("a")])
    assert state.told_health == {"b": False}
    state.report([Device("a"), Device("b")])
    assert state.get("b") == Device("b", healthy=False)


def test_an_encoded_list_is_its_device_entries_joined() -> None:
    devices = [Device("a" * 200, numa_nodes=[0, 1]), Device("b", healthy=False), Device("c", numa_nodes=[3])]
    encoded = encode_device_list(devices)
    entries = split_device_list(encoded)
    assert entries == [encode_device_entry(d) for d in devices]
    assert join_device_list(entries) == encoded
    entries[1] = encode_device_entry(devices[1].with_health(True))
    changed = [devices[0], devices[1].with_health(True), devices[2]]
    assert join_device_list(entries) == encode_device_list(changed)
    parsed = pb.ListAndWatchResponse.FromString(encoded)  # protobuf's own reading agrees
    assert [Device.from_proto(d) for d in parsed.devices] == devices
    assert [Device.from_proto(pb.Device.FromString(e[2:])) for e in entries[1:]] == changed[1:]
    assert split_device_list(b"") == []
    with pytest.raises(ValueError, match="tag 0x12"):
        split_device_list(b"\x12\x00")


def test_the_list_limit_is_the_message_limit_less_the_prefix() -> None:
    assert MAX_LIST_BYTES + 5 == DEFAULT_MAX_MESSAGE == 4 * 1024 * 1024
    with pytest.raises(DeviceListError, match="4 MiB"):
        join_device_list([b"x" * (MAX_LIST_BYTES + 1)])


def test_a_list_that_changes_only_what_a_container_gets_is_kept_without_a_push() -> None:
    # The kubelet sees the same IDs, health and topology, so nothing is sent; but the
    # default Allocate must hand out the new device nodes and env vars, not the old ones.
    state, watcher = watched([Device("a", envs={"DISK": "sda"})])
    sent = len(watcher.sent)
    state.report([Device("a", envs={"DISK": "sdb"})])
    assert dict(state.get("a").envs) == {"DISK": "sdb"}  # type: ignore[union-attr]
    state.publish([Device("a", envs={"DISK": "sdc"})])
    assert dict(state.get("a").envs) == {"DISK": "sdc"}  # type: ignore[union-attr]
    assert len(watcher.sent) == sent
