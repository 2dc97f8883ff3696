"""Headless Chromium for the dashboard's tests: load a page, let its script run, and return the
DOM it built (and a screenshot). Skips without Chromium, and fails instead when REQUIRE_BROWSER=1
(CI installs Debian's chromium and sets it)."""

import os
import shutil
import subprocess
from html.parser import HTMLParser

import pytest

# What these machines need (see /work/.library/env/machines/python.md): no sandbox as root, no GPU,
# and no background networking, whose connections a closed network refuses.
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--hide-scrollbars"]


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    if os.environ.get("REQUIRE_BROWSER") == "1":
        pytest.fail("REQUIRE_BROWSER=1 but no chromium on PATH (apt-get install chromium)")
    pytest.skip("no chromium on PATH")


def _run(url: str, profile: str, *extra: str, budget_ms: int = 8000) -> subprocess.CompletedProcess:
    # --virtual-time-budget: the page's timers and fetches run until this much (virtual) time has
    # passed, then Chromium dumps or shoots what the script has drawn.
    cmd = [chromium(), *FLAGS, f"--user-data-dir={profile}", f"--virtual-time-budget={budget_ms}", *extra, url]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def dump_dom(url: str, profile: str) -> str:
    proc = _run(url, profile, "--dump-dom")
    assert proc.returncode == 0 and "<html" in proc.stdout, proc.stderr[-2000:]
    return proc.stdout


def screenshot(url: str, profile: str, path: str, size: str = "1280,1600") -> str:
    proc = _run(url, profile, f"--screenshot={path}", f"--window-size={size}")
    assert proc.returncode == 0 and os.path.getsize(path) > 10_000, proc.stderr[-2000:]
    return path


class Dom(HTMLParser):
    """The elements of a dumped page: (tag, attributes, text) with the data-dataset they sit in."""

    VOID = {"meta", "link", "br", "img", "input", "hr"}

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.elements: list[dict] = []
        self._open: list[dict] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        dataset = attrs.get("data-dataset") or next(
            (e["attrs"].get("data-dataset") for e in reversed(self._open) if e["attrs"].get("data-dataset")), None)
        element = {"tag": tag, "attrs": attrs, "text": "", "dataset": dataset}
        self.elements.append(element)
        if tag not in self.VOID:
            self._open.append(element)

    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs)
        if tag not in self.VOID and self._open:
            self._open.pop()

    def handle_endtag(self, tag):
        for i in range(len(self._open) - 1, -1, -1):
            if self._open[i]["tag"] == tag:
                del self._open[i:]
                break

    def handle_data(self, data):
        for element in self._open:
            element["text"] += data

    def find(self, tag=None, **attrs) -> list[dict]:
        return [e for e in self.elements if (tag is None or e["tag"] == tag)
                and all(e["attrs"].get(k.replace("_", "-")) == v for k, v in attrs.items())]

    def by_id(self, element_id: str) -> dict:
        return next(e for e in self.elements if e["attrs"].get("id") == element_id)
