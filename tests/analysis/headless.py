"""A report opened in headless Chromium: which of its images loaded. Shared by the report tests.

check = images_in_chromium(out / "report.html", tmp_path / "profile")
check["broken"] == [] and check["total"] == len(image_links(out / "report.html"))
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

IMAGE_CHECK = """
<script>
window.addEventListener("load", () => {
  const images = Array.from(document.images);
  const broken = images.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.getAttribute("src"));
  const result = document.createElement("pre");
  result.id = "image-check";
  result.textContent = JSON.stringify({total: images.length, broken: broken});
  document.body.appendChild(result);
});
</script>
"""
needs_chromium = pytest.mark.skipif(
    shutil.which("chromium") is None,
    reason="Debian's chromium is not installed (scripts/ensure_chromium.sh installs it)",
)


class Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.links: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.links += [value for name, value in attrs if name in ("src", "href")]


def links_of(html: Path) -> list[str]:
    parser = Links()
    parser.feed(html.read_text(encoding="utf-8"))
    return parser.links


def image_links(html: Path) -> list[str]:
    return [link for link in links_of(html) if link.endswith((".png", ".gif"))]


def images_in_chromium(report: Path, profile: Path) -> dict:
    """{"total": images in the page, "broken": the src of each that did not load}, from a copy
    of the report beside it (so that its relative links resolve) with a script that counts them
    once the page has loaded."""
    page = report.with_name("image_check.html")
    page.write_text(report.read_text(encoding="utf-8").replace("</body>", IMAGE_CHECK + "</body>"), encoding="utf-8")
    result = subprocess.run(
        [
            "chromium",
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--no-first-run",
            "--disable-sync",
            f"--user-data-dir={profile}",
            "--virtual-time-budget=10000",
            "--dump-dom",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    found = re.search(r'<pre id="image-check">(.*?)</pre>', result.stdout)
    assert found, f"no image check in the DOM; chromium said: {result.stderr[-2000:]}"
    return json.loads(found.group(1))
