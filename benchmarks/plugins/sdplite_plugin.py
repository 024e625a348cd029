"""The benchmark device plugin written with sdplite, the way its README shows: ``build(...).run()``.

Flexible mode, because the plugin computes each allocation itself (see
``common.check_allocatable``): ``list_and_watch`` sends the list once and
waits; health changes go through :meth:`sdplite.DevicePlugin.set_health`,
which may be called from any thread. Restart handling is sdplite's own.

For ``benchmarks/profiling.py`` only: ``--profile FILE`` profiles every
thread with cProfile on CPU time and writes the merged statistics on exit;
"""

from __future__ import annotations

import time

import common

from sdplite import Allocation, Device, DeviceNode, Watch, build


class BenchDevices:
    def __init__(self, ids: list[str]) -> None:
        self.ids = ids
        self.healthy = dict.fromkeys(ids, True)

    def list_and_watch(self, watch: Watch) -> None:
        watch.send([Device(i, healthy=self.healthy[i], numa_nodes=[0]) for i in self.ids])
        watch.wait()

    def allocate(self, device_ids: list[str]) -> Allocation:
        problem = common.check_allocatable(self.healthy, device_ids)
        if problem:
            raise LookupError(problem)
        return Allocation(
            envs={common.ENV_NAME: ",".join(device_ids)},
            nodes=[DeviceNode(common.DEVICE_DIR + i) for i in device_ids],
        )


def main() -> None:
    args = common.parse_args()
    impl = BenchDevices(common.device_ids(args.devices))
    plugin = build(args.resource, args.socket, impl, plugin_dir=args.dir)

    def set_health(index: int, healthy: bool) -> float:
        device_id = impl.ids[index]
        started = time.monotonic()
        impl.healthy[device_id] = healthy
        plugin.set_health(device_id, healthy)
        return started

    if args.profile:
        import profiled

        profiled.install()  # before any thread starts, the control thread included
        common.Control(set_health).start()
        profiled.run(plugin.run, args.profile)
    else:
        common.Control(set_health).start()
        plugin.run()


if __name__ == "__main__":
    main()
