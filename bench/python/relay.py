"""Baseline relay for the wsbridge benchmark: one WebSocket connection in
(websockets), each message POSTed to every subscriber (aiohttp).

One ClientSession per subscriber whose connector allows `maxInFlight`
connections (the bound wsbridge is given); a semaphore per subscriber bounds
in-flight requests, so reading waits when a subscriber is saturated and
memory stays bounded.

Usage: python relay.py CONFIG.json   ({source, sinks: [...], maxInFlight})
"""

import asyncio
import json
import signal
import sys

import aiohttp
import websockets


class Sub:
    def __init__(self, uri, limit):
        self.uri = uri
        self.sem = asyncio.Semaphore(limit)
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=limit, limit_per_host=limit),
            timeout=aiohttp.ClientTimeout(total=30),
        )


async def main(cfg_path):
    with open(cfg_path) as f:
        cfg = json.load(f)
    limit = int(cfg.get("maxInFlight", 64))
    subs = [Sub(u, limit) for u in cfg["sinks"]]
    counts = {"delivered": 0, "failed": 0}
    tasks = set()

    async def post(sub, body, ctype):
        try:
            async with sub.session.post(sub.uri, data=body, headers={"content-type": ctype}) as resp:
                await resp.read()
                counts["delivered" if 200 <= resp.status < 300 else "failed"] += 1
        except Exception:
            counts["failed"] += 1
        finally:
            sub.sem.release()

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    async def relay():
        for _attempt in range(1000):
            try:
                async with websockets.connect(cfg["source"], max_size=None, compression=None) as ws:
                    print("connected to", cfg["source"], file=sys.stderr, flush=True)
                    async for message in ws:
                        if isinstance(message, str):
                            body, ctype = message.encode(), "application/json"
                        else:
                            body, ctype = message, "application/octet-stream"
                        for sub in subs:
                            await sub.sem.acquire()
                            t = asyncio.create_task(post(sub, body, ctype))
                            tasks.add(t)
                            t.add_done_callback(tasks.discard)
            except Exception as e:  # reconnect, bounded
                print("websocket error:", e, file=sys.stderr, flush=True)
            await asyncio.sleep(0.5)

    runner = asyncio.create_task(relay())
    await stop.wait()
    runner.cancel()
    print(f"stopping: delivered {counts['delivered']}, failed {counts['failed']}", file=sys.stderr, flush=True)
    for sub in subs:
        await sub.session.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
