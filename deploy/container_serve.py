"""Entry point of the cpu ``triton`` image: ``trtserve_server.cli serve`` bound to all interfaces.

The launcher binds Triton to 127.0.0.1, which is right on a host. In a container the published
ports arrive on the container's own interface, so there Triton listens on every interface of
the container (``TRTSERVE_BIND_ADDRESS``, default 0.0.0.0); docker compose publishes the ports
on the host's 127.0.0.1 unless ``BIND_ADDRESS`` says otherwise. Arguments are those of
``trtserve-server serve``.
"""
from __future__ import annotations

import functools
import os
import sys

from trtserve_server import cli


def main(argv: list[str] | None = None) -> int:
    # The launcher has no bind-address option yet: give its server class the container's.
    cli.EmbeddedServer = functools.partial(cli.EmbeddedServer, host=os.environ.get("TRTSERVE_BIND_ADDRESS", "0.0.0.0"))
    return cli.main(["serve", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
