"""How `recon sandbox serve` listens (contact_recon/sandbox/server.py), on real sockets on 127.0.0.1."""

from __future__ import annotations

import asyncio
import socket

from contact_recon.sandbox.server import _bind


def test_the_served_connections_send_without_waiting_for_acks():
    """A connection accepted on the socket `recon sandbox serve` binds has TCP_NODELAY. Without it, each answer
    written in two parts (headers, then body) waited out the client's delayed ACK: about 40 ms a request on a
    kept-alive connection, which held a benchmark's first night to 120 requests a second."""
    async def accepted_nodelay() -> int:
        listening = _bind("test", 0)
        seen: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        class Probe(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                sock = transport.get_extra_info("socket")
                seen.set_result(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
                transport.close()

        server = await asyncio.get_running_loop().create_server(Probe, sock=listening)
        async with server:
            _, writer = await asyncio.open_connection(*listening.getsockname())
            value = await asyncio.wait_for(seen, 5)
            writer.close()
        return value

    assert asyncio.run(accepted_nodelay()) != 0
