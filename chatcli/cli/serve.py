"""`chatcli serve`: the resident server (`chatcli.serve`), its status, and stopping it.

`chatcli serve` runs the server in the foreground, one log line per event on stderr,
until Ctrl-C, SIGTERM or `chatcli serve --stop`. `--keep-alive` (else CHATCLI_KEEP_ALIVE,
else models.toml's top-level `keep_alive`, else 5m; an alias's own `keep_alive` wins for
its model: `chatcli.serve.keep_alive`) is how long a model no command uses stays
loaded: 0 unloads it at once, -1 never. `--status` says whether one runs, with its
models (`--json`: one object, null when none runs); `--stop` ends it. Wiring only.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from chatcli.cli.options import JsonListingOpt
from chatcli.ui.console import UI

KeepAliveOpt = Annotated[
    str | None,
    typer.Option("--keep-alive", metavar="DURATION",
                 help="How long a model no command uses stays loaded: 5m, 30s, 1h, 0 (unload "
                 "at once), -1 (never). Default: CHATCLI_KEEP_ALIVE, else keep_alive in "
                 "models.toml, else 5m; an alias's own keep_alive wins for its model.",
                 show_default=False),
]
StopOpt = Annotated[bool, typer.Option("--stop", help="Stop the running server.")]
StatusOpt = Annotated[
    bool, typer.Option("--status", help="Say whether a server runs, and what it holds. With "
                       "--json: pid, version, socket, keep_alive_s, uptime_s, requests, models "
                       "(alias, runtime, implementation, users, keep_alive_s, idle_s, busy); "
                       "null when none runs.")]


def serve(keep_alive: KeepAliveOpt = None, stop: StopOpt = False, status: StatusOpt = False,
          json_out: JsonListingOpt = False) -> None:
    """Keep models loaded so that ask, chat and compare answer at once (Unix socket, 0600)."""
    from chatcli.errors import UsageError
    from chatcli.paths import check_home
    from chatcli.serve import client, wire
    from chatcli.serve.keep_alive import server_default
    from chatcli.serve.server import Server

    ui = UI()
    check_home()
    if stop and status:
        raise UsageError("--stop and --status do not go together", "use one of them")
    if (stop or status) and keep_alive is not None:
        raise UsageError("--keep-alive sets how a starting server unloads models",
                         "drop --keep-alive with --stop or --status")
    if json_out and not status:
        raise UsageError("--json goes with --status", "chatcli serve --status --json")
    if stop:
        pid = client.stop_server()
        if pid is None:
            ui.notify(f"no chatcli server runs (socket {wire.socket_path()})")
        else:
            ui.notify(f"stopped the chatcli server (pid {pid})")
        return
    if status:
        found = client.server_status()
        if json_out:
            ui.print_json(found)
            return
        if found is None:
            ui.print(f"no chatcli server runs (socket {wire.socket_path()})")
            return
        keep = found["keep_alive_s"]
        ui.print(f"chatcli server {found['version']}, pid {found['pid']}, at {found['socket']}")
        ui.print(f"keep-alive: {'never unload' if keep is None else f'{keep:g} s'}; "
                 f"up {found['uptime_s']:.0f} s; {found['requests']} "
                 f"answer{'' if found['requests'] == 1 else 's'}")
        if not found["models"]:
            ui.print("no model loaded")
        for m in found["models"]:
            runtime = m["runtime"]
            own = m["keep_alive_s"]
            ui.print(f"  {m['alias']}: {m['implementation']}, {runtime['dtype']}, "
                     f"{m['users']} connection(s), idle {m['idle_s']:.0f} s"
                     + (f", {m['busy']}" if m["busy"] else "")
                     + (f", keep-alive {'never' if own is None else f'{own:g} s'}"
                        if own != keep else ""))
        return
    from chatcli.registry import load_registry

    seconds = server_default(keep_alive, load_registry().keep_alive)
    Server(seconds, log=sys.stderr).run()  # Ctrl-C, SIGTERM: the socket is removed
