#!/usr/bin/env python3
"""Calls the demo gRPC server (examples/grpc.rs) with the official Python gRPC
library, to show what a client in another language sees.

    python3 -m pip install grpcio grpcio-tools
    python3 scripts/grpc_client.py [--addr 127.0.0.1:50051] [--key KEY] METHOD [TEXT]

METHOD is WhoAmI, Translate or Generate. The key comes from --key or the
API_KEY environment variable; without either, no key is sent. The Python
stubs are generated from proto/demo.proto into a temporary directory at
each run (grpcio-tools bundles protoc), so nothing generated is checked in.

Prints `OK <reply as JSON>` or `<STATUS_NAME> (<code>): <message>`; exits 0 on OK,
1 on an RPC error.
"""

import argparse
import importlib
import json
import os
import pathlib
import sys
import tempfile

import grpc
from google.protobuf import json_format
from grpc_tools import protoc

ROOT = pathlib.Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"


def load_stubs(out_dir):
    include = pathlib.Path(protoc.__file__).parent / "_proto"
    status = protoc.main(
        [
            "protoc",
            f"-I{PROTO_DIR}",
            f"-I{include}",
            f"--python_out={out_dir}",
            f"--grpc_python_out={out_dir}",
            str(PROTO_DIR / "demo.proto"),
        ]
    )
    if status != 0:
        sys.exit(f"protoc failed on {PROTO_DIR / 'demo.proto'}")
    sys.path.insert(0, out_dir)
    return importlib.import_module("demo_pb2"), importlib.import_module("demo_pb2_grpc")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("method", choices=["WhoAmI", "Translate", "Generate"])
    parser.add_argument("text", nargs="?", default="hello")
    parser.add_argument("--addr", default=os.environ.get("ADDR", "127.0.0.1:50051"))
    parser.add_argument("--key", default=os.environ.get("API_KEY"))
    parser.add_argument(
        "--scheme", default="Api-Key", help="authorization scheme (any case works)"
    )
    parser.add_argument("--timeout", type=float, default=10.0)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as out_dir:
        pb, pb_grpc = load_stubs(out_dir)
        metadata = []
        if args.key:
            metadata.append(("authorization", f"{args.scheme} {args.key}"))
        with grpc.insecure_channel(args.addr) as channel:
            stub = pb_grpc.AssistantStub(channel)
            calls = {
                "WhoAmI": lambda: stub.WhoAmI(
                    pb.WhoAmIRequest(), metadata=metadata, timeout=args.timeout
                ),
                "Translate": lambda: stub.Translate(
                    pb.TranslateRequest(text=args.text, target_language="fr"),
                    metadata=metadata,
                    timeout=args.timeout,
                ),
                "Generate": lambda: stub.Generate(
                    pb.GenerateRequest(prompt=args.text),
                    metadata=metadata,
                    timeout=args.timeout,
                ),
            }
            try:
                reply = calls[args.method]()
            except grpc.RpcError as err:
                code = err.code()
                print(f"{code.name} ({code.value[0]}): {err.details()}")
                return 1
            fields = json_format.MessageToDict(reply, preserving_proto_field_name=True)
            print(f"OK {json.dumps(fields)}")
            return 0


if __name__ == "__main__":
    sys.exit(main())
