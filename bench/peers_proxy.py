"""A counting TCP proxy on 127.0.0.1, the same for every system in :mod:`bench.peers`.

Run as ``python bench/peers_proxy.py TARGET_PORT`` (no imports beyond the standard library, so
any interpreter can run it).  It prints ``LISTEN CONTROL`` (two port numbers) on its first line,
then forwards every connection made to LISTEN to 127.0.0.1:TARGET_PORT, counting the bytes
that cross in each direction: everything the client and the server write, HTTP headers
included (TCP/IP framing is not).  A connection to CONTROL gets one JSON line with the totals
so far and is closed: ``{"up": client-to-server bytes, "down": server-to-client, "connections": n}``.
"""

from __future__ import annotations

import asyncio
import json
import socket
import sys

CHUNK = 256 * 1024


class Counters:
    def __init__(self) -> None:
        self.up = 0
        self.down = 0
        self.connections = 0


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, counters: Counters, up: bool) -> None:
    try:
        while True:
            data = await reader.read(CHUNK)
            if not data:
                break
            if up:
                counters.up += len(data)
            else:
                counters.down += len(data)
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        try:
            if writer.can_write_eof():
                writer.write_eof()
        except (OSError, RuntimeError):
            writer.close()


async def main(target_port: int) -> None:
    counters = Counters()

    async def on_client(c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        counters.connections += 1
        c_writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            s_reader, s_writer = await asyncio.open_connection("127.0.0.1", target_port)
        except OSError:
            c_writer.close()
            return
        s_writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        await asyncio.gather(_pipe(c_reader, s_writer, counters, True), _pipe(s_reader, c_writer, counters, False))
        for w in (c_writer, s_writer):
            w.close()

    async def on_control(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write((json.dumps({"up": counters.up, "down": counters.down,
                                  "connections": counters.connections}) + "\n").encode())
        await writer.drain()
        writer.close()

    proxy = await asyncio.start_server(on_client, "127.0.0.1", 0)
    control = await asyncio.start_server(on_control, "127.0.0.1", 0)
    ports = (proxy.sockets[0].getsockname()[1], control.sockets[0].getsockname()[1])
    print(f"{ports[0]} {ports[1]}", flush=True)
    async with proxy, control:
        await asyncio.gather(proxy.serve_forever(), control.serve_forever())


if __name__ == "__main__":
    try:
        asyncio.run(main(int(sys.argv[1])))
    except KeyboardInterrupt:
        pass
