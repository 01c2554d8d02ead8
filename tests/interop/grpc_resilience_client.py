#!/usr/bin/env python3
"""A proxyless gRPC client (grpcio's xDS) that checks the retry policy and
the timeout Meridian serves for a policy's routes.

Starts one backend on ``--backend IP:PORT`` with two unary methods:

* ``/meridian.test.Echo/Flaky`` fails the first attempt of every call
  (told apart by the request bytes, a call id) with UNAVAILABLE and
  answers the second;
* ``/meridian.test.Echo/Slow`` answers after ``--slow-seconds``.

Then opens ``xds:///<target>`` (no retry policy of its own, and a
deadline of ``--slow-deadline``, longer than the route's timeout) and
prints one JSON line:

    {"flaky_ok": N, "flaky_errors": [...], "attempts": {"2": N},
     "slow_code": "DEADLINE_EXCEEDED", "slow_seconds": 0.52, ...}
"""

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from concurrent import futures


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--xds-port", type=int, required=True)
    p.add_argument("--target", required=True)
    p.add_argument("--backend", required=True, help="IP:PORT")
    p.add_argument("--calls", type=int, default=20)
    p.add_argument("--slow-seconds", type=float, default=10.0)
    p.add_argument("--slow-deadline", type=float, default=10.0, help="the client's own deadline")
    p.add_argument("--node-id", default=f"grpc-resilience-{os.getpid()}")
    return p.parse_args()


def main():
    args = parse_args()
    bootstrap = {
        "xds_servers": [
            {
                "server_uri": f"127.0.0.1:{args.xds_port}",
                "channel_creds": [{"type": "insecure"}],
                "server_features": ["xds_v3"],
            }
        ],
        "node": {"id": args.node_id, "cluster": "meridian-interop", "locality": {}},
    }
    fd, path = tempfile.mkstemp(prefix="meridian-grpc-bootstrap-", suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(bootstrap, f)
    os.environ["GRPC_XDS_BOOTSTRAP"] = path
    import grpc  # noqa: E402  (after GRPC_XDS_BOOTSTRAP on purpose)

    attempts = {}
    lock = threading.Lock()

    def flaky(request, context):
        with lock:
            n = attempts.get(request, 0) + 1
            attempts[request] = n
        if n == 1:
            context.abort(grpc.StatusCode.UNAVAILABLE, "first attempt fails on purpose")
        return b"ok"

    def slow(_request, _context):
        time.sleep(args.slow_seconds)
        return b"slow"

    handler = grpc.method_handlers_generic_handler(
        "meridian.test.Echo",
        {
            "Flaky": grpc.unary_unary_rpc_method_handler(flaky),
            "Slow": grpc.unary_unary_rpc_method_handler(slow),
        },
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    server.add_generic_rpc_handlers((handler,))
    ip, port = args.backend.rsplit(":", 1)
    if server.add_insecure_port(f"{ip}:{port}") != int(port):
        raise SystemExit(f"could not bind {args.backend}")
    server.start()
    channel = grpc.insecure_channel(f"xds:///{args.target}")
    try:
        grpc.channel_ready_future(channel).result(timeout=60)
        call_flaky = channel.unary_unary("/meridian.test.Echo/Flaky")
        call_slow = channel.unary_unary("/meridian.test.Echo/Slow")
        ok, errors = 0, []
        for i in range(args.calls):
            try:
                call_flaky(f"call-{i}".encode(), timeout=10, wait_for_ready=True)
                ok += 1
            except grpc.RpcError as e:
                errors.append(f"{e.code().name}: {e.details()}")
        started = time.monotonic()
        slow_code, slow_details = "OK", ""
        try:
            call_slow(b"", timeout=args.slow_deadline, wait_for_ready=True)
        except grpc.RpcError as e:
            slow_code, slow_details = e.code().name, e.details()
        slow_seconds = time.monotonic() - started
        histogram = {}
        for n in attempts.values():
            histogram[str(n)] = histogram.get(str(n), 0) + 1
        print(
            json.dumps(
                {
                    "flaky_ok": ok,
                    "flaky_errors": errors[:5],
                    "attempts": histogram,
                    "slow_code": slow_code,
                    "slow_seconds": round(slow_seconds, 3),
                    "slow_details": slow_details,
                    "grpc_version": grpc.__version__,
                }
            ),
            flush=True,
        )
        return 0
    finally:
        channel.close()
        server.stop(grace=None)
        os.unlink(path)


if __name__ == "__main__":
    sys.exit(main())
