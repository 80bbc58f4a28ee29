"""An independent WebSocket peer for wsbridge's endpoint client tests.

Listens on 127.0.0.1 (port from argv[1], 0 = any) and prints the port on the
first line of stdout. For each connection it:
  - sends {"connection": N} as text right after the handshake,
  - answers a text message T with the text "echo:" + T,
  - answers a binary message with the same bytes reversed,
  - closes the connection when it receives the text "close-me".
"""

import asyncio
import json
import sys

try:
    from websockets.asyncio.server import serve
except ImportError:  # websockets < 13
    from websockets.server import serve

connections = 0


async def handler(ws, *_):
    global connections
    connections += 1
    await ws.send(json.dumps({"connection": connections}))
    async for message in ws:
        if isinstance(message, bytes):
            await ws.send(message[::-1])
        elif message == "close-me":
            await ws.close(code=1001, reason="asked to")
            return
        else:
            await ws.send("echo:" + message)


async def main():
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    async with serve(handler, "127.0.0.1", port) as server:
        sock = next(iter(server.sockets))
        print(sock.getsockname()[1], flush=True)
        await asyncio.Future()


if __name__ == "__main__":
    asyncio.run(main())
