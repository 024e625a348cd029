"""``sdplite inspect --dra SOCKET``: talk to any DRA driver as the kubelet would.

SOCKET is the driver's registration socket (in plugins_registry: GetInfo
names the service socket, which is then used) or its service socket. Shows
the plugin info and every device's health (--follow: each update until
Ctrl-C); ``--prepare NAMESPACE/NAME/UID`` and ``--unprepare ...`` call
NodePrepareResources / NodeUnprepareResources (DRAPlugin v1) for one claim
each and print the per-claim answer.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from google.protobuf import json_format

from ..api import paths
from ..api import pluginregistration_pb2 as reg
from ..wire import Channel, GrpcError, StatusCode


def _emit(args: argparse.Namespace, title: str, message: Any, text: str) -> None:
    if args.json:
        body = json_format.MessageToDict(message, preserving_proto_field_name=True)
        print(json.dumps({title: body}, sort_keys=True), flush=True)
    else:
        print(text, flush=True)


def _service(args: argparse.Namespace) -> tuple[str, list[str]]:
    """The service socket and the advertised versions (empty if SOCKET is the service itself)."""
    with Channel(args.socket, connect_timeout=args.timeout) as channel:
        try:
            info = channel.unary(paths.GET_INFO, reg.InfoRequest(), reg.PluginInfo, timeout=args.timeout)
        except GrpcError as exc:
            if exc.code == StatusCode.UNIMPLEMENTED:
                return args.socket, []
            raise
    _emit(
        args,
        "info",
        info,
        f"plugin: type={info.type} name={info.name}\n  endpoint: {info.endpoint or '(this socket)'}\n"
        f"  versions: {', '.join(info.supported_versions)}",
    )
    return info.endpoint or args.socket, list(info.supported_versions)


def _claims(values: Any) -> list[tuple[str, str, str]]:
    claims = []
    for value in values or ():
        parts = value.split("/")
        if len(parts) != 3 or not all(parts):
            raise ValueError(f"claim {value!r} must be NAMESPACE/NAME/UID")
        claims.append((parts[0], parts[2], parts[1]))
    return claims


def _health(args: argparse.Namespace, channel: Channel, versions: list[str]) -> None:
    # v1 and v1alpha1 messages are the same bytes: one module decodes both.
    from ..api import drahealth_v1_pb2 as health

    path = paths.DRA_HEALTH_V1_WATCH
    if versions and paths.DRA_HEALTH_V1_SERVICE not in versions:
        if paths.DRA_HEALTH_V1ALPHA1_SERVICE not in versions:
            print("health: not advertised", flush=True)
            return
        path = paths.DRA_HEALTH_V1ALPHA1_WATCH
    stream = channel.server_streaming(
        path, health.NodeWatchResourcesRequest(), health.NodeWatchResourcesResponse
    )
    try:
        for message in stream:
            lines = [f"health: {len(message.devices)} devices"]
            for d in message.devices:
                state = health.HealthStatus.Name(d.health)
                lines.append(f"  {d.device.pool_name}/{d.device.device_name:30} {state:10} {d.message}")
            _emit(args, "health", message, "\n".join(lines))
            if not args.follow:
                break
    finally:
        stream.cancel()


def run(args: argparse.Namespace) -> int:
    from ..api import dra_v1_pb2 as v1

    if not args.socket:
        print("sdplite inspect --dra: give the driver's registration or service SOCKET", file=sys.stderr)
        return 2
    try:
        prepare, unprepare = _claims(args.prepare), _claims(args.unprepare)
    except ValueError as exc:
        print(f"sdplite inspect: {exc}", file=sys.stderr)
        return 2
    try:
        service, versions = _service(args)
        with Channel(service, connect_timeout=args.timeout) as channel:
            _health(args, channel, versions)
            for claims, path, request_type, response_type in (
                (
                    prepare,
                    paths.DRA_V1_PREPARE,
                    v1.NodePrepareResourcesRequest,
                    v1.NodePrepareResourcesResponse,
                ),
                (
                    unprepare,
                    paths.DRA_V1_UNPREPARE,
                    v1.NodeUnprepareResourcesRequest,
                    v1.NodeUnprepareResourcesResponse,
                ),
            ):
                if not claims:
                    continue
                request = request_type(claims=[v1.Claim(namespace=n, uid=u, name=c) for n, u, c in claims])
                answer = channel.unary(path, request, response_type, timeout=args.timeout)
                _emit(args, path.rsplit("/", 1)[1], answer, _claims_text(answer))
    except GrpcError as exc:
        print(f"sdplite inspect: {args.socket}: {exc.code.name}: {exc.message}", file=sys.stderr)
        return 1
    return 0


def _claims_text(answer: Any) -> str:
    lines = []
    for uid, entry in sorted(answer.claims.items()):
        if entry.error:
            lines.append(f"claim {uid}: error: {entry.error}")
            continue
        lines.append(f"claim {uid}: ok")
        for device in getattr(entry, "devices", ()):
            cdi = ", ".join(device.cdi_device_ids) or "-"
            requests = ",".join(device.request_names)
            lines.append(f"  {device.pool_name}/{device.device_name} requests={requests} cdi={cdi}")
    return "\n".join(lines)
