"""A client this team did not write: Python `websockets` with a PyJWT ticket.

Run by tests/interop.rs against a real `nexor-relay serve`:
    python3 python_client.py URL SECRET_B64 KID CA_FILE
URL is the console endpoint (wss://localhost:PORT/console). Upstreams named
`echo` (a WebSocket echo) and `lab` (a TCP echo) must be configured.
Exits non-zero with a message on the first failed check.
"""
import asyncio
import base64
import os
import ssl
import sys
import time

import jwt  # PyJWT
import websockets

URL, SECRET, KID, CA = sys.argv[1:5]
KEY = base64.b64decode(SECRET)
checks = 0


def ok(cond, what):
    global checks
    if not cond:
        print(f"FAILED: {what}", file=sys.stderr)
        sys.exit(1)
    checks += 1


def ticket(upstream, console="vnc", **extra):
    now = int(time.time())
    claims = {
        "exp": now + 60,
        "iat": now,
        "jti": "py-" + os.urandom(8).hex(),
        "sub": "customer-py",
        "upstream": upstream,
        "console": console,
    }
    claims.update(extra)
    # Exactly how a portal mints one (README "Minting tickets").
    return jwt.encode(claims, KEY, algorithm="HS256", headers={"kid": KID})


def tls():
    ctx = ssl.create_default_context(cafile=CA)
    ctx.check_hostname = True
    return ctx


async def roundtrip(ws, payload, stream):
    await ws.send(payload)
    if not stream:
        got = await ws.recv()
        return got
    got = b""
    while len(got) < len(payload):
        got += await ws.recv()
    return got


async def main():
    sizes = [1, 125, 126, 65535, 65536, 300_000, 1 << 20]
    for upstream, form in [("echo", "query"), ("lab", "subprotocol"), ("echo", "subprotocol"), ("lab", "query")]:
        t = ticket(upstream)
        if form == "query":
            url, protos = f"{URL}?ticket={t}", ["binary"]
        else:
            url, protos = URL, ["binary", "nexor.ticket." + t]
        async with websockets.connect(url, ssl=tls(), subprotocols=protos, max_size=None, compression=None) as ws:
            ok(ws.subprotocol == "binary", f"{upstream}/{form}: binary selected, got {ws.subprotocol!r}")
            for i, n in enumerate(sizes):
                data = bytes((j * 31 + i) & 0xFF for j in range(n))
                got = await roundtrip(ws, data, stream=(upstream == "lab"))
                ok(got == data, f"{upstream}/{form}: {n} bytes echoed exactly")
            latency = await (await ws.ping(b"py-ping"))
            ok(latency >= 0, f"{upstream}/{form}: ping answered")
            await ws.close(code=4321, reason="bye")
            if upstream == "echo":
                ok(ws.close_code == 4321, f"echo: close code end to end, got {ws.close_code}")
            else:
                ok(ws.close_code is not None, "lab: the relay answers the close")

    # Refusals a portal developer will meet.
    for bad, status in [
        (ticket("echo", exp=int(time.time()) - 5, iat=int(time.time()) - 30), 401),
        (ticket("missing"), 403),
        (jwt.encode({"exp": int(time.time()) + 60}, KEY, algorithm="HS256", headers={"kid": KID}), 401),
        (jwt.encode({"sub": "x"}, KEY, algorithm="HS512", headers={"kid": KID}), 401),
    ]:
        try:
            async with websockets.connect(f"{URL}?ticket={bad}", ssl=tls()):
                ok(False, f"expected {status}")
        except websockets.exceptions.InvalidStatus as e:
            ok(e.response.status_code == status, f"refused with {status}, got {e.response.status_code}")
    print(f"python interop: {checks} checks passed")


asyncio.run(main())
