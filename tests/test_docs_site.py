"""The documentation site, checked as a reader meets it.

- ``mkdocs build --strict`` succeeds (warnings are errors: broken references, bad links);
- every internal link and anchor of the built HTML resolves; no link to a placeholder host;
- no raw markup (Sphinx roles, unrendered ``:::`` directives) or private module in the text;
- in headless Chromium (Debian's ``chromium``, driven over the DevTools protocol on a pipe):
  every page loads without a JavaScript error and requests nothing outside the local
  server, its mermaid diagrams are drawn as SVG, the search finds pages; a screenshot of
  every page is kept under a temp folder (its path is printed).

Chromium missing: the browser tests skip, saying so (``.ci/run`` / scripts/docs-check.sh
install it with ``apt-get install -y chromium``).
"""

from __future__ import annotations

import base64
import functools
import html.parser
import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urldefrag, urlparse

import pytest

ROOT = Path(__file__).resolve().parent.parent
RAW_MARKUP = re.compile(r":(class|meth|func|attr|exc|data|mod|obj):`|^::: |\baioelect\._\w|\w::\s")
BROWSER_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-extensions",
    "--mute-audio",
]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The site, built with ``mkdocs build --strict``."""
    pytest.importorskip("mkdocs")
    pytest.importorskip("material")
    out = tmp_path_factory.mktemp("site")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=dict(os.environ, NO_MKDOCS_2_WARNING="1"),
        timeout=300,
    )
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stderr}"
    return out


def pages(site: Path) -> list[Path]:
    """The built pages (not the 404 page)."""
    return sorted(p for p in site.rglob("index.html") if "assets" not in p.parts)


class _Links(html.parser.HTMLParser):
    """The links, ids and visible text of one HTML page."""

    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []
        self.ids: set[str] = set()
        self.text: list[str] = []
        self._hidden = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if a.get("id"):
            self.ids.add(str(a["id"]))
        for key in ("href", "src"):
            if a.get(key) and tag in ("a", "link", "script", "img"):
                self.links.append(str(a[key]))
        if tag in ("script", "style"):
            self._hidden += 1

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style"):
            self._hidden -= 1

    def handle_data(self, data: str) -> None:
        if not self._hidden:
            self.text.append(data)


def _parse(page: Path) -> _Links:
    parser = _Links()
    parser.feed(page.read_text())
    return parser


def test_site_builds_strict(site: Path) -> None:
    """The site builds with warnings as errors and has every page of the nav."""
    built = {str(p.parent.relative_to(site)) for p in pages(site)}
    assert {".", "tutorial", "troubleshooting", "explanation/election", "reference/api"} <= built
    assert len(built) >= 20


def test_internal_links_resolve(site: Path) -> None:
    """Every link to the site itself reaches a file, and its #anchor an element."""
    parsed = {p: _parse(p) for p in site.rglob("*.html")}
    broken = []
    external = set()
    for page, doc in parsed.items():
        for link in doc.links:
            url = urlparse(link)
            if url.scheme in ("http", "https", "mailto", "data"):
                external.add(link)
                continue
            if url.scheme == "javascript":
                continue
            path, anchor = urldefrag(link)
            base = site if path.startswith("/") else page.parent
            target = (base / unquote(path).lstrip("/")).resolve() if path else page
            if target.is_dir():
                target = target / "index.html"
            if not target.exists():
                broken.append(f"{page.relative_to(site)}: {link} (no file)")
            elif anchor and target.suffix == ".html":
                ids = parsed[target].ids if target in parsed else _parse(target).ids
                if anchor not in ids:
                    broken.append(f"{page.relative_to(site)}: {link} (no #{anchor})")
    assert not broken, "\n".join(broken)
    placeholders = [u for u in external if re.search(r"example\.(invalid|com|org)", u)]
    assert not placeholders, placeholders


def test_no_raw_markup_or_private_names(site: Path) -> None:
    """No Sphinx role, unrendered directive or private module name in any page's text."""
    bad = []
    for page in pages(site):
        text = "".join(_parse(page).text)
        for m in RAW_MARKUP.finditer(text):
            bad.append(f"{page.relative_to(site)}: {text[max(0, m.start() - 40) : m.end() + 40]!r}")
    assert not bad, "\n".join(bad)


# -- the browser ---------------------------------------------------------------------------


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        if path := shutil.which(name):
            return path
    return None


class Browser:
    """Headless Chromium driven over the DevTools protocol on a pipe (fds 3 and 4)."""

    def __init__(self, executable: str, profile: Path) -> None:
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()

        def fds() -> None:
            os.dup2(to_browser_r, 3)
            os.dup2(from_browser_w, 4)

        self.proc = subprocess.Popen(
            [
                executable,
                *BROWSER_FLAGS,
                "--remote-debugging-pipe",
                f"--user-data-dir={profile}",
                "about:blank",
            ],
            # preexec_fn runs before the other fds are closed: 3 and 4 must be kept.
            pass_fds=(3, 4, to_browser_r, from_browser_w),
            preexec_fn=fds,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._buffer = b""
        self._id = 0
        self.events: list[dict[str, Any]] = []
        self.session = ""
        target = self.call("Target.createTarget", url="about:blank", session=False)["targetId"]
        self.session = self.call(
            "Target.attachToTarget", targetId=target, flatten=True, session=False
        )["sessionId"]
        for domain in ("Page", "Runtime", "Network"):
            self.call(f"{domain}.enable")

    def _read(self) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            chunk = os.read(self._from_browser, 1 << 20)
            if not chunk:
                raise RuntimeError("chromium closed its DevTools pipe")
            self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        message: dict[str, Any] = json.loads(raw)
        return message

    def call(self, method: str, *, session: bool = True, **params: Any) -> dict[str, Any]:
        self._id += 1
        message: dict[str, Any] = {"id": self._id, "method": method, "params": params}
        if session:
            message["sessionId"] = self.session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        while True:
            reply = self._read()
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                result: dict[str, Any] = reply.get("result", {})
                return result
            if "method" in reply:
                self.events.append(reply)

    def evaluate(self, expression: str) -> Any:
        reply = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in reply:
            raise RuntimeError(f"{expression}: {reply['exceptionDetails']}")
        return reply["result"].get("value")

    def open(self, url: str, ready: str, timeout: float = 30.0) -> None:
        """Load ``url`` and wait until the JS expression ``ready`` is true."""
        self.events.clear()
        self.call("Page.navigate", url=url)
        deadline = time.monotonic() + timeout
        while not self.evaluate(f"document.readyState === 'complete' && !!({ready})"):
            if time.monotonic() > deadline:
                raise AssertionError(f"{url}: not ready after {timeout} s: {ready}")
            time.sleep(0.1)

    def screenshot(self, path: Path) -> None:
        """A PNG of the whole page, 1280 px wide."""
        height = self.evaluate("document.documentElement.scrollHeight")
        self.call(
            "Emulation.setDeviceMetricsOverride",
            width=1280,
            height=min(int(height), 12000),
            deviceScaleFactor=1,
            mobile=False,
        )
        data = self.call("Page.captureScreenshot", format="png")["data"]
        path.write_bytes(base64.b64decode(data))
        self.call("Emulation.clearDeviceMetricsOverride")

    def close(self) -> None:
        try:
            self.call("Browser.close", session=False)
            self.proc.wait(10)
        except Exception:
            self.proc.kill()
            self.proc.wait()
        finally:
            os.close(self._to_browser)
            os.close(self._from_browser)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def server(site: Path) -> Iterator[str]:
    """The built site over HTTP on a free loopback port (search needs a web worker)."""
    handler = functools.partial(_QuietHandler, directory=str(site))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    executable = find_chromium()
    if executable is None:
        pytest.skip(
            "chromium is not installed (apt-get install -y chromium): browser checks skipped"
        )
    b = Browser(executable, tmp_path_factory.mktemp("chromium-profile"))
    try:
        yield b
    finally:
        b.close()


@pytest.fixture(scope="module")
def screenshots() -> Path:
    """Kept after the run (CI artifacts): the path is printed."""
    folder = Path(tempfile.mkdtemp(prefix="aioelect-docs-screenshots-"))
    print(f"\nscreenshots of the docs site: {folder}")
    return folder


def _mermaid_blocks(page: Path, site: Path) -> int:
    """How many mermaid blocks the page's Markdown source has."""
    rel = page.parent.relative_to(site)
    src = ROOT / "docs" / ("index.md" if str(rel) == "." else f"{rel}.md")
    return src.read_text().count("```mermaid")


def test_pages_render_in_chromium(
    site: Path, server: str, browser: Browser, screenshots: Path
) -> None:
    """Each page loads with no JS error and no outside request; its diagrams are SVGs."""
    problems = []
    for page in pages(site):
        rel = page.parent.relative_to(site)
        url = f"{server}/{'' if str(rel) == '.' else f'{rel}/'}"
        diagrams = _mermaid_blocks(page, site)
        ready = (
            "document.querySelector('h1') !== null && "
            f"document.querySelectorAll('div.aioelect-mermaid > svg').length === {diagrams}"
        )
        try:
            browser.open(url, ready)
        except AssertionError as exc:
            drawn = browser.evaluate(
                "document.querySelectorAll('div.aioelect-mermaid > svg').length"
            )
            problems.append(f"{rel}: {exc} ({drawn} of {diagrams} diagrams drawn)")
            continue
        name = "index" if str(rel) == "." else str(rel).replace("/", "_")
        browser.screenshot(screenshots / f"{name}.png")
        text = browser.evaluate("document.body.innerText")
        if m := RAW_MARKUP.search(text):
            problems.append(f"{rel}: raw markup {text[m.start() : m.end() + 40]!r}")
        if "Syntax error in text" in text:
            problems.append(f"{rel}: a mermaid diagram has a syntax error")
        for event in browser.events:
            if event["method"] == "Runtime.exceptionThrown":
                problems.append(f"{rel}: JS error {event['params']['exceptionDetails']}")
            if event["method"] == "Network.requestWillBeSent":
                req = event["params"]["request"]["url"]
                if not req.startswith((server, "data:", "blob:")):
                    problems.append(f"{rel}: requested {req} (no network at view time)")
    assert not problems, "\n".join(problems)


def test_search_finds_pages(server: str, browser: Browser, screenshots: Path) -> None:
    """Searching 'fencing' lists the explanation of the election among its results."""
    browser.open(
        f"{server}/?q=fencing", "document.querySelectorAll('.md-search-result__item').length > 0"
    )
    browser.screenshot(screenshots / "search-fencing.png")
    links = browser.evaluate(
        "[...document.querySelectorAll('.md-search-result__item a')].map(a => a.href)"
    )
    assert any("/explanation/election/" in link for link in links), links
    meta = browser.evaluate("document.querySelector('.md-search-result__meta').innerText")
    assert re.match(r"\d+ matching document", meta), meta
