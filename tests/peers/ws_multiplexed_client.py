"""A client of wsbridge's multiplexed WebSocket API (`GET /ws/{namespace}`),
written with the `websockets` library the way a browser client would use it:
the token rides in the subprotocol `base64url.bearer.authorization.k8s.io.`
beside `wsbridge`.

Usage: ws_multiplexed_client.py URL TOKEN CHANNEL COUNT [MESSAGE]
Prints "subprotocol <selected>", subscribes to CHANNEL, publishes MESSAGE
(if given) as a JSON object {"text": MESSAGE}, then prints each frame it
receives (replies and pushes, as JSON text) until it has COUNT of them.
"""
import asyncio
import base64
import json
import sys

import websockets


async def main(url: str, token: str, channel: str, count: int, message: str | None) -> None:
    encoded = base64.urlsafe_b64encode(token.encode()).decode().rstrip("=")
    protocols = ["wsbridge", "base64url.bearer.authorization.k8s.io." + encoded]
    async with websockets.connect(url, subprotocols=protocols) as ws:
        print("subprotocol", ws.subprotocol, flush=True)
        await ws.send(json.dumps({"method": "Subscribe", "params": {"channel": channel}, "id": 1}))
        if message is not None:
            await ws.send(json.dumps(
                {"method": "Publish", "params": {"channel": channel, "message": {"text": message}}, "id": 2}))
        for _ in range(count):
            print(await ws.recv(), flush=True)


if __name__ == "__main__":
    args = sys.argv[1:]
    asyncio.run(main(args[0], args[1], args[2], int(args[3]), args[4] if len(args) > 4 else None))
