"""Publishes each body given on the command line in turn through one aiohttp
session, which keeps its connection alive between requests as an ordinary
client does, and prints each answer's status. A request that fails (for
example on a connection the server closed without saying so) ends the
script with a traceback and a non-zero exit.

    python3 keepalive_publisher.py URL SIZE [SIZE...]   (a body of SIZE bytes each)
"""

import asyncio
import sys

import aiohttp


async def main(url, sizes):
    async with aiohttp.ClientSession() as session:
        for size in sizes:
            body = b"x" * size
            async with session.post(url, data=body, headers={"Content-Type": "text/plain"}) as answer:
                await answer.read()
                print(answer.status, flush=True)


asyncio.run(main(sys.argv[1], [int(s) for s in sys.argv[2:]]))
