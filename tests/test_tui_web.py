"""selfpruner-tui --web: the same app served through textual-serve, loaded in a real headless Chromium."""
import asyncio
import base64
import io
import shutil
import socket
import subprocess
import sys
import time

import pytest

from selfpruner.tui.app import terminal_argv

BROWSER = next((b for b in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if b), None)


def test_each_tab_runs_the_same_command_line_without_the_web_flags():
    assert terminal_argv(["--web", "--port", "9000", "--browse", "--host=0.0.0.0", "--sessions-dir", "s"]) == \
        ["--browse", "--sessions-dir", "s"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _bright_share(png: bytes, top: float = 0.25) -> float:
    """Share of light pixels in the page's top band: text on the app's dark background. textual-serve's
    splash (a logo in the middle of a dotted dark page) has none there."""
    import matplotlib.image as mpimg
    img = mpimg.imread(io.BytesIO(png), format="png")[..., :3]
    band = img[: int(img.shape[0] * top)]
    return float((band.mean(axis=-1) > 0.6).mean())


async def _screenshots(url: str, until, timeout: float):
    """Load `url` in headless Chromium (DevTools protocol) and screenshot it each second until `until(png)`."""
    import aiohttp
    port = _free_port()
    browser = subprocess.Popen([BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1200,800",
                                f"--remote-debugging-port={port}", "about:blank"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(100):
                try:
                    tabs = await (await http.get(f"http://127.0.0.1:{port}/json")).json()
                    break
                except aiohttp.ClientError:
                    await asyncio.sleep(0.2)
            page = next(t for t in tabs if t["type"] == "page")
            async with http.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                ids = iter(range(1, 10**6))

                async def call(method, **params):
                    my = next(ids)
                    await ws.send_json({"id": my, "method": method, "params": params})
                    while True:
                        msg = await ws.receive_json()
                        if msg.get("id") == my:
                            return msg.get("result", {})

                await call("Page.navigate", url=url)
                shots, t0 = [], time.monotonic()
                while time.monotonic() - t0 < timeout:
                    await asyncio.sleep(1)
                    shots.append(base64.b64decode((await call("Page.captureScreenshot", format="png"))["data"]))
                    if until(shots[-1]):
                        break
                return shots
    finally:
        browser.kill()


@pytest.mark.skipif(BROWSER is None, reason="no Chromium here (.ci/run installs Debian's chromium where it can)")
def test_the_app_is_served_to_a_browser(tmp_path):
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "selfpruner.tui.app", "--web", "--port", str(port), "--browse",
                               "--sessions-dir", str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True)
    try:
        assert server.stdout.readline().strip() == f"selfpruner-tui at http://127.0.0.1:{port} (Ctrl+C stops serving)"
        for _ in range(100):  # the server listens
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.1)
        shots = asyncio.run(_screenshots(f"http://127.0.0.1:{port}/", lambda png: _bright_share(png) > 0.01, 60))
        assert _bright_share(shots[0]) < 0.001 or len(shots) == 1  # the splash first, while the app starts
        assert _bright_share(shots[-1]) > 0.01, "the app never drew in the page"
    finally:
        server.terminate()
        server.wait(10)
