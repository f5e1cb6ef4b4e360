"""The chat page in headless Chromium: type a message, watch the answer stream in, compare it with tl.generate's
greedy answer, take a screenshot. Chromium is driven over the DevTools protocol with a minimal WebSocket client
written here (standard library only). Skipped when no chromium binary is installed."""
import base64
import json
import os
import shutil
import socket
import subprocess
import threading
import time
import urllib.parse
import urllib.request

import numpy as np
import pytest

import tinygrad_llm as tl
from tinygrad_llm.optim import AdamW
from tinygrad_llm.serve import ChatService, make_server
from tinygrad_llm.tokenizer import BPETokenizer

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="needs a chromium binary (apt-get install chromium)")

QUESTION, ANSWER = "Name a color.", "The sky is blue and the grass is green."


class DevTools:
    """Just enough of a WebSocket client (RFC 6455, text frames) to call DevTools protocol methods."""

    def __init__(self, ws_url: str):
        u = urllib.parse.urlparse(ws_url)
        self.sock = socket.create_connection((u.hostname, u.port), timeout=30)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET {u.path} HTTP/1.1\r\nHost: {u.hostname}:{u.port}\r\nUpgrade: websocket\r\n"
                           f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n")
                          .encode())
        head = b""
        while not head.endswith(b"\r\n\r\n"):
            head += self._exact(1)
        assert b" 101 " in head.split(b"\r\n")[0], head
        self.ids = 0

    def _exact(self, n: int) -> bytes:
        out = b""
        while len(out) < n:
            part = self.sock.recv(n - len(out))
            if not part:
                raise ConnectionError("DevTools closed the connection")
            out += part
        return out

    def _send(self, opcode: int, data: bytes) -> None:
        n = len(data)
        head = bytes([0x80 | opcode]) + (bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + n.to_bytes(2, "big")
                                         if n < 1 << 16 else bytes([0x80 | 127]) + n.to_bytes(8, "big"))
        mask = os.urandom(4)
        self.sock.sendall(head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data)))

    def _message(self) -> dict:
        data = b""
        while True:
            b0, b1 = self._exact(2)
            n = b1 & 0x7F
            if n == 126:
                n = int.from_bytes(self._exact(2), "big")
            elif n == 127:
                n = int.from_bytes(self._exact(8), "big")
            payload = self._exact(n)
            opcode = b0 & 0x0F
            if opcode == 9:                                        # ping
                self._send(10, payload)
                continue
            if opcode == 8:
                raise ConnectionError("DevTools closed the WebSocket")
            data += payload
            if b0 & 0x80:                                          # FIN: the message is complete
                return json.loads(data)

    def call(self, method: str, **params) -> dict:
        self.ids += 1
        self._send(1, json.dumps({"id": self.ids, "method": method, "params": params}).encode())
        while True:
            msg = self._message()
            if msg.get("id") == self.ids:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})

    def js(self, expr: str):
        return self.call("Runtime.evaluate", expression=expr, returnByValue=True, awaitPromise=True)["result"] \
            .get("value")


def _serving(service):
    """Serve ``service`` on a free loopback port for a fixture: yields (service, base URL), then shuts down."""
    server = make_server(service, "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield service, f"http://127.0.0.1:{server.server_port}/"
    server.shutdown()
    server.server_close()
    service.close()


@pytest.fixture(scope="module")
def chat_server():
    """A tiny model trained briefly to answer QUESTION with ANSWER, served on the loopback."""
    tok = BPETokenizer.train((QUESTION + " " + ANSWER + " ") * 20, 300)
    model = tl.GPT(tl.GPTConfig.preset("micro", vocab_size=tok.vocab_size, context_length=160), seed=0)
    service = ChatService(model, tok, name="page-test")
    ids, mask = service.template.encode_with_mask(tok, [{"role": "user", "content": QUESTION},
                                                        {"role": "assistant", "content": ANSWER}])
    x = np.array([ids[:-1]])
    y = np.where(np.array([mask[1:]]), np.array([ids[1:]]), -100)
    opt = AdamW(list(model.named_parameters()), lr=3e-3, weight_decay=0.0)
    for _ in range(40):
        model.loss(x, y).backward()
        opt.step()
        opt.zero_grad()
    yield from _serving(service)


@pytest.fixture()
def browser(tmp_path):
    profile = tmp_path / "profile"
    proc = subprocess.Popen([CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
                             "--disable-extensions", "--remote-debugging-port=0", "--remote-allow-origins=*",
                             f"--user-data-dir={profile}", "--window-size=900,640", "about:blank"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        port_file = profile / "DevToolsActivePort"
        for _ in range(300):                                       # bounded: up to 30 s for the browser to start
            if port_file.is_file() and port_file.read_text().strip():
                break
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        pages = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10).read())
        page = next(p for p in pages if p["type"] == "page")
        yield DevTools(page["webSocketDebuggerUrl"])
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def open_page(cdp: DevTools, url: str) -> None:
    cdp.call("Page.enable")
    cdp.call("Page.navigate", url=url)
    for _ in range(100):                                           # bounded: up to 10 s
        if cdp.js("document.readyState") == "complete" and cdp.js("!!document.getElementById('input')"):
            return
        time.sleep(0.1)


def press_enter(cdp: DevTools) -> None:
    for kind in ("keyDown", "keyUp"):
        cdp.call("Input.dispatchKeyEvent", type=kind, key="Enter", code="Enter", windowsVirtualKeyCode=13,
                 text="\r" if kind == "keyDown" else "")


def wait_for(cdp: DevTools, expr: str, tries: int = 300):
    for _ in range(tries):                                         # bounded: tries / 10 seconds
        value = cdp.js(expr)
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"the page never had {expr}")


def test_chat_page_streams_the_answer(chat_server, browser, tmp_path):
    service, url = chat_server
    cdp = browser
    open_page(cdp, url)
    assert cdp.js("document.title") == "tinygrad-llm chat: page-test"
    # record every text the answer bubble shows while it streams
    cdp.js("""window.__seen = [];
        new MutationObserver(() => { const a = document.querySelector('.msg.assistant');
            if (a) window.__seen.push(a.textContent); })
          .observe(document.getElementById('log'), {subtree: true, childList: true, characterData: true});
        document.getElementById('max_tokens').value = '24'; document.getElementById('input').focus(); true""")
    cdp.call("Input.insertText", text=QUESTION)                    # typed into the focused box
    press_enter(cdp)
    wait_for(cdp, "(document.querySelector('.msg.assistant') || {dataset: {}}).dataset.done")
    answer = cdp.js("document.querySelector('.msg.assistant').textContent")
    user = cdp.js("document.querySelector('.msg.user').textContent")
    seen = cdp.js("window.__seen")
    assert user == QUESTION
    ids = service.chat_ids([{"role": "user", "content": QUESTION}])
    out = tl.generate(service.model, np.asarray([ids]), 24, eos_id=service.tokenizer.eos_id)[0, len(ids):].tolist()
    eos = service.tokenizer.eos_id
    want = service.tokenizer.decode(out[:out.index(eos)] if eos in out else out)
    assert answer == want and answer.strip()
    # it grew piece by piece: several streamed chunks applied, every state seen a prefix of the answer
    assert int(cdp.js("document.querySelector('.msg.assistant').dataset.chunks")) > 1
    assert seen and all(answer.startswith(s) for s in seen)
    assert cdp.js("document.querySelectorAll('.msg.error').length") == 0
    shot = base64.b64decode(cdp.call("Page.captureScreenshot", format="png")["data"])
    path = tmp_path / "chat_page.png"
    path.write_bytes(shot)
    assert shot[:8] == b"\x89PNG\r\n\x1a\n" and len(shot) > 5000


@pytest.fixture(scope="module")
def long_server():
    """An untrained model with a long context: its answers run on for seconds unless stopped."""
    tok = BPETokenizer.train((QUESTION + " " + ANSWER + " ") * 20, 300)
    model = tl.GPT(tl.GPTConfig.preset("micro", vocab_size=tok.vocab_size, context_length=4096), seed=0)
    service = ChatService(model, tok, name="long", max_tokens=3000)
    yield from _serving(service)


def test_stop_button_ends_the_stream_and_the_generation(long_server, browser):
    service, url = long_server
    ids = service.chat_ids([{"role": "user", "content": "hello"}])
    greedy = tl.generate(service.model, np.asarray([ids]), 200)[0, len(ids):].tolist()
    assert service.tokenizer.eos_id not in greedy                  # the answer would go on
    cdp = browser
    open_page(cdp, url)
    cdp.js("document.getElementById('max_tokens').value = '3000'; document.getElementById('input').focus(); true")
    cdp.call("Input.insertText", text="hello")
    press_enter(cdp)
    wait_for(cdp, "(document.querySelector('.msg.assistant') || {dataset: {}}).dataset.chunks")
    assert cdp.js("document.getElementById('send').textContent") == "Stop"
    cdp.js("document.getElementById('send').click(); true")
    assert wait_for(cdp, "document.querySelector('.msg.assistant').dataset.stopped") == "1"
    shown = cdp.js("document.querySelector('.msg.assistant').textContent")
    for _ in range(200):                                           # bounded: the worker notices the closed stream
        if service.engine.stats["cancelled"]:
            break
        time.sleep(0.05)
    made = service.engine.stats["tokens"]
    assert service.engine.stats["cancelled"] == 1 and made < 3000
    full = tl.generate(service.model, np.asarray([ids]), made)[0, len(ids):].tolist()
    assert shown and service.tokenizer.decode(full).startswith(shown)   # what it showed is the answer's start
    assert cdp.js("document.getElementById('send').textContent") == "Send"
