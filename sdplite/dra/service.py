"""The kubelet-facing DRA services as transport methods: DRAPlugin v1 and v1beta1, DRAResourceHealth.

Both DRAPlugin versions are served, each at its own method path, by the
same :class:`~.driver.Driver`; their messages differ only in v1's
``share_id``. Both DRAResourceHealth versions stream the same bytes from the
:class:`~.devices.DeviceTable`. Paths: :mod:`sdplite.api.paths`.
"""

from __future__ import annotations

from typing import Any, Callable

from ..api import paths
from ..wire import Method, ResponseStream, ServerContext, server_streaming, unary
from .devices import DeviceTable
from .driver import Driver

__all__ = ["dra_methods", "health_methods", "advertised_versions"]


def advertised_versions(health: bool) -> list[str]:
    """``PluginInfo.supported_versions``: DRAPlugin newest first, then the health services."""
    versions = [paths.DRA_V1_VERSION, paths.DRA_V1BETA1_VERSION]
    if health:
        versions += [paths.DRA_HEALTH_V1_SERVICE, paths.DRA_HEALTH_V1ALPHA1_SERVICE]
    return versions


def dra_methods(driver: Driver) -> list[Method[Any]]:
    """NodePrepareResources and NodeUnprepareResources at both versions' paths."""
    from ..api import dra_v1_pb2, dra_v1beta1_pb2

    methods = []
    for module, prepare_path, unprepare_path in (
        (dra_v1_pb2, paths.DRA_V1_PREPARE, paths.DRA_V1_UNPREPARE),
        (dra_v1beta1_pb2, paths.DRA_V1BETA1_PREPARE, paths.DRA_V1BETA1_UNPREPARE),
    ):
        methods.append(
            unary(prepare_path, _prepare_handler(driver, module), module.NodePrepareResourcesRequest)
        )
        methods.append(
            unary(unprepare_path, _unprepare_handler(driver, module), module.NodeUnprepareResourcesRequest)
        )
    return methods


def _prepare_handler(driver: Driver, module: Any) -> Callable[[Any, ServerContext], Any]:
    with_share_id = "share_id" in module.Device.DESCRIPTOR.fields_by_name

    def prepare(request: Any, context: ServerContext) -> Any:
        results = driver.prepare([(c.namespace, c.uid, c.name) for c in request.claims])
        response = module.NodePrepareResourcesResponse()
        for uid, outcome in results.items():
            entry = response.claims[uid]
            if isinstance(outcome, str):
                entry.error = outcome
                continue
            for device in outcome:
                added = entry.devices.add(
                    request_names=device.requests,
                    pool_name=device.pool,
                    device_name=device.name,
                    cdi_device_ids=device.cdi_ids,
                )
                if with_share_id and device.share_id is not None:
                    added.share_id = device.share_id
        return response

    return prepare


def _unprepare_handler(driver: Driver, module: Any) -> Callable[[Any, ServerContext], Any]:
    def unprepare(request: Any, context: ServerContext) -> Any:
        results = driver.unprepare([(c.namespace, c.uid, c.name) for c in request.claims])
        response = module.NodeUnprepareResourcesResponse()
        for uid, error in results.items():
            response.claims[uid].error = error
        return response

    return unprepare


def health_methods(table: DeviceTable) -> list[Method[Any]]:
    """NodeWatchResources at the v1 and v1alpha1 paths: every device's health, now and on each change."""
    from ..api import drahealth_v1_pb2, drahealth_v1alpha1_pb2

    def watch(request: Any, stream: ResponseStream) -> None:
        stream.context.add_done_callback(lambda: table.unwatch(stream))
        table.watch(stream)

    return [
        server_streaming(
            paths.DRA_HEALTH_V1_WATCH, watch, drahealth_v1_pb2.NodeWatchResourcesRequest, latest_only=True
        ),
        server_streaming(
            paths.DRA_HEALTH_V1ALPHA1_WATCH,
            watch,
            drahealth_v1alpha1_pb2.NodeWatchResourcesRequest,
            latest_only=True,
        ),
    ]
