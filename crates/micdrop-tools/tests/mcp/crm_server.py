"""A real MCP server for micdrop-tools' tests, written with the official Python SDK (`mcp`).

    python crm_server.py              # stdio transport
    python crm_server.py http         # streamable HTTP on a free loopback port, printed first
"""

import os
import socket
import sys

import anyio
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError

server = MCPServer("crm")


@server.tool()
def find_customer(name: str) -> str:
    """Trouve un client par son nom."""
    token = os.environ.get("CRM_TOKEN", "")
    return f"Client {name} : rendez-vous le 3 mars à 10 h (jeton {len(token)} caractères)"


@server.tool()
def create_ticket(subject: str, urgent: bool = False) -> str:
    """Crée un ticket."""
    return f"Ticket créé : {subject}{' (urgent)' if urgent else ''}"


@server.tool()
def internal_admin() -> str:
    """Never offered when allowed_tools filters it out."""
    return "admin"


@server.tool()
def whoami() -> str:
    """The server's process id (tells connections apart)."""
    return str(os.getpid())


@server.tool()
def crash() -> str:
    """Dies in the middle of the call."""
    os._exit(3)


@server.tool()
def fail() -> str:
    """An anticipated failure: the SDK answers with isError and this message."""
    raise ToolError("le CRM est en maintenance")


@server.tool()
async def slow(seconds: float) -> str:
    """Answers after `seconds`; records a cancellation in CANCEL_LOG."""
    try:
        await anyio.sleep(seconds)
    except anyio.get_cancelled_exc_class():
        log = os.environ.get("CANCEL_LOG")
        if log:
            with open(log, "a") as f:
                f.write("cancelled\n")
        raise
    return "fini"


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "http":
        import uvicorn

        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        sock.listen(128)
        print(sock.getsockname()[1], flush=True)
        app = server.streamable_http_app()
        config = uvicorn.Config(app, log_level="warning")
        anyio.run(uvicorn.Server(config).serve, [sock])
    else:
        server.run()


if __name__ == "__main__":
    main()
