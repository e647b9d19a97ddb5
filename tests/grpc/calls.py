"""A gRPC server and client for baton's tests, with grpcio and no generated code: the
messages are raw bytes.

    calls.py server PORT_FILE   serve on 127.0.0.1 (h2c); write the port to PORT_FILE
    calls.py client ADDRESS     make each kind of call through ADDRESS; print JSON results
    calls.py down ADDRESS       make one call; print the status and details it got
"""

import json
import sys
from concurrent import futures

import grpc

SERVICE = "baton.test.Calls"


def unary(request, context):
    context.send_initial_metadata((("x-initial", "hello"),))
    context.set_trailing_metadata((("x-trailer", "bye"),))
    return b"echo:" + request


def server_stream(request, context):
    for i in range(int(request.decode())):
        yield b"part %d" % i


def client_stream(requests, context):
    return b"%d" % sum(len(r) for r in requests)


def bidi(requests, context):
    for request in requests:
        yield request.upper()


def fail(request, context):
    context.set_trailing_metadata((("x-why", "no such thing"),))
    context.abort(grpc.StatusCode.NOT_FOUND, "thing " + request.decode() + " not found")


def serve(port_file):
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "ServerStream": grpc.unary_stream_rpc_method_handler(server_stream),
        "ClientStream": grpc.stream_unary_rpc_method_handler(client_stream),
        "Bidi": grpc.stream_stream_rpc_method_handler(bidi),
        "Fail": grpc.unary_unary_rpc_method_handler(fail),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    with open(port_file, "w") as f:
        f.write(str(port))
    server.wait_for_termination()


def method(name):
    return "/%s/%s" % (SERVICE, name)


def client(address):
    results = {}
    with grpc.insecure_channel(address) as channel:
        call = channel.unary_unary(method("Unary"))
        reply, info = call.with_call(b"ping", timeout=10)
        results["unary"] = reply.decode()
        results["initial"] = dict(info.initial_metadata()).get("x-initial")
        results["trailer"] = dict(info.trailing_metadata()).get("x-trailer")

        stream = channel.unary_stream(method("ServerStream"))
        results["server_stream"] = [m.decode() for m in stream(b"3", timeout=10)]

        upload = channel.stream_unary(method("ClientStream"))
        results["client_stream"] = upload(iter([b"ab", b"cde", b"f"]), timeout=10).decode()

        both = channel.stream_stream(method("Bidi"))
        results["bidi"] = [m.decode() for m in both(iter([b"x", b"yz"]), timeout=10)]

        failing = channel.unary_unary(method("Fail"))
        try:
            failing(b"42", timeout=10)
            results["fail"] = "no error"
        except grpc.RpcError as err:
            results["fail"] = {
                "code": err.code().name,
                "details": err.details(),
                "why": dict(err.trailing_metadata() or ()).get("x-why"),
            }
    print(json.dumps(results))


def down(address):
    with grpc.insecure_channel(address) as channel:
        try:
            channel.unary_unary(method("Unary"))(b"ping", timeout=10)
            print(json.dumps({"code": "OK"}))
        except grpc.RpcError as err:
            print(json.dumps({"code": err.code().name, "details": err.details()}))


if __name__ == "__main__":
    {"server": serve, "client": client, "down": down}[sys.argv[1]](sys.argv[2])
