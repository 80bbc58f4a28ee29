"""A channel subscriber written with the `websockets` library.

Usage: ws_channel_client.py URL COUNT [MESSAGE]
Connects to URL, prints "connected", sends MESSAGE (if given) as a text
frame, then prints each frame it receives, one per line (text as is,
binary as "binary:" and its hex), until it has COUNT of them.
"""
import asyncio
import sys

import websockets


async def main(url: str, count: int, message: str | None) -> None:
    async with websockets.connect(url) as ws:
        print("connected", flush=True)
        if message is not None:
            await ws.send(message)
        for _ in range(count):
            frame = await ws.recv()
            if isinstance(frame, bytes):
                print("binary:" + frame.hex(), flush=True)
            else:
                print(frame, flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), sys.argv[3] if len(sys.argv) > 3 else None))
