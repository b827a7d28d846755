"""A TCP proxy on loopback that holds every chunk for ``delay_s`` in each direction (round trip 2 x delay_s).

Benchmark- and test-only: it lets a teacher on this machine stand for one in another region. Order is
kept per direction; bytes are not limited (bandwidth is not what it models).

    with DelayProxy("127.0.0.1", 8081, delay_s=0.025) as proxy:   # 50 ms round trip
        url = f"127.0.0.1:{proxy.port}"
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any


class DelayProxy:
    """Forwards ``127.0.0.1:<port>`` to ``host:port`` with ``delay_s`` added each way; a context manager."""

    def __init__(self, host: str, port: int, delay_s: float) -> None:
        self.host, self.target_port, self.delay_s = host, port, delay_s
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="delay-proxy", daemon=True)
        self._server: Any = None

    def __enter__(self) -> DelayProxy:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._accept, "127.0.0.1", 0), self._loop).result(10)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def __exit__(self, *exc: object) -> None:
        async def stop() -> None:
            self._server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            server_r, server_w = await asyncio.open_connection(self.host, self.target_port)
        except OSError:
            client_w.close()
            return
        await asyncio.gather(self._pipe(client_r, server_w), self._pipe(server_r, client_w), return_exceptions=True)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        held: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue()

        async def hold() -> None:
            while chunk := await reader.read(1 << 16):
                held.put_nowait((loop.time() + self.delay_s, chunk))
            held.put_nowait(None)

        async def release() -> None:
            while (item := await held.get()) is not None:
                due, chunk = item
                await asyncio.sleep(max(0.0, due - loop.time()))
                writer.write(chunk)
                await writer.drain()
            writer.close()

        await asyncio.gather(hold(), release())
