"""The back-end of bench/overload: an HTTP/1.1 server that works on WORKERS requests at once,
SERVICE seconds each, and queues the rest inside itself, as a thread pool would (a request
whose client went away still takes its turn). SIGUSR1 writes {"served", "max_inside"} to
STATS; SIGUSR2 zeroes them.

    python3 overload_backend.py PORT WORKERS SERVICE STATS
"""

import asyncio
import json
import signal
import sys

port, workers, service, stats = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
counts = {"served": 0, "max_inside": 0}
inside = 0


async def serve(reader, writer):
    global inside
    slots = serve.slots
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            if not head:
                return
            inside += 1
            counts["max_inside"] = max(counts["max_inside"], inside)
            try:
                async with slots:
                    await asyncio.sleep(service)
            finally:
                inside -= 1
            counts["served"] += 1
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
        pass
    finally:
        writer.close()


def write_stats():
    with open(stats + ".tmp", "w") as out:
        json.dump(counts, out)
    import os
    os.replace(stats + ".tmp", stats)


def reset():
    counts["served"] = 0
    counts["max_inside"] = inside


async def main():
    serve.slots = asyncio.Semaphore(workers)
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGUSR1, write_stats)
    loop.add_signal_handler(signal.SIGUSR2, reset)
    loop.add_signal_handler(signal.SIGTERM, loop.stop)
    server = await asyncio.start_server(serve, "127.0.0.1", port, backlog=4096)
    async with server:
        await server.serve_forever()


try:
    asyncio.run(main())
except RuntimeError:
    pass
