"""Run by test_leaks.py in its own process: grpcio opens and drops connections and streams.

Usage: python grpcio_churn.py SOCKET CONNECTIONS STREAMS
"""

import sys

import grpc
from google.protobuf.wrappers_pb2 import BytesValue, StringValue

path, connections, streams = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
target = f"unix:{path}"
options = [("grpc.use_local_subchannel_pool", 1)]


def echo(channel: grpc.Channel) -> None:
    call = channel.unary_unary(
        "/test.Echo/Echo",
        request_serializer=BytesValue.SerializeToString,
        response_deserializer=BytesValue.FromString,
    )
    assert call(BytesValue(value=b"x"), timeout=10).value == b"x"


for _ in range(connections):
    with grpc.insecure_channel(target, options=options) as channel:
        echo(channel)

with grpc.insecure_channel(target, options=options) as channel:
    watch = channel.unary_stream(
        "/test.Echo/Watch",
        request_serializer=StringValue.SerializeToString,
        response_deserializer=StringValue.FromString,
    )
    for i in range(streams):
        stream = watch(StringValue(value=f"greet:{i}"))
        assert next(stream).value == "hello"
        stream.cancel()
    echo(channel)
print("churn done")
