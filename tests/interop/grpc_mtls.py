#!/usr/bin/env python3
"""Proxyless gRPC mTLS through Meridian: a grpcio xDS server and a grpcio
xDS client in one process, both with xDS security and the `file_watcher`
certificate provider (instance `meridian`) reading the PEM files that
`meridian ca issue` wrote.

The server listens on --listen (a policy endpoint) with
grpc.xds_server_credentials and answers /meridian.test.Echo/Who with what
its TLS layer saw of the caller; the client dials xds:///<target> with
grpc.xds_channel_credentials. A plaintext client dialling the server
directly must fail. Prints one JSON line:

    {"ok": true, "server_saw": {...auth context...}, "plaintext": "UNAVAILABLE", "tries": N}
"""

import argparse
import json
import os
import sys
import tempfile
import time
from concurrent import futures

METHOD = "/meridian.test.Echo/Who"


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--xds-port", type=int, required=True)
    p.add_argument("--target", required=True)
    p.add_argument("--listen", required=True, help="ip:port of the server (a policy endpoint)")
    p.add_argument("--certs", required=True, help="directory with cert.pem, key.pem, bundle.pem")
    p.add_argument("--spiffe-id", required=True)
    p.add_argument("--timeout", type=float, default=60.0)
    args = p.parse_args()

    d = args.certs
    bootstrap = {
        "xds_servers": [{
            "server_uri": f"127.0.0.1:{args.xds_port}",
            "channel_creds": [{"type": "insecure"}],
            "server_features": ["xds_v3"],
        }],
        "node": {"id": f"grpc-mtls-{os.getpid()}", "cluster": "interop",
                 "metadata": {"meridian.spiffe_id": args.spiffe_id}},
        "certificate_providers": {"meridian": {"plugin_name": "file_watcher", "config": {
            "certificate_file": os.path.join(d, "cert.pem"),
            "private_key_file": os.path.join(d, "key.pem"),
            "ca_certificate_file": os.path.join(d, "bundle.pem"),
            "refresh_interval": "1s",
        }}},
        "server_listener_resource_name_template":
            "grpc/server?xds.resource.listening_address=%s",
    }
    fd, path = tempfile.mkstemp(prefix="meridian-grpc-mtls-", suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(bootstrap, f)
    os.environ["GRPC_XDS_BOOTSTRAP"] = path
    import grpc  # after the bootstrap is in the environment

    def who(request, context):
        ctx = context.auth_context()
        seen = {k: [v.decode(errors="replace") for v in vs] for k, vs in ctx.items()
                if k != "x509_pem_cert"}
        return json.dumps(seen).encode()

    handler = grpc.method_handlers_generic_handler(
        "meridian.test.Echo", {"Who": grpc.unary_unary_rpc_method_handler(who)})
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), xds=True)
    server.add_generic_rpc_handlers((handler,))
    server.add_secure_port(args.listen, grpc.xds_server_credentials(grpc.insecure_server_credentials()))
    server.start()

    channel = grpc.secure_channel(
        f"xds:///{args.target}", grpc.xds_channel_credentials())
    call = channel.unary_unary(METHOD)
    deadline = time.time() + args.timeout
    tries, last = 0, None
    result = {"ok": False}
    while time.time() < deadline:
        tries += 1
        try:
            seen = json.loads(call(b"", timeout=5))
            result = {"ok": True, "server_saw": seen, "tries": tries}
            break
        except grpc.RpcError as e:
            last = f"{e.code().name}: {e.details()}"
            time.sleep(0.5)
    if not result["ok"]:
        result["error"] = last
    # Plaintext straight to the server port.
    plain = grpc.insecure_channel(args.listen)
    try:
        plain.unary_unary(METHOD)(b"", timeout=5)
        result["plaintext"] = "OK"
    except grpc.RpcError as e:
        result["plaintext"] = e.code().name
    print(json.dumps(result), flush=True)
    channel.close()
    plain.close()
    server.stop(0)
    os.unlink(path)


if __name__ == "__main__":
    sys.exit(main())
