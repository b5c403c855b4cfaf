"""One in-process ASGI call, as the in-process benchmarks make it (no server, no HTTP client)."""

from __future__ import annotations

from typing import Any

__all__ = ["call", "scope_for"]


def scope_for(path: str, cookie: bytes | None) -> dict[str, Any]:
    """The scope of a GET of ``path`` from a benchmark client, with ``cookie`` (name=value) if given."""
    headers = [(b"host", b"bench"), (b"user-agent", b"bench/1")]
    if cookie:
        headers.append((b"cookie", cookie))
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": headers,
        "client": ("127.0.0.1", 5000),
        "server": ("bench", 80),
    }


async def call(app: Any, path: str, cookie: bytes | None) -> tuple[int, bytes | None]:
    """Call ``app`` once with a GET of ``path``; return the status and the new cookie (name=value), if any."""
    scope = scope_for(path, cookie)
    out: dict[str, Any] = {}

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            out["status"] = message["status"]
            for k, v in message.get("headers", []):
                if k == b"set-cookie":
                    out["cookie"] = v.split(b";", 1)[0]

    await app(scope, receive, send)
    return out["status"], out.get("cookie")
