"""``quarterdeck serve-web``, for real: a daemon in a subprocess with an approval waiting, the
real ``serve-web`` on a free loopback port, and Debian's Chromium, headless, loading the page.
The console draws in the browser (what its websocket received, and a screenshot), and a key
typed in the browser approves as the OS user who started ``serve-web``; it stops with the
consoles it started. Off loopback it is refused without a token and TLS; with them, a browser
must show the token before it gets the page, and the console it serves attaches over TCP as
the token's principal."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import http.cookiejar
import ipaddress
import os
import pwd
import re
import signal
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from tests.browser import chromium
from tests.conftest import quarterdeck, run
from tests.headless import Headless, headless_runtime, wait_until

from quarterdeck.client import Client
from quarterdeck.client.reach import ApiAddress

LABEL = f"{pwd.getpwuid(os.getuid()).pw_name} (uid {os.getuid()})"
PNG = b"\x89PNG\r\n\x1a\n"


@dataclass
class Served:
    """A running ``quarterdeck serve-web``: the URL it printed and its port."""

    proc: subprocess.Popen[bytes]
    out: Path
    url: str = ""
    port: int = 0

    def stop(self) -> None:
        """SIGTERM; it must exit 0 in time, with every console it started."""
        self.proc.send_signal(signal.SIGTERM)
        assert self.proc.wait(timeout=30) == 0, self.out.read_text()

        def gone() -> bool:  # a console that closed its output may take a moment to exit
            group = ["pgrep", "-g", str(self.proc.pid)]
            return not subprocess.run(group, capture_output=True, text=True).stdout.split()

        wait_until(gone, 15, "the consoles serve-web started to exit", step=0.1)


@contextlib.contextmanager
def serve_web(daemon: Headless, *args: str) -> Iterator[Served]:
    """The real ``quarterdeck serve-web`` on the daemon's state directory, on a port the
    system picks; stopped at the end (:meth:`Served.stop`)."""
    out = daemon.root / "serve-web.out"
    command = [sys.executable, "-m", "quarterdeck", "--state-dir", str(daemon.state_dir),
               "serve-web", "--port", "0", *args]  # fmt: skip
    with open(out, "wb") as sink:
        proc = subprocess.Popen(
            command, stdout=sink, stderr=subprocess.STDOUT, cwd=daemon.root,
            start_new_session=True,
        )  # fmt: skip
    served = Served(proc, out)
    try:

        def started() -> re.Match[str] | None:
            text = out.read_text(encoding="utf-8", errors="replace")
            assert proc.poll() is None, f"serve-web exited with {proc.returncode}:\n{text}"
            return re.search(r"serving the control center .* on (https?://[^:]+:(\d+)/\S*)", text)

        found = wait_until(started, 60, "serve-web to start", step=0.1)
        served.url, served.port = found.group(1), int(found.group(2))
        yield served
        if proc.poll() is None:
            served.stop()
    finally:
        with contextlib.suppress(ProcessLookupError):  # it, and any console it left
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def ask(daemon: Headless, action_id: str, by: str | None = None) -> str:
    """An approval for a deploy, waiting on the daemon, asked by the OS user (on the socket)
    or by ``token:<by>`` (over TCP); its id. (Nobody decides what they asked for.)"""
    address = None if by is None else ApiAddress(url=daemon.api_url(), token=daemon.token(by))

    async def request() -> None:
        client = daemon.client() if address is None else Client(daemon.url, daemon=address)
        async with client:
            asked = await client.command(
                {"command": "approval.request", "action_id": action_id, "tool": "deploy",
                 "args": {"target": "web-prod"}}
            )  # fmt: skip
            assert asked["verdict"] == "pending", asked

    run(request())
    return str(daemon.approval_for(action_id)["id"])


def test_the_console_served_to_chromium_draws_and_approves_as_the_os_user(
    tmp_path: Path,
) -> None:
    with headless_runtime(tmp_path, run_args=["--listen", "127.0.0.1:0"]) as daemon:
        approval = ask(daemon, "from-the-browser", by="requester")
        with serve_web(daemon) as served:
            url = served.url
            started = (daemon.root / "serve-web.out").read_text()
            assert f"(as {LABEL}, roles admin) on http://127.0.0.1:" in started, started
            assert "?token=" in url
            shot = tmp_path / "console.png"

            async def browse() -> bytes:
                async with chromium() as page:
                    await page.call("Page.navigate", url=url)
                    await page.wait_for(
                        "document.body && document.body.classList.contains('-first-byte')",
                        60, "the terminal's first bytes",
                    )  # fmt: skip
                    drawn = (
                        "['deploy', 'web-prod', 'daemon alive'].every("
                        "t => (window.__received || '').includes(t))"
                    )
                    await page.wait_for(drawn, 60, "the console to draw the approval")
                    assert await page.evaluate("location.search") == ""  # the secret left it
                    assert await page.evaluate("document.cookie") == ""  # HttpOnly
                    await asyncio.sleep(1.0)  # the canvas paints on the next frames
                    data = await page.screenshot(shot)
                    await page.evaluate("document.querySelector('.xterm-helper-textarea').focus()")
                    for _ in range(30):  # the approvals pane may still be loading its rows
                        await page.press("a")
                        await asyncio.sleep(0.5)
                        if daemon.approval(approval)["state"] != "pending":
                            break
                    return data

            data = run(browse())
        assert data.startswith(PNG) and len(data) > 20_000, len(data)  # not a blank page
        assert int.from_bytes(data[16:20], "big") == 1280  # the IHDR's width
        decided = daemon.approval(approval)
        assert decided["state"] == "approved", decided
        assert decided["decided_by"] == LABEL


def test_off_loopback_without_a_token_and_tls_is_refused(tmp_path: Path) -> None:
    state = tmp_path / "state"
    token_file = tmp_path / "web.token"
    token_file.write_text("qdt_x_y\n", encoding="utf-8")
    api = ("--api", "http://127.0.0.1:9", "--token-file", str(token_file))
    for extra in ((), api):
        refused = quarterdeck("serve-web", "--host", "0.0.0.0", *extra, state_dir=state)
        assert refused.returncode == 2, refused.stderr
        message = refused.stderr.decode()
        assert "not a loopback address" in message and "SSH tunnel" in message, message
        assert "--tls-cert" in message and message.count("\n") == 1
    no_api = quarterdeck("serve-web", "--token-file", str(token_file), state_dir=state)
    assert no_api.returncode == 2 and "--api" in no_api.stderr.decode()
    nobody = quarterdeck("serve-web", state_dir=state)
    assert nobody.returncode == 2 and "no daemon is running" in nobody.stderr.decode()


def certificate(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key (PEM files)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )  # fmt: skip
    return cert_path, key_path


def fetch(opener: urllib.request.OpenerDirector, url: str) -> tuple[int, str]:
    try:
        with opener.open(url, timeout=30) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as refused:
        return refused.code, refused.read().decode()


def test_with_a_token_the_page_wants_it_and_the_console_is_the_tokens(tmp_path: Path) -> None:
    with headless_runtime(tmp_path, run_args=["--listen", "127.0.0.1:0"]) as daemon:
        approval = ask(daemon, "over-the-token")
        token = daemon.token("web-op", role="admin")
        token_file = tmp_path / "web.token"
        token_file.write_text(token + "\n", encoding="utf-8")
        token_file.chmod(0o600)
        api = daemon.api_url()
        cert, key = certificate(tmp_path)
        trust = ssl.create_default_context(cafile=str(cert))
        with serve_web(
            daemon, "--host", "0.0.0.0", "--api", api, "--token-file", str(token_file),
            "--tls-cert", str(cert), "--tls-key", str(key),
        ) as served:  # fmt: skip
            port = served.port
            assert served.url == f"https://0.0.0.0:{port}/?token=TOKEN"  # the token unprinted
            base = f"https://127.0.0.1:{port}/"
            plain = urllib.request.build_opener(urllib.request.HTTPSHandler(context=trust))
            assert fetch(plain, base)[0] == 401
            assert fetch(plain, base + "static/js/textual.js")[0] == 401
            assert fetch(plain, base + "?token=qdt_wrong")[0] == 403
            jar = http.cookiejar.CookieJar()
            browser = urllib.request.build_opener(
                urllib.request.HTTPSHandler(context=trust), urllib.request.HTTPCookieProcessor(jar)
            )
            status, page = fetch(browser, base + "?token=" + token)
            assert status == 200, page
            assert f'data-session-websocket-url="wss://127.0.0.1:{port}/ws"' in page
            [cookie] = list(jar)
            assert cookie.value != token and cookie.has_nonstandard_attr("HttpOnly")
            assert cookie.secure
            assert fetch(browser, base)[0] == 200
            drawn = run(approve_over_the_websocket(daemon, approval, served, trust,
                                                   {cookie.name: str(cookie.value)}))  # fmt: skip
        assert f"attached to {api}" in drawn
        decided = daemon.approval(approval)
        assert decided["state"] == "approved", decided
        assert decided["decided_by"] == "token:web-op"


async def approve_over_the_websocket(
    daemon: Headless, approval: str, served: Served, trust: ssl.SSLContext, cookies: dict[str, str]
) -> str:
    """Open the console's websocket as a browser would (refused without the cookie, and from
    another origin), wait until it drew the approval, type ``a`` until it is decided, then
    stop ``serve-web`` with the console still open; what it drew."""
    port = served.port
    ws_url = f"https://127.0.0.1:{port}/ws?width=120&height=40"
    tls = aiohttp.TCPConnector(ssl=trust)
    async with aiohttp.ClientSession(connector=tls) as bare, bare.get(ws_url) as answer:
        assert answer.status == 401
    tls = aiohttp.TCPConnector(ssl=trust)
    async with aiohttp.ClientSession(cookies=cookies, connector=tls) as session:
        async with session.get(ws_url, headers={"Origin": "https://evil.example"}) as answer:
            assert answer.status == 403
        received = ""
        async with session.ws_connect(ws_url, origin=f"https://127.0.0.1:{port}") as ws:
            async with asyncio.timeout(60):
                async for message in ws:
                    if message.type == aiohttp.WSMsgType.BINARY:
                        received += message.data.decode("utf-8", "replace")
                    if "deploy" in received and "daemon alive" in received:
                        break
            for _ in range(30):
                await ws.send_json(["stdin", "a"])
                await asyncio.sleep(0.5)
                if daemon.approval(approval)["state"] != "pending":
                    break
            await asyncio.to_thread(served.stop)  # the browser still connected
            async with asyncio.timeout(10):
                async for _message in ws:  # what was on its way, then the close
                    pass
            assert ws.closed
        return received
