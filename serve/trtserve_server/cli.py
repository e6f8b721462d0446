"""`python -m trtserve_server.cli serve`: run the embedded Triton in the foreground."""
from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path

from .embedded import EmbeddedServer, Ports, ServerError, die_with_parent


def _usage(server: EmbeddedServer, models: list[str]) -> str:
    http, grpc = server.http_url, server.grpc_url
    lines = [
        f"trtserve: Triton is serving {', '.join(models)} (HTTP {http}, gRPC {grpc}, metrics {server.host}:{server.ports.metrics})",
        "",
        "  curl -s -X POST http://%s/v2/models/sentiment/infer \\" % http,
        "    -d '{\"inputs\":[{\"name\":\"TEXT\",\"shape\":[1,1],\"datatype\":\"BYTES\",\"data\":[\"a gripping, beautifully acted film\"]}]}'",
        f"  .venv/bin/trtserve --url {grpc} classify \"a gripping, beautifully acted film\"",
        f"  .venv/bin/trtserve --url {grpc} embed \"a sentence to embed\"",
        "",
        "Ctrl-C (or SIGTERM) stops the server.",
    ]
    return "\n".join(lines)


def serve(args: argparse.Namespace) -> int:
    server = EmbeddedServer(
        model_repository=Path(args.model_repository),
        ports=Ports(args.http_port, args.grpc_port, args.metrics_port),
        log_path=Path(args.log_file) if args.log_file else None,
    )
    stopping = {"signal": None}

    def on_signal(signum, _frame):
        stopping["signal"] = signum
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    die_with_parent(signal.SIGTERM)  # `make serve` killed -> we get SIGTERM and stop Triton
    try:
        server.start()
        models = server.wait_ready(timeout_s=args.ready_timeout)
        print(_usage(server, models), flush=True)
        if server.log_path:
            print(f"Server log: {server.log_path}", flush=True)
        code = server.process.wait()
        print(f"trtserve: tritonserver exited with code {code}", file=sys.stderr)
        return code or 1
    except KeyboardInterrupt:
        print("\ntrtserve: stopping Triton ...", file=sys.stderr, flush=True)
        return 0
    except ServerError as e:
        print(f"trtserve: {e}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="trtserve-server", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("serve", help="run tritonserver on 127.0.0.1 until Ctrl-C / SIGTERM")
    p.add_argument("--model-repository", default="model_repository/cpu")
    p.add_argument("--http-port", type=int, default=8000)
    p.add_argument("--grpc-port", type=int, default=8001)
    p.add_argument("--metrics-port", type=int, default=8002)
    p.add_argument("--log-file", help="write the server log here instead of the terminal")
    p.add_argument("--ready-timeout", type=float, default=180.0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    return serve(args)


if __name__ == "__main__":
    sys.exit(main())
