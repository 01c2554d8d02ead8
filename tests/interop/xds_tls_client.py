"""An xDS client over TLS, for the authenticated-xDS test.

Opens one ADS (state of the world) stream to Meridian's TLS xDS port,
with or without a client certificate, asks for every cluster (wildcard
CDS), and prints one JSON line: {"ok": true, "clusters": [...]} or
{"ok": false, "code": "UNAVAILABLE", "details": "..."}.
"""

import argparse
import json
import threading

import grpc
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.protobuf import struct_pb2

CDS = "type.googleapis.com/envoy.config.cluster.v3.Cluster"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--server", required=True)
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--cert")
    ap.add_argument("--key")
    ap.add_argument("--node-id", default="tls-client")
    ap.add_argument("--claim", help="SPIFFE ID to claim in node metadata")
    args = ap.parse_args()

    read = lambda p: open(p, "rb").read() if p else None
    creds = grpc.ssl_channel_credentials(
        root_certificates=read(args.bundle),
        private_key=read(args.key),
        certificate_chain=read(args.cert),
    )
    channel = grpc.secure_channel(
        args.server, creds, options=[("grpc.ssl_target_name_override", "localhost")]
    )
    stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
    metadata = struct_pb2.Struct()
    if args.claim:
        metadata["meridian.spiffe_id"] = args.claim
    node = base_pb2.Node(id=args.node_id, user_agent_name="envoy", metadata=metadata)
    done = threading.Event()

    def requests():
        yield discovery_pb2.DiscoveryRequest(node=node, type_url=CDS)
        # Keep the stream open until the answer is in.
        done.wait(15)

    try:
        for resp in stub.StreamAggregatedResources(requests(), timeout=15):
            names = []
            for any_ in resp.resources:
                c = cluster_pb2.Cluster()
                any_.Unpack(c)
                names.append(c.name)
            print(json.dumps({"ok": True, "clusters": sorted(names)}), flush=True)
            done.set()
            break
    except grpc.RpcError as e:
        print(json.dumps({"ok": False, "code": e.code().name, "details": e.details()}), flush=True)
    done.set()
    channel.close()


if __name__ == "__main__":
    main()
