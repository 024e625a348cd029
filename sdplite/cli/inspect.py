"""``sdplite inspect SOCKET``: talk to any device plugin as the kubelet would.

Shows the plugin's options and its device list (--follow: every update until
Ctrl-C). With --allocate it calls Allocate for the given IDs and prints what
the container would get; --preferred (with --size and --must-include) calls
GetPreferredAllocation and --pre-start PreStartContainer, as the kubelet does.
Works with plugins written with anything, not just sdplite. With
--pod-resources it asks the kubelet's pod-resources API instead: which pod
and container got which devices, and what is allocatable. With
--status it reads a running sdplite process's status file: registration,
streams, and why each unhealthy device is unhealthy.
With --dra it talks to a DRA driver instead (see ``sdplite.cli.inspect_dra``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from ..api import deviceplugin_pb2 as pb
from ..api import paths
from ..podresources import PodResourcesClient
from ..wire import Channel, GrpcError
from .health import DEFAULT_STATUS_FILE


def _devices_text(response: Any) -> str:
    lines = [f"devices: {len(response.devices)}"]
    for device in response.devices:
        numa = ",".join(str(n.ID) for n in device.topology.nodes) or "-"
        lines.append(f"  {device.ID:40} {device.health:10} numa={numa}")
    return "\n".join(lines)


def message_dict(message: Any) -> dict[str, Any]:
    """Every field of ``message``, zeros and falses included, numbers as numbers;
    an ``optional`` field that is not set is None.

    (protobuf's json_format leaves out default values and writes int64 as
    strings, so NUMA node 0 and ``false`` options vanished.)
    """
    body: dict[str, Any] = {}
    for field in message.DESCRIPTOR.fields:
        value = getattr(message, field.name)
        entry = field.message_type
        if entry is not None and entry.GetOptions().map_entry:
            items = dict(value)
            if entry.fields_by_name["value"].message_type is not None:
                items = {k: message_dict(v) for k, v in items.items()}
            body[field.name] = items
        elif _is_repeated(field):
            body[field.name] = [message_dict(v) for v in value] if entry is not None else list(value)
        elif entry is not None:
            body[field.name] = message_dict(value)
        elif getattr(field, "has_presence", False) and not message.HasField(field.name):
            body[field.name] = None  # an `optional` field that is not set (share_id): null, not ""
        else:
            body[field.name] = value
    return body


def _is_repeated(field: Any) -> bool:
    repeated = getattr(field, "is_repeated", None)  # protobuf 6.31+; label is deprecated there
    return bool(repeated) if repeated is not None else field.label == field.LABEL_REPEATED


def _emit(args: argparse.Namespace, title: str, message: Any, text: str) -> None:
    if args.json:
        print(json.dumps({title: message_dict(message)}, sort_keys=True), flush=True)
    else:
        print(text, flush=True)


def run(args: argparse.Namespace) -> int:
    if args.status is not None:
        return _status(args)
    if args.dra:
        from . import inspect_dra  # here: inspecting a device plugin need not load DRA

        return inspect_dra.run(args)
    if args.pod_resources:
        return _pod_resources(args)
    if not args.socket:
        print("sdplite inspect: give the plugin's SOCKET (or --pod-resources)", file=sys.stderr)
        return 2
    try:
        with Channel(args.socket, connect_timeout=args.timeout) as channel:
            options = channel.unary(
                paths.GET_DEVICE_PLUGIN_OPTIONS, pb.Empty(), pb.DevicePluginOptions, timeout=args.timeout
            )
            _emit(
                args,
                "options",
                options,
                f"options: pre_start_required={options.pre_start_required} "
                f"get_preferred_allocation_available={options.get_preferred_allocation_available}",
            )
            stream = channel.server_streaming(paths.LIST_AND_WATCH, pb.Empty(), pb.ListAndWatchResponse)
            try:
                for response in stream:
                    _emit(args, "devices", response, _devices_text(response))
                    if not args.follow:
                        break
            finally:
                stream.cancel()
            _calls(args, channel)
    except GrpcError as exc:
        print(f"sdplite inspect: {args.socket}: {exc.code.name}: {exc.message}", file=sys.stderr)
        return 1
    return 0


def _calls(args: argparse.Namespace, channel: Channel) -> None:
    """--preferred, --allocate and --pre-start, in the kubelet's order."""
    if args.preferred is not None:
        request = pb.PreferredAllocationRequest(
            container_requests=[
                pb.ContainerPreferredAllocationRequest(
                    available_deviceIDs=args.preferred,
                    must_include_deviceIDs=args.must_include or [],
                    allocation_size=args.size,
                )
            ]
        )
        answer = channel.unary(
            paths.GET_PREFERRED_ALLOCATION, request, pb.PreferredAllocationResponse, timeout=args.timeout
        )
        chosen = [",".join(c.deviceIDs) for c in answer.container_responses]
        _emit(
            args,
            "preferred",
            answer,
            f"preferred {args.size} of {','.join(args.preferred)}: {' '.join(chosen)}",
        )
    for ids in args.allocate or ():
        containers = [pb.ContainerAllocateRequest(devices_ids=ids)]
        allocated = channel.unary(
            paths.ALLOCATE,
            pb.AllocateRequest(container_requests=containers),
            pb.AllocateResponse,
            timeout=args.timeout,
        )
        _emit(args, "allocate", allocated, f"allocate {','.join(ids)}:\n{_allocation_text(allocated)}")
    for ids in args.pre_start or ():
        started = channel.unary(
            paths.PRE_START_CONTAINER,
            pb.PreStartContainerRequest(devices_ids=ids),
            pb.PreStartContainerResponse,
            timeout=max(args.timeout, paths.PRE_START_CONTAINER_TIMEOUT),
        )
        _emit(args, "pre_start", started, f"pre-start {','.join(ids)}: done")


def _device_ids(text: str) -> list[str]:
    """``ID[,ID]`` as a list; an empty ID is an error, not a request for the ID ""."""
    ids = text.split(",")
    if not all(ids):
        raise argparse.ArgumentTypeError(f"{text!r} has an empty device ID: give ID[,ID], e.g. gpu-0,gpu-1")
    return ids


def _pod_resources(args: argparse.Namespace) -> int:
    path = args.socket or paths.POD_RESOURCES_SOCKET
    try:
        with PodResourcesClient(path, timeout=args.timeout) as client:
            pods = client.list()
            allocatable = client.get_allocatable_resources()
    except GrpcError as exc:
        print(f"sdplite inspect: {path}: {exc.code.name}: {exc.message}", file=sys.stderr)
        return 1
    lines = [f"pods: {len(pods.pod_resources)}"]
    for pod in pods.pod_resources:
        for container in pod.containers:
            where = f"{pod.namespace}/{pod.name}/{container.name}"
            for devices in container.devices:
                lines.append(f"  {where}: {devices.resource_name} {', '.join(devices.device_ids)}")
            for claim in container.dynamic_resources:
                lines += [
                    f"  {where}: claim {claim.claim_namespace}/{claim.claim_name}: {_claim_text(resource)}"
                    for resource in claim.claim_resources
                ]
    lines.append("allocatable:")
    lines += [f"  {d.resource_name}: {', '.join(d.device_ids)}" for d in allocatable.devices]
    _emit(args, "pod_resources", pods, "\n".join(lines))
    if args.json:
        _emit(args, "allocatable", allocatable, "")
    return 0


def _claim_text(resource: Any) -> str:
    """One DRA device of a claim: driver, pool/device, the share (if shared), CDI names."""
    parts = []
    if resource.driver_name or resource.device_name:
        parts.append(f"{resource.driver_name} {resource.pool_name}/{resource.device_name}")
    if resource.HasField("share_id"):
        parts.append(f"share {resource.share_id}")
    if resource.cdi_devices:
        parts.append("cdi " + ", ".join(c.name for c in resource.cdi_devices))
    return " ".join(parts) or "(nothing)"


def _status(args: argparse.Namespace) -> int:
    """What a running sdplite process says of itself in its status file, reasons included."""
    try:
        with open(args.status, encoding="utf-8") as handle:
            document = json.load(handle)
    except (OSError, ValueError) as exc:
        print(f"sdplite inspect: cannot read status file {args.status}: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(document, sort_keys=True), flush=True)
        return 0
    lines = [f"pid {document.get('pid')}, status written at {document.get('time', 0):.0f}"]
    for plugin in document.get("plugins", []):
        get = plugin.get
        lines.append(
            f"{get('resource')}: registered={get('registered')} streams={get('streams')} "
            f"devices={get('devices')} healthy={get('healthy')}"
        )
        if get("error"):
            lines[-1] += f" error={get('error')}"
        for device in plugin.get("unhealthy", []):
            lines.append(f"  {device.get('id'):40} Unhealthy  {device.get('reason') or '(no reason given)'}")
    print("\n".join(lines), flush=True)
    return 0


def _allocation_text(response: Any) -> str:
    lines = []
    for container in response.container_responses:
        lines += [f"  env     {k}={v}" for k, v in sorted(container.envs.items())]
        lines += [
            f"  device  {d.host_path} -> {d.container_path} ({d.permissions})" for d in container.devices
        ]
        lines += [
            f"  mount   {m.host_path} -> {m.container_path}{' (ro)' if m.read_only else ''}"
            for m in container.mounts
        ]
        lines += [f"  annot.  {k}={v}" for k, v in sorted(container.annotations.items())]
        lines += [f"  cdi     {c.name}" for c in container.cdi_devices]
    return "\n".join(lines) or "  (nothing)"


def add_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "inspect",
        help="query a running device plugin as the kubelet would",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("socket", metavar="SOCKET", nargs="?", help="the plugin's Unix socket path")
    parser.add_argument(
        "--pod-resources",
        action="store_true",
        help="query the kubelet's pod-resources socket instead (SOCKET defaults to "
        f"{paths.POD_RESOURCES_SOCKET}): which pod and container got which devices",
    )
    parser.add_argument(
        "--status",
        nargs="?",
        const=os.environ.get("SDPLITE_STATUS_FILE", DEFAULT_STATUS_FILE),
        metavar="FILE",
        help="read a running sdplite process's status file instead (default: $SDPLITE_STATUS_FILE or "
        f"{DEFAULT_STATUS_FILE}): registration, streams, and each unhealthy device with its reason",
    )
    parser.add_argument(
        "--dra",
        action="store_true",
        help="SOCKET is a DRA driver's registration or service socket: show its info and device health",
    )
    parser.add_argument(
        "--prepare",
        action="append",
        metavar="NS/NAME/UID",
        help="with --dra: call NodePrepareResources for this claim (repeatable)",
    )
    parser.add_argument(
        "--unprepare",
        action="append",
        metavar="NS/NAME/UID",
        help="with --dra: call NodeUnprepareResources for this claim (repeatable)",
    )
    parser.add_argument("--follow", action="store_true", help="keep printing device list (or health) updates")
    parser.add_argument(
        "--allocate",
        action="append",
        type=_device_ids,
        metavar="ID[,ID]",
        help="call Allocate for these device IDs (repeatable)",
    )
    parser.add_argument(
        "--preferred",
        type=_device_ids,
        metavar="ID[,ID]",
        help="call GetPreferredAllocation with these available device IDs (see --size, --must-include)",
    )
    parser.add_argument(
        "--size", type=int, default=1, help="how many devices --preferred asks for (default 1)"
    )
    parser.add_argument(
        "--must-include", type=_device_ids, metavar="ID[,ID]", help="device IDs --preferred must include"
    )
    parser.add_argument(
        "--pre-start",
        action="append",
        type=_device_ids,
        metavar="ID[,ID]",
        help="call PreStartContainer for these device IDs (repeatable)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON lines instead of text")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for connect and calls")
    parser.set_defaults(run=run)
