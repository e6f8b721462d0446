"""`python -m trtserve_server.cli serve`: run the embedded Triton in the foreground, supervised.

By default a supervisor (:mod:`.supervisor`) probes every deployment with real inferences and
restores service on its own (reload of a failed model, or a restart of tritonserver); its
counts are served on ``--status-port`` (``/metrics``, ``/status``) and printed by
``python -m trtserve_server.cli status``. ``--no-supervise`` runs Triton as it is, the way it
was before: nothing restarts a dead stub.
"""
from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import urllib.error
import urllib.request
from pathlib import Path

from .embedded import EmbeddedServer, Ports, ServerError, die_with_parent, new_admin_key
from .status import StatusServer, SupervisorStats
from .supervisor import Supervisor, SupervisorSettings


def _usage(server: EmbeddedServer, models: list[str]) -> str:
    http, grpc = server.http_url, server.grpc_url
    lines = [
        f"trtserve: Triton is serving {', '.join(models)} (HTTP {http}, gRPC {grpc}, metrics {server.host}:{server.ports.metrics})",
        "",
        "  curl -s -X POST http://%s/v2/models/sentiment/infer \\" % http,
        "    -d '{\"inputs\":[{\"name\":\"TEXT\",\"shape\":[1,1],\"datatype\":\"BYTES\",\"data\":[\"a gripping, beautifully acted film\"]}]}'",
        f"  .venv/bin/trtserve --url {grpc} classify \"a gripping, beautifully acted film\"",
        f"  .venv/bin/trtserve --url {grpc} embed \"a sentence to embed\"",
    ]
    if "generate" in models:
        lines += [
            "  curl -N -s -X POST http://%s/v2/models/generate/generate_stream \\" % http,
            "    -d '{\"PROMPT\":\"the film is\",\"MAX_NEW_TOKENS\":20}'",
            f"  .venv/bin/trtserve --url {grpc} generate \"the film is\"",
        ]
    lines += [
        "",
        "Ctrl-C (or SIGTERM) stops the server.",
    ]
    return "\n".join(lines)


def serve(args: argparse.Namespace) -> int:
    server = EmbeddedServer(
        model_repository=Path(args.model_repository),
        ports=Ports(args.http_port, args.grpc_port, args.metrics_port),
        log_path=Path(args.log_file) if args.log_file else None,
        admin_key=new_admin_key() if args.supervise else None,
        host=args.host,
        triton_root=Path(args.triton_root) if args.triton_root else None,
        extra_args=tuple(args.triton_arg),
    )
    if args.supervise:
        return _serve_supervised(server, args)
    _stop_on_signals()
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
        _ignore_signals()
        server.stop()


def _stop_on_signals(on_stop=None) -> None:
    """SIGTERM and SIGINT run ``on_stop`` and end serving as a KeyboardInterrupt; so does the death
    of our parent (`make serve` killed -> we get SIGTERM and stop Triton)."""
    def on_signal(_signum, _frame):
        if on_stop is not None:
            on_stop()
        raise KeyboardInterrupt

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, on_signal)
    die_with_parent(signal.SIGTERM)


def _ignore_signals() -> None:
    """While stopping: a second Ctrl-C or SIGTERM must not interrupt the cleanup."""
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)


def _serve_supervised(server: EmbeddedServer, args: argparse.Namespace) -> int:
    settings = SupervisorSettings(probe_interval_s=args.probe_interval, probe_timeout_s=args.probe_timeout,
                                  ready_timeout_s=args.ready_timeout)
    stats = SupervisorStats()
    supervisor = Supervisor(server, settings, stats)
    status = None

    _stop_on_signals(supervisor.stop)
    try:
        status = StatusServer(stats, args.status_port, host=args.host).start()
        models = supervisor.start_first()
        print(_usage(server, models), flush=True)
        print(f"Supervisor: probes every {settings.probe_interval_s:g}s; counts on "
              f"http://127.0.0.1:{status.port}/metrics and /status", flush=True)
        if server.log_path:
            print(f"Server log: {server.log_path}", flush=True)
        return supervisor.run()
    except KeyboardInterrupt:
        print("\ntrtserve: stopping Triton ...", file=sys.stderr, flush=True)
        return 0
    except (ServerError, OSError) as e:
        print(f"trtserve: {e}", file=sys.stderr)
        return 1
    finally:
        _ignore_signals()
        supervisor.close()
        if status is not None:
            status.stop()


def show_status(args: argparse.Namespace) -> int:
    """Print the supervisor's counts (JSON) or, with --prometheus, its /metrics text."""
    path = "/metrics" if args.prometheus else "/status"
    try:
        with urllib.request.urlopen(f"http://{args.host}:{args.status_port}{path}", timeout=5) as response:
            body = response.read().decode()
    except (urllib.error.URLError, OSError) as e:
        print(f"trtserve: no supervisor at {args.host}:{args.status_port}: {e}", file=sys.stderr)
        return 3
    print(body if args.prometheus else json.dumps(json.loads(body), indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="trtserve-server", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("serve", help="run tritonserver on 127.0.0.1 until Ctrl-C / SIGTERM")
    p.add_argument("--model-repository", default="model_repository/cpu")
    p.add_argument("--http-port", type=int, default=8000)
    p.add_argument("--grpc-port", type=int, default=8001)
    p.add_argument("--metrics-port", type=int, default=8002)
    p.add_argument("--status-port", type=int, default=8003, help="the supervisor's /metrics and /status")
    p.add_argument("--log-file", help="write the server log here instead of the terminal")
    p.add_argument("--host", default="127.0.0.1",
                   help="address Triton listens on (a container publishing its ports needs 0.0.0.0; the "
                        "model-repository API then still needs the launcher's key)")
    p.add_argument("--triton-root", help="a Triton install to run instead of nvidia-pytriton's, e.g. "
                                         "/opt/tritonserver in the NGC image (or $TRTSERVE_TRITON_ROOT)")
    p.add_argument("--triton-arg", action="append", default=[], metavar="ARG",
                   help="one more tritonserver option, e.g. --triton-arg=--metrics-config=summary_latencies=true")
    p.add_argument("--ready-timeout", type=float, default=180.0)
    p.add_argument("--no-supervise", dest="supervise", action="store_false",
                   help="run Triton without the supervisor (nothing restores a failed model)")
    p.add_argument("--probe-interval", type=float, default=SupervisorSettings.probe_interval_s)
    p.add_argument("--probe-timeout", type=float, default=SupervisorSettings.probe_timeout_s,
                   help="keep it below the models' queue timeout (2 s), so a hang is told from a queue")
    st = sub.add_parser("status", help="print the supervisor's counts of probes, failures, reloads, restarts")
    st.add_argument("--host", default="127.0.0.1")
    st.add_argument("--status-port", type=int, default=8003)
    st.add_argument("--prometheus", action="store_true", help="the Prometheus text instead of JSON")
    args = parser.parse_args(argv)
    if args.command == "status":
        return show_status(args)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    return serve(args)


if __name__ == "__main__":
    sys.exit(main())
