"""The ``convbridge status --html`` page as a browser sees it: Debian's Chromium opens the file
headless and dumps its DOM, and what a reader would see is checked there: the counts, the
latency, a failure's code and message, the output links, and a source key that is markup shown
as text, with no script element from it and nothing loaded from elsewhere."""

from __future__ import annotations

import shutil
import subprocess
from html.parser import HTMLParser

import pytest

from convbridge.cli import main
from tests.status_records import (
    FAILURE_CODE,
    FAILURE_MESSAGE,
    SCRIPT_KEY,
    status_bridge,
    use_bridge,
)


class Page(HTMLParser):
    """The parts of a DOM the checks read: each table's rows of cell texts, the links, every
    element's tag, and the title."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tables: dict[str, list[list[str]]] = {}
        self.links: list[tuple[str, str]] = []
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.title = ""
        self._table: str | None = None
        self._cell: list[str] | None = None
        self._href: str | None = None
        self._link_text: list[str] = []
        self._in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        self.tags.append((tag, found))
        if tag == "table":
            self._table = found.get("id") or ""
            self.tables[self._table] = []
        elif tag == "tr" and self._table is not None:
            self.tables[self._table].append([])
        elif tag in {"td", "th"}:
            self._cell = []
        elif tag == "a":
            self._href, self._link_text = found.get("href") or "", []
        elif tag == "title":
            self._in_title = True

    def handle_endtag(self, tag: str) -> None:
        if tag == "table":
            self._table = None
        elif tag in {"td", "th"} and self._cell is not None and self._table is not None:
            self.tables[self._table][-1].append("".join(self._cell))
            self._cell = None
        elif tag == "a" and self._href is not None:
            self.links.append((self._href, "".join(self._link_text)))
            self._href = None
        elif tag == "title":
            self._in_title = False

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)
        if self._href is not None:
            self._link_text.append(data)
        if self._in_title:
            self.title += data

    def table(self, name: str) -> dict[str, dict[str, str]]:
        """Rows keyed by their first two cells (``rule/provider``), as {header: cell}."""
        header, *body = self.tables[name]
        return {f"{row[0]}/{row[1]}": dict(zip(header, row, strict=True)) for row in body}


def chromium() -> str:
    found = shutil.which("chromium")
    if found is None:
        pytest.fail("chromium is not installed (Debian package chromium; `make servers` "
                    "installs it when run as root)", pytrace=False)
    return found


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> Page:
    browser = chromium()
    where = tmp_path_factory.mktemp("status")
    file = where / "status.html"
    with pytest.MonkeyPatch.context() as monkeypatch:
        use_bridge(monkeypatch, status_bridge())
        assert main(["status", "--html", str(file)]) == 1  # failure reports are listed
    dumped = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu",
         f"--user-data-dir={where / 'profile'}", "--dump-dom", file.as_uri()],
        capture_output=True, text=True, timeout=120)
    assert dumped.returncode == 0, dumped.stderr[-2000:]
    assert "<body" in dumped.stdout, dumped.stderr[-2000:]
    parsed = Page()
    parsed.feed(dumped.stdout)
    return parsed


def test_the_page_shows_the_counts_and_the_latency(page: Page) -> None:
    counts = page.table("counts")
    assert counts["photos/cloudconvert"] == {
        "rule": "photos", "provider": "cloudconvert", "submitting": "0", "submitted": "1",
        "finished": "4", "failed": "1", "rejected": "0", "total": "6"}
    assert counts["docs/freeconvert"]["rejected"] == "1"
    assert counts["docs/freeconvert"]["total"] == "4"
    latency = page.table("latency")
    assert latency["photos/cloudconvert"] == {"rule": "photos", "provider": "cloudconvert",
                                              "jobs": "5", "median": "6.0s", "p95": "1m40s",
                                              "max": "1m40s"}


def test_a_failure_shows_its_code_and_message_and_a_markup_key_as_text(page: Page) -> None:
    header, *failures = page.tables["failures"]
    assert header == ["time", "rule", "provider", "source", "code", "message"]
    conversion = next(dict(zip(header, row, strict=True)) for row in failures
                      if row[4] == FAILURE_CODE)
    assert conversion["message"] == FAILURE_MESSAGE
    assert conversion["source"] == f"s3://my-bucket/{SCRIPT_KEY}"
    assert any(row[4] == "TOO_LARGE" for row in failures)
    # the key's markup made no element: no script, no <b> from the message
    assert [tag for tag, _ in page.tags if tag in {"script", "b"}] == []
    assert page.title == "convbridge status"


def test_outputs_link_to_their_console_page(page: Page) -> None:
    header, *outputs = page.tables["outputs"]
    assert header == ["finished", "rule", "source", "outputs"]
    assert len(outputs) == 6
    assert ("https://s3.console.aws.amazon.com/s3/object/my-bucket?region=us-east-1"
            "&prefix=outbox%2Fp0.png.pdf", "s3://my-bucket/outbox/p0.png.pdf") in page.links


def test_the_page_is_self_contained(page: Page) -> None:
    for tag, attrs in page.tags:
        assert tag not in {"script", "link", "img", "iframe", "object"}, (tag, attrs)
        assert "src" not in attrs, (tag, attrs)
    csp = next(attrs for tag, attrs in page.tags
               if tag == "meta" and attrs.get("http-equiv") == "Content-Security-Policy")
    assert (csp.get("content") or "").startswith("default-src 'none'")

