"""A TCP proxy on loopback that adds a fixed one-way delay to every chunk (simulated RTT).

The kernel here has no netem, so latency is simulated in user space: each direction is a FIFO
of (deadline, bytes) drained by one coroutine, so ordering holds and throughput is not capped.
asyncio's timers are coarse (epoll waits in whole milliseconds), so the effective round trip
is larger than twice the delay; ``measure_rtt`` reports what a client really sees.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def drain() -> None:
        while True:
            deadline, data = await queue.get()
            if not data:
                writer.close()
                return
            pause = deadline - time.monotonic()
            if pause > 0:
                await asyncio.sleep(pause)
            writer.write(data)
            await writer.drain()

    drainer = asyncio.create_task(drain())
    try:
        while data := await reader.read(65536):
            queue.put_nowait((time.monotonic() + delay, data))
    except ConnectionError:
        pass
    queue.put_nowait((0.0, b""))
    await drainer


@contextmanager
def delayed_proxy(target_port: int, one_way_delay_s: float) -> Iterator[int]:
    """Yield the port of a proxy to 127.0.0.1:``target_port`` adding ``one_way_delay_s`` each way."""
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    port: list[int] = []

    async def handle(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        server_reader, server_writer = await asyncio.open_connection("127.0.0.1", target_port)
        await asyncio.gather(
            _pipe(client_reader, server_writer, one_way_delay_s),
            _pipe(server_reader, client_writer, one_way_delay_s),
            return_exceptions=True,
        )

    async def serve() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port.append(server.sockets[0].getsockname()[1])
        ready.set()
        async with server:
            await server.serve_forever()

    def run() -> None:
        with contextlib.suppress(RuntimeError):  # "Event loop stopped before Future completed": shutdown
            loop.run_until_complete(serve())

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    ready.wait(10)
    try:
        yield port[0]
    finally:

        def shutdown() -> None:
            for task in asyncio.all_tasks(loop):
                task.cancel()
            loop.stop()

        loop.call_soon_threadsafe(shutdown)
        thread.join(10)


def measure_rtt(url: str, samples: int = 50) -> float:
    """Median seconds of a ``SELECT 1`` round trip on an open connection to ``url``."""
    import statistics  # noqa: PLC0415

    import psycopg  # noqa: PLC0415

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SELECT 1")
        times = []
        for _ in range(samples):
            started = time.perf_counter()
            conn.execute("SELECT 1")
            times.append(time.perf_counter() - started)
    return statistics.median(times)
