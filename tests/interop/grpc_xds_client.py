#!/usr/bin/env python3
"""A real proxyless gRPC client (grpcio's built-in xDS) against Meridian.

Starts one gRPC backend per zone, each bound only to its own loopback
address and answering the unary method /meridian.test.Echo/Who with its
zone name; writes an xDS bootstrap pointing at Meridian; opens
``xds:///<target>``; and makes ``--calls`` calls. Prints one JSON line:

    {"target": ..., "calls": N, "counts": {"zone-a": 700, ...},
     "errors": 0, "error_samples": [...], "warmup_calls": W, ...}

Before counting, it calls until every backend has answered once (or
``--warmup-timeout`` passes): gRPC's weighted_target balancer only picks
among localities that are READY, so calls made while one zone's connection
is still being set up would skew the split and say nothing about the
weights Meridian sent.

Exit status: 0 when the counted calls ran (whatever their outcome; the
caller judges the split and the errors), 2 when the channel never became
ready, with diagnostics on stderr.

Usage:
    grpc_xds_client.py --xds-port 18000 --target greet.example.com:50051 \\
        --backend zone-a=127.0.0.2:50123 --backend zone-b=127.0.0.3:50123 \\
        --calls 1000
"""

import argparse
import json
import os
import sys
import tempfile
import time
from concurrent import futures

METHOD = "/meridian.test.Echo/Who"


def parse_backend(text):
    """`zone=ip:port` -> (zone, ip, port)."""
    try:
        zone, addr = text.split("=", 1)
        ip, port = addr.rsplit(":", 1)
        return zone, ip, int(port)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected ZONE=IP:PORT, got {text!r}")


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--xds-port", type=int, required=True)
    p.add_argument("--xds-host", default="127.0.0.1")
    p.add_argument("--target", required=True, help="host or host:port of the policy")
    p.add_argument("--backend", type=parse_backend, action="append", default=[])
    p.add_argument("--calls", type=int, default=1000)
    p.add_argument("--node-id", default=f"grpc-interop-{os.getpid()}")
    p.add_argument(
        "--node-metadata",
        action="append",
        default=[],
        help="KEY=VALUE string metadata of the xDS node (repeatable)",
    )
    p.add_argument("--ready-timeout", type=float, default=60.0)
    p.add_argument("--warmup-timeout", type=float, default=30.0)
    p.add_argument("--call-timeout", type=float, default=10.0)
    p.add_argument(
        "--fail",
        action="append",
        default=[],
        help="ZONE=PER_MILLE: that zone's backend answers UNAVAILABLE to that share of calls",
    )
    p.add_argument(
        "--linger",
        type=float,
        default=0.0,
        help="seconds to keep the channel open after the calls (so load reports go out)",
    )
    return p.parse_args()


def write_bootstrap(args):
    bootstrap = {
        "xds_servers": [
            {
                "server_uri": f"{args.xds_host}:{args.xds_port}",
                "channel_creds": [{"type": "insecure"}],
                "server_features": ["xds_v3"],
            }
        ],
        "node": {
            "id": args.node_id,
            "cluster": "meridian-interop",
            "locality": {},
            "metadata": dict(kv.split("=", 1) for kv in args.node_metadata),
        },
    }
    fd, path = tempfile.mkstemp(prefix="meridian-grpc-bootstrap-", suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(bootstrap, f)
    return path


def main():
    args = parse_args()
    if not args.backend:
        print("at least one --backend ZONE=IP:PORT is required", file=sys.stderr)
        return 64

    # gRPC reads the bootstrap when the first xds channel is created; set it
    # before grpc is even imported so no code path can see it unset.
    bootstrap_path = write_bootstrap(args)
    os.environ["GRPC_XDS_BOOTSTRAP"] = bootstrap_path

    import grpc  # noqa: E402  (after GRPC_XDS_BOOTSTRAP on purpose)

    failing = {z: int(n) for z, n in (kv.split("=", 1) for kv in args.fail)}
    servers = []
    try:
        for zone, ip, port in args.backend:
            servers.append(start_backend(grpc, zone, ip, port, failing.get(zone, 0)))
        return run_client(grpc, args)
    finally:
        for s in servers:
            s.stop(grace=None)
        os.unlink(bootstrap_path)


def start_backend(grpc, zone, ip, port, fail_per_mille=0):
    answer = zone.encode()
    served = [0]

    def who(_request, context):
        # Spread evenly, like tests/support's HTTP backends: call n fails
        # when floor((n+1)*share) > floor(n*share).
        n = served[0]
        served[0] += 1
        if (n + 1) * fail_per_mille // 1000 > n * fail_per_mille // 1000:
            context.abort(grpc.StatusCode.UNAVAILABLE, f"{zone} fails this call on purpose")
        return answer

    # No (de)serializers: requests and responses are raw bytes.
    handler = grpc.method_handlers_generic_handler(
        "meridian.test.Echo", {"Who": grpc.unary_unary_rpc_method_handler(who)}
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    server.add_generic_rpc_handlers((handler,))
    # Bound to this zone's loopback address only, so the answer tells the
    # zone apart and nothing listens beyond loopback.
    bound = server.add_insecure_port(f"{ip}:{port}")
    if bound != port:
        raise SystemExit(f"backend {zone}: could not bind {ip}:{port} (got {bound})")
    server.start()
    return server


def run_client(grpc, args):
    target = f"xds:///{args.target}"
    zones = [zone for zone, _, _ in args.backend]
    channel = grpc.insecure_channel(target)
    who = channel.unary_unary(METHOD)
    try:
        try:
            grpc.channel_ready_future(channel).result(timeout=args.ready_timeout)
        except grpc.FutureTimeoutError:
            headline = f"channel to {target} not ready within {args.ready_timeout:.0f} s"
            diagnose(grpc, channel, who, args, headline)
            return 2

        warmup_seen = {}
        warmup_calls = 0
        deadline = time.monotonic() + args.warmup_timeout
        while len(warmup_seen) < len(zones) and time.monotonic() < deadline:
            warmup_calls += 1
            try:
                z = who(b"", timeout=args.call_timeout, wait_for_ready=True).decode()
                warmup_seen[z] = warmup_seen.get(z, 0) + 1
            except grpc.RpcError:
                time.sleep(0.05)

        counts = {z: 0 for z in zones}
        errors = 0
        samples = []
        for _ in range(args.calls):
            try:
                z = who(b"", timeout=args.call_timeout, wait_for_ready=True).decode()
                counts[z] = counts.get(z, 0) + 1
            except grpc.RpcError as e:
                errors += 1
                if len(samples) < 5:
                    samples.append(f"{e.code().name}: {e.details()}")
        print(
            json.dumps(
                {
                    "target": target,
                    "calls": args.calls,
                    "counts": counts,
                    "errors": errors,
                    "error_samples": samples,
                    "warmup_calls": warmup_calls,
                    "warmup_seen": warmup_seen,
                    "grpc_version": grpc.__version__,
                }
            ),
            flush=True,
        )
        # gRPC sends its load reports (when the cluster names an LRS
        # server) at the interval the server asked for; wait for them.
        time.sleep(args.linger)
        return 0
    finally:
        channel.close()


def diagnose(grpc, channel, who, args, headline):
    """Says as much as a failed start allows: the error of one call (gRPC
    reports xDS resource errors, such as a missing listener, as UNAVAILABLE
    with the reason) and the bootstrap that was used."""
    print(headline, file=sys.stderr)
    try:
        who(b"", timeout=5, wait_for_ready=False)
    except grpc.RpcError as e:
        print(f"probe call: {e.code().name}: {e.details()}", file=sys.stderr)
    with open(os.environ["GRPC_XDS_BOOTSTRAP"]) as f:
        print(f"bootstrap: {f.read()}", file=sys.stderr)
    print(f"grpc {grpc.__version__}; backends: {args.backend}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
