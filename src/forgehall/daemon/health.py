"""The daemon's health endpoint: loopback only, ``GET /health`` answers JSON.

``{"status": "starting" | "running" | "draining", "pid", "daemon_id", "runtime_id",
"server", "tasks": [ids], "journal": n, "connected": bool}`` — 200 while running, 503
while starting or draining (so a supervisor's probe reads it directly). The port chosen
(``FORGEHALL_DAEMON_HEALTH_ADDR``, port 0: any free one) is written to ``health.json`` in
the data directory, where ``forgehall daemon status`` finds it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from typing import Any


class HealthServer:
    def __init__(self, host: str, port: int, report: Callable[[], dict[str, Any]]) -> None:
        self.host = host
        self.port = port
        self.report = report
        self._server: asyncio.Server | None = None

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._handle, self.host, self.port)
        port: int = self._server.sockets[0].getsockname()[1]
        self.port = port
        return port

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readline(), 5)
            while (await asyncio.wait_for(reader.readline(), 5)) not in (b"\r\n", b"\n", b""):
                pass
            parts = request.decode(errors="replace").split()
            if len(parts) >= 2 and parts[0] == "GET" and parts[1].split("?")[0] == "/health":
                body = self.report()
                status = "200 OK" if body.get("status") == "running" else "503 Service Unavailable"
            else:
                body, status = {"detail": "GET /health"}, "404 Not Found"
            payload = json.dumps(body).encode()
            writer.write(
                f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\n"
                f"content-length: {len(payload)}\r\nconnection: close\r\n\r\n".encode()
                + payload
            )
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()
