"""Demo backends: `python -m tuilb.echo sample.conf` (or ADDRESS...) serves every backend.

Each server answers an HTTP/1.1 request with a short page naming itself (so `curl`
through tuilb shows which backend answered), and echoes anything else byte for byte
(so `nc` works too). For trying tuilb out, not for production.
"""

from __future__ import annotations

import argparse
import sys
from functools import partial

import trio

from tuilb.config import Address, load, parse_address
from tuilb.errors import ConfigError

_METHODS = (b"GET ", b"HEAD ", b"POST ", b"PUT ", b"DELETE ", b"OPTIONS ", b"PATCH ")


async def _serve(name: str, stream: trio.SocketStream) -> None:
    try:
        data = await stream.receive_some(65536)
        if data.startswith(_METHODS):
            await _http(name, stream, data)
            return
        while data:
            await stream.send_all(data)
            data = await stream.receive_some(65536)
    except trio.BrokenResourceError:
        pass
    finally:
        await stream.aclose()


async def _http(name: str, stream: trio.SocketStream, data: bytes) -> None:
    while True:
        while b"\r\n\r\n" not in data:
            more = await stream.receive_some(65536)
            if not more:
                return
            data += more
        head, _, data = data.partition(b"\r\n\r\n")
        body = f"hello from {name}\n".encode()
        closing = b"connection: close" in head.lower()
        await stream.send_all(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
            + f"Content-Length: {len(body)}\r\n".encode()
            + (b"Connection: close\r\n" if closing else b"")
            + b"\r\n"
            + (b"" if head.startswith(b"HEAD ") else body)
        )
        if closing:
            return
        if not data:
            data = await stream.receive_some(65536)
            if not data:
                return


async def serve(backends: list[tuple[str, Address]]) -> None:
    async with trio.open_nursery() as nursery:
        for name, address in backends:
            await nursery.start(
                partial(trio.serve_tcp, partial(_serve, name), address.port, host=address.host)
            )
            print(f"backend {name} listening on {address}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tuilb.echo", description="demo backends for trying tuilb"
    )
    parser.add_argument("targets", nargs="+", metavar="CONFIG_OR_ADDRESS")
    args = parser.parse_args(argv)
    backends: list[tuple[str, Address]] = []
    for target in args.targets:
        try:
            if target.endswith((".conf", ".toml")):
                config = load(target)
                backends += [
                    (f"{p.name}/{b.name}", b.address)
                    for p in config.pools.values()
                    for b in p.backends
                ]
            else:
                backends.append((target, parse_address(target)))
        except (ConfigError, ValueError) as exc:
            print(f"error: {target}: {exc}", file=sys.stderr)
            return 2
    try:
        trio.run(serve, backends)
    except OSError as exc:
        print(f"error: {exc.strerror or exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
