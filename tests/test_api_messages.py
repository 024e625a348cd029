"""The kubelet's API as sdplite generates it: fields, services, bytes on the wire.

The tables below restate the kubelet's published protos field by field, in the
form ``name = number : type``. Each generated message must match its row
exactly (no field missing, none extra), each service must have exactly the
methods listed with the right request, response and streaming kind, and a few
messages must encode to bytes worked out by hand from the protobuf encoding
rules. The modules must also load on every supported protobuf runtime (4.25 to
7.x), which the last tests check in fresh interpreters.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import ModuleType

import pytest
from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message import Message

from sdplite.api import deviceplugin_pb2 as dp
from sdplite.api import dra_v1_pb2 as dra1
from sdplite.api import dra_v1beta1_pb2 as dra1b1
from sdplite.api import drahealth_v1_pb2 as health1
from sdplite.api import drahealth_v1alpha1_pb2 as health1a1
from sdplite.api import paths
from sdplite.api import pluginregistration_pb2 as reg
from sdplite.api import podresources_pb2 as pr

ROOT = Path(__file__).resolve().parent.parent
API_DIR = ROOT / "sdplite" / "api"
MODULES = {
    "deviceplugin": dp,
    "pluginregistration": reg,
    "podresources": pr,
    "dra_v1": dra1,
    "dra_v1beta1": dra1b1,
    "drahealth_v1": health1,
    "drahealth_v1alpha1": health1a1,
}

# --- what the kubelet defines --------------------------------------------------

DEVICEPLUGIN_V1BETA1 = {
    "DevicePluginOptions": "pre_start_required = 1 : bool; get_preferred_allocation_available = 2 : bool",
    "RegisterRequest": "version = 1 : string; endpoint = 2 : string; resource_name = 3 : string; "
    "options = 4 : DevicePluginOptions",
    "Empty": "",
    "ListAndWatchResponse": "devices = 1 : repeated Device",
    "TopologyInfo": "nodes = 1 : repeated NUMANode",
    "NUMANode": "ID = 1 : int64",
    "Device": "ID = 1 : string; health = 2 : string; topology = 3 : TopologyInfo",
    "PreStartContainerRequest": "devices_ids = 1 : repeated string",
    "PreStartContainerResponse": "",
    "PreferredAllocationRequest": "container_requests = 1 : repeated ContainerPreferredAllocationRequest",
    "ContainerPreferredAllocationRequest": "available_deviceIDs = 1 : repeated string; "
    "must_include_deviceIDs = 2 : repeated string; allocation_size = 3 : int32",
    "PreferredAllocationResponse": "container_responses = 1 : repeated ContainerPreferredAllocationResponse",
    "ContainerPreferredAllocationResponse": "deviceIDs = 1 : repeated string",
    "AllocateRequest": "container_requests = 1 : repeated ContainerAllocateRequest",
    "ContainerAllocateRequest": "devices_ids = 1 : repeated string",
    "CDIDevice": "name = 1 : string",
    "AllocateResponse": "container_responses = 1 : repeated ContainerAllocateResponse",
    "ContainerAllocateResponse": "envs = 1 : map<string,string>; mounts = 2 : repeated Mount; "
    "devices = 3 : repeated DeviceSpec; annotations = 4 : map<string,string>; "
    "cdi_devices = 5 : repeated CDIDevice",
    "Mount": "container_path = 1 : string; host_path = 2 : string; read_only = 3 : bool",
    "DeviceSpec": "container_path = 1 : string; host_path = 2 : string; permissions = 3 : string",
}

PLUGINREGISTRATION = {
    "PluginInfo": "type = 1 : string; name = 2 : string; endpoint = 3 : string; "
    "supported_versions = 4 : repeated string",
    "RegistrationStatus": "plugin_registered = 1 : bool; error = 2 : string",
    "RegistrationStatusResponse": "",
    "InfoRequest": "",
}

PODRESOURCES_V1 = {
    "AllocatableResourcesRequest": "",
    "AllocatableResourcesResponse": "devices = 1 : repeated ContainerDevices; cpu_ids = 2 : repeated int64; "
    "memory = 3 : repeated ContainerMemory",
    "ListPodResourcesRequest": "",
    "ListPodResourcesResponse": "pod_resources = 1 : repeated PodResources",
    # cpu_ids and memory: pod-level resources, sent by newer kubelets only.
    "PodResources": "name = 1 : string; namespace = 2 : string; "
    "containers = 3 : repeated ContainerResources; cpu_ids = 4 : repeated int64; "
    "memory = 5 : repeated ContainerMemory",
    "ContainerResources": "name = 1 : string; devices = 2 : repeated ContainerDevices; "
    "cpu_ids = 3 : repeated int64; memory = 4 : repeated ContainerMemory; "
    "dynamic_resources = 5 : repeated DynamicResource",
    "ContainerMemory": "memory_type = 1 : string; size = 2 : uint64; topology = 3 : TopologyInfo",
    "ContainerDevices": "resource_name = 1 : string; device_ids = 2 : repeated string; "
    "topology = 3 : TopologyInfo",
    "TopologyInfo": "nodes = 1 : repeated NUMANode",
    "NUMANode": "ID = 1 : int64",
    # Field 1 (class_name) was removed by the kubelet and stays reserved.
    "DynamicResource": "claim_name = 2 : string; claim_namespace = 3 : string; "
    "claim_resources = 4 : repeated ClaimResource",
    "ClaimResource": "cdi_devices = 1 : repeated CDIDevice; driver_name = 2 : string; "
    "pool_name = 3 : string; device_name = 4 : string; share_id = 5 : optional string",
    "CDIDevice": "name = 1 : string",
    "GetPodResourcesRequest": "pod_name = 1 : string; pod_namespace = 2 : string",
    "GetPodResourcesResponse": "pod_resources = 1 : PodResources",
}

# DRAPlugin (kubernetes/kubelet pkg/apis/dra/{v1,v1beta1}/api.proto): v1beta1 lacks share_id.
DRA_V1BETA1 = {
    "NodePrepareResourcesRequest": "claims = 1 : repeated Claim",
    "NodePrepareResourcesResponse": "claims = 1 : map<string,NodePrepareResourceResponse>",
    "NodePrepareResourceResponse": "devices = 1 : repeated Device; error = 2 : string",
    "Device": "request_names = 1 : repeated string; pool_name = 2 : string; device_name = 3 : string; "
    "cdi_device_ids = 4 : repeated string",
    "NodeUnprepareResourcesRequest": "claims = 1 : repeated Claim",
    "NodeUnprepareResourcesResponse": "claims = 1 : map<string,NodeUnprepareResourceResponse>",
    "NodeUnprepareResourceResponse": "error = 1 : string",
    "Claim": "namespace = 1 : string; uid = 2 : string; name = 3 : string",
}
DRA_V1 = dict(DRA_V1BETA1, Device=DRA_V1BETA1["Device"] + "; share_id = 5 : optional string")

# DRAResourceHealth (kubernetes/kubelet pkg/apis/dra-health/{v1alpha1,v1}/api.proto): the same layout.
DRA_HEALTH = {
    "NodeWatchResourcesRequest": "",
    "NodeWatchResourcesResponse": "devices = 1 : repeated DeviceHealth",
    "DeviceHealth": "device = 1 : DeviceIdentifier; health = 2 : HealthStatus; "
    "last_updated_time = 3 : int64; health_check_timeout_seconds = 4 : int64; message = 5 : string",
    "DeviceIdentifier": "pool_name = 1 : string; device_name = 2 : string",
}
#: Enums per module: name -> "VALUE = number; ...".
ENUMS = {
    health1: {"HealthStatus": "UNKNOWN = 0; HEALTHY = 1; UNHEALTHY = 2"},
    health1a1: {"HealthStatus": "UNKNOWN = 0; HEALTHY = 1; UNHEALTHY = 2"},
}

# module, proto package, message table
PACKAGES = [
    (dp, "v1beta1", DEVICEPLUGIN_V1BETA1),
    (reg, "pluginregistration", PLUGINREGISTRATION),
    (pr, "v1", PODRESOURCES_V1),
    (dra1, "k8s.io.kubelet.pkg.apis.dra.v1", DRA_V1),
    (dra1b1, "k8s.io.kubelet.pkg.apis.dra.v1beta1", DRA_V1BETA1),
    (health1, "v1", DRA_HEALTH),
    (health1a1, "v1alpha1", DRA_HEALTH),
]

UNARY, SERVER_STREAMING = "unary", "server-streaming"

# full gRPC path, kind, request, response
METHODS = {
    dp: [
        ("/v1beta1.Registration/Register", UNARY, "RegisterRequest", "Empty"),
        ("/v1beta1.DevicePlugin/GetDevicePluginOptions", UNARY, "Empty", "DevicePluginOptions"),
        ("/v1beta1.DevicePlugin/ListAndWatch", SERVER_STREAMING, "Empty", "ListAndWatchResponse"),
        (
            "/v1beta1.DevicePlugin/GetPreferredAllocation",
            UNARY,
            "PreferredAllocationRequest",
            "PreferredAllocationResponse",
        ),
        ("/v1beta1.DevicePlugin/Allocate", UNARY, "AllocateRequest", "AllocateResponse"),
        (
            "/v1beta1.DevicePlugin/PreStartContainer",
            UNARY,
            "PreStartContainerRequest",
            "PreStartContainerResponse",
        ),
    ],
    reg: [
        ("/pluginregistration.Registration/GetInfo", UNARY, "InfoRequest", "PluginInfo"),
        (
            "/pluginregistration.Registration/NotifyRegistrationStatus",
            UNARY,
            "RegistrationStatus",
            "RegistrationStatusResponse",
        ),
    ],
    pr: [
        ("/v1.PodResourcesLister/List", UNARY, "ListPodResourcesRequest", "ListPodResourcesResponse"),
        (
            "/v1.PodResourcesLister/GetAllocatableResources",
            UNARY,
            "AllocatableResourcesRequest",
            "AllocatableResourcesResponse",
        ),
        ("/v1.PodResourcesLister/Get", UNARY, "GetPodResourcesRequest", "GetPodResourcesResponse"),
    ],
    **{
        module: [
            (
                f"/k8s.io.kubelet.pkg.apis.dra.{version}.DRAPlugin/{verb}Resources",
                UNARY,
                f"{verb}ResourcesRequest",
                f"{verb}ResourcesResponse",
            )
            for verb in ("NodePrepare", "NodeUnprepare")
        ]
        for module, version in ((dra1, "v1"), (dra1b1, "v1beta1"))
    },
    **{
        module: [
            (
                f"/{version}.DRAResourceHealth/NodeWatchResources",
                SERVER_STREAMING,
                "NodeWatchResourcesRequest",
                "NodeWatchResourcesResponse",
            )
        ]
        for module, version in ((health1, "v1"), (health1a1, "v1alpha1"))
    },
}

# --- reading the generated descriptors back in the tables' notation -----------

_FD = descriptor_pb2.FieldDescriptorProto
_SCALARS = {
    _FD.TYPE_STRING: "string",
    _FD.TYPE_BYTES: "bytes",
    _FD.TYPE_BOOL: "bool",
    _FD.TYPE_INT32: "int32",
    _FD.TYPE_INT64: "int64",
    _FD.TYPE_UINT32: "uint32",
    _FD.TYPE_UINT64: "uint64",
    _FD.TYPE_SINT32: "sint32",
    _FD.TYPE_SINT64: "sint64",
    _FD.TYPE_FIXED32: "fixed32",
    _FD.TYPE_FIXED64: "fixed64",
    _FD.TYPE_DOUBLE: "double",
    _FD.TYPE_FLOAT: "float",
}


def _file_proto(module: ModuleType) -> descriptor_pb2.FileDescriptorProto:
    # The descriptor as protoc wrote it; works the same on every runtime (the
    # runtime FieldDescriptor lost ``label`` in protobuf 7).
    proto = descriptor_pb2.FileDescriptorProto()
    module.DESCRIPTOR.CopyToProto(proto)
    return proto


def _type_name(field: descriptor_pb2.FieldDescriptorProto, package: str) -> str:
    if field.type in (_FD.TYPE_MESSAGE, _FD.TYPE_ENUM):
        prefix = f".{package}."
        assert field.type_name.startswith(prefix), field.type_name
        return field.type_name[len(prefix) :]
    return _SCALARS[field.type]


def _render(message: descriptor_pb2.DescriptorProto, package: str) -> str:
    """One message as 'name = number : type; ...' in field-number order."""
    maps = {}
    for nested in message.nested_type:
        assert nested.options.map_entry, f"{message.name}.{nested.name}: only map entries may be nested"
        key, value = sorted(nested.field, key=lambda f: f.number)
        maps[f"{message.name}.{nested.name}"] = (
            f"map<{_type_name(key, package)},{_type_name(value, package)}>"
        )
    # proto3 `optional` fields each come with a synthetic oneof: no other oneofs.
    synthetic = {f"_{f.name}" for f in message.field if f.proto3_optional}
    assert not message.enum_type, message.name
    assert {o.name for o in message.oneof_decl} == synthetic, message.name
    parts = []
    for field in sorted(message.field, key=lambda f: f.number):
        kind = _type_name(field, package)
        if kind in maps:
            kind = maps[kind]
        elif field.label == _FD.LABEL_REPEATED:
            kind = "repeated " + kind
        elif field.proto3_optional:
            kind = "optional " + kind
        parts.append(f"{field.name} = {field.number} : {kind}")
    return "; ".join(parts)


def _kind(method: MethodDescriptor) -> str:
    assert not method.client_streaming, f"{method.full_name}: the kubelet API has no client-streaming methods"
    return SERVER_STREAMING if method.server_streaming else UNARY


# --- messages ------------------------------------------------------------------


@pytest.mark.parametrize(("module", "package", "table"), PACKAGES, ids=lambda v: getattr(v, "__name__", ""))
def test_every_message_has_exactly_the_kubelets_fields(
    module: ModuleType, package: str, table: dict[str, str]
) -> None:
    proto = _file_proto(module)
    assert proto.syntax == "proto3"
    assert proto.package == package
    assert not proto.dependency
    enums = {e.name: "; ".join(f"{v.name} = {v.number}" for v in e.value) for e in proto.enum_type}
    assert enums == ENUMS.get(module, {})
    found = {message.name: _render(message, package) for message in proto.message_type}
    assert sorted(found) == sorted(table), "message set differs"
    for name, spec in table.items():
        assert found[name] == spec, f"{package}.{name}"


def test_dynamic_resource_keeps_the_removed_field_number_reserved() -> None:
    (message,) = [m for m in _file_proto(pr).message_type if m.name == "DynamicResource"]
    assert [(r.start, r.end) for r in message.reserved_range] == [(1, 2)]
    assert list(message.reserved_name) == ["class_name"]


@pytest.mark.parametrize(("module", "package", "table"), PACKAGES, ids=lambda v: getattr(v, "__name__", ""))
def test_modules_are_sdplite_api_and_classes_are_registered_by_package(
    module: ModuleType, package: str, table: dict[str, str]
) -> None:
    short = module.__name__.rsplit(".", 1)[-1]
    assert module.__name__ == f"sdplite.api.{short}"
    assert module.DESCRIPTOR.name == f"sdplite/api/{short[: -len('_pb2')]}.proto"
    for name in table:
        cls = getattr(module, name)
        assert cls.__module__ == module.__name__
        assert cls.DESCRIPTOR.full_name == f"{package}.{name}"


def test_same_named_messages_of_two_packages_are_distinct_types() -> None:
    assert dp.NUMANode.DESCRIPTOR.full_name == "v1beta1.NUMANode"
    assert pr.NUMANode.DESCRIPTOR.full_name == "v1.NUMANode"
    assert dp.NUMANode.DESCRIPTOR is not pr.NUMANode.DESCRIPTOR
    assert (
        dp.TopologyInfo(nodes=[dp.NUMANode(ID=1)]).SerializeToString()
        == pr.TopologyInfo(nodes=[pr.NUMANode(ID=1)]).SerializeToString()
    )


def test_go_package_is_set_for_a_go_peer() -> None:
    assert _file_proto(dp).options.go_package == "sdplite.test/v1beta1;v1beta1"
    assert _file_proto(reg).options.go_package.endswith(";pluginregistration")
    assert _file_proto(pr).options.go_package.endswith(";podresources")
    for module in (dra1, dra1b1, health1, health1a1):
        short = module.__name__.rsplit(".", 1)[-1][: -len("_pb2")].replace("_", "")
        assert _file_proto(module).options.go_package == f"sdplite.test/{short};{short}"


# --- services ------------------------------------------------------------------


@pytest.mark.parametrize("module", list(METHODS), ids=lambda m: m.__name__)
def test_services_have_exactly_the_kubelets_methods(module: ModuleType) -> None:
    package = module.DESCRIPTOR.package
    found = []
    for service in module.DESCRIPTOR.services_by_name.values():
        for method in service.methods:
            assert method.input_type.full_name.startswith(package + ".")
            assert method.output_type.full_name.startswith(package + ".")
            found.append(
                (
                    f"/{service.full_name}/{method.name}",
                    _kind(method),
                    method.input_type.name,
                    method.output_type.name,
                )
            )
    assert sorted(found) == sorted(METHODS[module])


def test_paths_module_names_every_method_path() -> None:
    assert {
        paths.REGISTER: "/v1beta1.Registration/Register",
        paths.GET_DEVICE_PLUGIN_OPTIONS: "/v1beta1.DevicePlugin/GetDevicePluginOptions",
        paths.LIST_AND_WATCH: "/v1beta1.DevicePlugin/ListAndWatch",
        paths.GET_PREFERRED_ALLOCATION: "/v1beta1.DevicePlugin/GetPreferredAllocation",
        paths.ALLOCATE: "/v1beta1.DevicePlugin/Allocate",
        paths.PRE_START_CONTAINER: "/v1beta1.DevicePlugin/PreStartContainer",
        paths.GET_INFO: "/pluginregistration.Registration/GetInfo",
        paths.NOTIFY_REGISTRATION_STATUS: "/pluginregistration.Registration/NotifyRegistrationStatus",
        paths.POD_RESOURCES_LIST: "/v1.PodResourcesLister/List",
        paths.POD_RESOURCES_GET_ALLOCATABLE: "/v1.PodResourcesLister/GetAllocatableResources",
        paths.POD_RESOURCES_GET: "/v1.PodResourcesLister/Get",
        paths.DRA_V1_PREPARE: "/k8s.io.kubelet.pkg.apis.dra.v1.DRAPlugin/NodePrepareResources",
        paths.DRA_V1_UNPREPARE: "/k8s.io.kubelet.pkg.apis.dra.v1.DRAPlugin/NodeUnprepareResources",
        paths.DRA_V1BETA1_PREPARE: "/k8s.io.kubelet.pkg.apis.dra.v1beta1.DRAPlugin/NodePrepareResources",
        paths.DRA_V1BETA1_UNPREPARE: "/k8s.io.kubelet.pkg.apis.dra.v1beta1.DRAPlugin/NodeUnprepareResources",
        paths.DRA_HEALTH_V1_WATCH: "/v1.DRAResourceHealth/NodeWatchResources",
        paths.DRA_HEALTH_V1ALPHA1_WATCH: "/v1alpha1.DRAResourceHealth/NodeWatchResources",
    } == {path: path for rows in METHODS.values() for path, *_ in rows}
    services = {
        paths.REGISTRATION_SERVICE: dp,
        paths.DEVICE_PLUGIN_SERVICE: dp,
        paths.PLUGIN_REGISTRATION_SERVICE: reg,
        paths.POD_RESOURCES_SERVICE: pr,
        paths.DRA_V1_SERVICE: dra1,
        paths.DRA_V1BETA1_SERVICE: dra1b1,
        paths.DRA_HEALTH_V1_SERVICE: health1,
        paths.DRA_HEALTH_V1ALPHA1_SERVICE: health1a1,
    }
    for full_name, module in services.items():
        package, name = full_name.rsplit(".", 1)
        assert module.DESCRIPTOR.services_by_name[name].full_name == full_name


def test_paths_constants() -> None:
    assert paths.VERSION == "v1beta1"
    assert paths.SUPPORTED_VERSIONS == ("v1beta1",)
    assert (paths.HEALTHY, paths.UNHEALTHY) == ("Healthy", "Unhealthy")
    assert paths.DEVICE_PLUGIN_PATH == "/var/lib/kubelet/device-plugins/"
    assert paths.KUBELET_SOCKET == "kubelet.sock"
    assert paths.PRE_START_CONTAINER_TIMEOUT == 30.0
    assert paths.PLUGINS_REGISTRY_PATH == "/var/lib/kubelet/plugins_registry/"
    assert paths.DEVICE_PLUGIN_TYPE == "DevicePlugin"
    assert paths.POD_RESOURCES_SOCKET == "/var/lib/kubelet/pod-resources/kubelet.sock"
    # DRAPlugin is advertised by "<version>.DRAPlugin", not its gRPC name (newest first);
    # DRAResourceHealth by its gRPC service name.
    assert (paths.DRA_V1_VERSION, paths.DRA_V1BETA1_VERSION) == ("v1.DRAPlugin", "v1beta1.DRAPlugin")
    assert paths.DRA_PLUGIN_TYPE == "DRAPlugin"
    assert paths.DRA_PLUGINS_PATH == "/var/lib/kubelet/plugins/"


# --- bytes on the wire -----------------------------------------------------------
# A field's key is (number << 3 | wire type): 0 = varint, 2 = length-delimited.
# Proto3 leaves fields at their default value ("" / 0 / false / empty) off the wire.


def test_device_encodes_to_the_bytes_worked_out_by_hand() -> None:
    # ID: field 1, length-delimited -> key 0x0a; health: field 2 -> key 0x12
    assert dp.Device(ID="a", health="Healthy").SerializeToString() == b"\x0a\x01a" + b"\x12\x07Healthy"


def test_device_topology_nests_numa_nodes() -> None:
    # NUMANode{ID:1} = 08 01; TopologyInfo{nodes:[it]} = 0a 02 08 01; Device.topology = field 3 -> 1a
    device = dp.Device(ID="a", topology=dp.TopologyInfo(nodes=[dp.NUMANode(ID=1)]))
    assert device.SerializeToString() == b"\x0a\x01a" + b"\x1a\x04" + b"\x0a\x02\x08\x01"


def test_register_request_bytes() -> None:
    request = dp.RegisterRequest(
        version="v1beta1",
        endpoint="x.sock",
        resource_name="example.com/foo",
        options=dp.DevicePluginOptions(pre_start_required=True, get_preferred_allocation_available=True),
    )
    assert request.SerializeToString() == (
        b"\x0a\x07v1beta1" + b"\x12\x06x.sock" + b"\x1a\x0fexample.com/foo" + b"\x22\x04\x08\x01\x10\x01"
    )


def test_allocate_response_bytes_with_a_map_entry() -> None:
    # a map<string,string> entry is a nested message {key = 1, value = 2}
    response = dp.ContainerAllocateResponse(
        envs={"K": "V"},
        mounts=[dp.Mount(container_path="/c", host_path="/h", read_only=True)],
        cdi_devices=[dp.CDIDevice(name="v.com/c=d")],
    )
    assert response.SerializeToString() == (
        b"\x0a\x06\x0a\x01K\x12\x01V" + b"\x12\x0a\x0a\x02/c\x12\x02/h\x18\x01" + b"\x2a\x0b\x0a\x09v.com/c=d"
    )


def test_preferred_allocation_request_bytes() -> None:
    request = dp.ContainerPreferredAllocationRequest(
        available_deviceIDs=["a", "b"], must_include_deviceIDs=["a"], allocation_size=2
    )
    assert request.SerializeToString() == b"\x0a\x01a\x0a\x01b" + b"\x12\x01a" + b"\x18\x02"
    # int32 (not sint32): a negative value is a ten-byte varint
    negative = dp.ContainerPreferredAllocationRequest(allocation_size=-1).SerializeToString()
    assert negative == b"\x18" + b"\xff" * 9 + b"\x01"


def test_defaults_are_not_sent() -> None:
    assert dp.Empty().SerializeToString() == b""
    assert dp.Device(ID="", health="").SerializeToString() == b""
    assert dp.DevicePluginOptions(pre_start_required=False).SerializeToString() == b""


def test_plugin_info_and_pod_resources_bytes() -> None:
    info = reg.PluginInfo(type="DevicePlugin", name="example.com/foo", supported_versions=["v1beta1"])
    assert (
        info.SerializeToString() == b"\x0a\x0cDevicePlugin" + b"\x12\x0fexample.com/foo" + b"\x22\x07v1beta1"
    )
    get = pr.GetPodResourcesRequest(pod_name="p", pod_namespace="ns")
    assert get.SerializeToString() == b"\x0a\x01p\x12\x02ns"
    # uint64 2**33 as a varint: four 0x80 groups, then 0x20
    memory = pr.ContainerMemory(memory_type="memory", size=2**33)
    assert memory.SerializeToString() == b"\x0a\x06memory" + b"\x10\x80\x80\x80\x80\x20"


def test_dra_claim_and_per_claim_map_bytes() -> None:
    claim = dra1.Claim(namespace="n", uid="u", name="c")
    assert claim.SerializeToString() == b"\x0a\x01n\x12\x01u\x1a\x01c"
    response = dra1.NodePrepareResourcesResponse()
    response.claims["u"].error = "e"
    # field 1, one map entry {key = 1: "u", value = 2: {error = 2: "e"}}
    assert response.SerializeToString() == b"\x0a\x08\x0a\x01u\x12\x03\x12\x01e"
    assert (
        dra1b1.NodePrepareResourcesResponse.FromString(response.SerializeToString()).claims["u"].error == "e"
    )


def test_dra_health_enum_and_identifier_bytes() -> None:
    health = health1.DeviceHealth(
        device=health1.DeviceIdentifier(pool_name="p", device_name="d"), health=health1.UNHEALTHY
    )
    assert health.SerializeToString() == b"\x0a\x06\x0a\x01p\x12\x01d\x10\x02"
    assert health1a1.DeviceHealth.FromString(health.SerializeToString()).health == health1a1.UNHEALTHY


def test_hand_written_bytes_parse() -> None:
    device = dp.Device.FromString(b"\x0a\x01a\x12\x07Healthy\x1a\x04\x0a\x02\x08\x01")
    assert (device.ID, device.health, [n.ID for n in device.topology.nodes]) == ("a", "Healthy", [1])


def test_fields_from_a_newer_peer_are_skipped_not_an_error() -> None:
    # field 15 as a varint (key 0x78) and field 9 as bytes (key 0x4a): unknown to us
    device = dp.Device.FromString(b"\x0a\x01a\x78\x01\x4a\x02zz\x12\x09Unhealthy")
    assert (device.ID, device.health) == ("a", "Unhealthy")


# --- every message round-trips with every field set --------------------------------

_SAMPLE: dict[int, object] = {
    _FD.TYPE_STRING: "x/é",
    _FD.TYPE_BOOL: True,
    _FD.TYPE_INT32: -3,
    _FD.TYPE_INT64: -(2**40),
    _FD.TYPE_UINT64: 2**63 + 1,
    _FD.TYPE_ENUM: 2,
}


def _filled(module: ModuleType, name: str) -> Message:
    """An instance of module.<name> with every field set (repeated ones twice)."""
    message: Message = getattr(module, name)()
    for field in message.DESCRIPTOR.fields:
        value = getattr(message, field.name)
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            entry_value = field.message_type.fields_by_name["value"].message_type
            for key in ("k1", "k2"):
                if entry_value is None:
                    value[key] = "v" + key[1:]
                else:
                    value[key].CopyFrom(_filled(module, entry_value.name))
        elif field.message_type is not None:
            sub = _filled(module, field.message_type.name)
            if hasattr(value, "add"):
                value.add().CopyFrom(sub)
                value.add().CopyFrom(sub)
            else:
                value.CopyFrom(sub)
        elif hasattr(value, "extend"):
            value.extend([_SAMPLE[field.type], _SAMPLE[field.type]])
        else:
            setattr(message, field.name, _SAMPLE[field.type])
    return message


@pytest.mark.parametrize(
    ("module", "name"),
    [(module, name) for module, _, table in PACKAGES for name in table],
    ids=lambda v: getattr(v, "__name__", v),
)
def test_every_message_round_trips(module: ModuleType, name: str) -> None:
    message = _filled(module, name)
    assert len(message.ListFields()) == len(message.DESCRIPTOR.fields)
    data = message.SerializeToString(deterministic=True)
    again = type(message).FromString(data)
    assert again == message
    assert again.SerializeToString(deterministic=True) == data


# --- loading on every runtime ------------------------------------------------------


@pytest.mark.parametrize("module", list(MODULES))
def test_generated_code_has_no_runtime_version_gate(module: str) -> None:
    # Output of newer protoc (35.1, say) calls google.protobuf.runtime_version,
    # which protobuf 4.25 lacks and which refuses runtimes older than the compiler.
    source = (API_DIR / f"{module}_pb2.py").read_text()
    assert "runtime_version" not in source
    assert "Generated by the protocol buffer compiler" in source


_LOADER = textwrap.dedent(
    """
    import importlib.util, sys
    from google.protobuf.internal import api_implementation
    names = sys.argv[1:]
    for name in names:
        path = API_DIR + "/" + name + "_pb2.py"
        spec = importlib.util.spec_from_file_location("sdplite.api." + name + "_pb2", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        for cls_name, cls in sorted(module.DESCRIPTOR.message_types_by_name.items()):
            message = getattr(module, cls_name)()
            assert type(message).FromString(message.SerializeToString()) == message
        if name == "deviceplugin":
            device = module.Device(ID="a", health="Healthy")
            assert device.SerializeToString() == b"\\x0a\\x01a\\x12\\x07Healthy"
    print(api_implementation.Type())
    """
)


@pytest.mark.parametrize("implementation", ["upb", "python"])
def test_modules_load_without_warnings_in_a_fresh_interpreter(implementation: str) -> None:
    # Loads the files themselves (not the sdplite package) with every warning an error.
    env = dict(os.environ, PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION=implementation)
    code = f"API_DIR = {str(API_DIR)!r}\n" + _LOADER
    result = subprocess.run(
        [sys.executable, "-W", "error", "-c", code, *MODULES],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == implementation
