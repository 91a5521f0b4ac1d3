"""The run viewer in a real browser: headless Chromium (Debian's package; `make test` installs it where it can)
loads the page from `file://` without console errors, the call tree and the waterfall are in its DOM, and a
screenshot is taken (the one the README shows is `docs/viewer.png`; `make screenshot` refreshes it)."""

from __future__ import annotations

import asyncio
import os
import shutil
import struct
import subprocess
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Optional

import pytest
from conftest import LONG_ANSWER, Recordings

from replay.inspection import RecordedRun, aload_run, render_viewer, write_viewer
from store import JSONLStore, SQLiteStore, acopy

DOCS_SCREENSHOT = Path(__file__).resolve().parents[3] / "docs" / "viewer.png"
WINDOW = (1400, 900)


def chromium() -> str:
    """The Chromium executable; fails (or, where it cannot be installed at all, skips) saying why."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        pytest.fail(
            "/usr/bin/chromium is missing: `make test` installs it (apt-get install chromium) before running the "
            "tests; run that, or install it by hand."
        )
    pytest.skip("/usr/bin/chromium is missing and cannot be installed here (it needs root and apt-get)")


def run_chromium(page: Path, tmp_path: Path, *args: str, fragment: str = "") -> subprocess.CompletedProcess[str]:
    profile = tmp_path / f"profile-{len(list(tmp_path.iterdir()))}"
    command = [
        chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-extensions",
        f"--user-data-dir={profile}",
        "--enable-logging=stderr",
        "--v=0",
        *args,
        page.as_uri() + fragment,
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"chromium failed ({done.returncode}): {done.stderr[-2000:]}"
    return done


def console_messages(stderr: str) -> list[str]:
    """What the page wrote to the console (Chromium logs each message as `...:CONSOLE(line)] "text", source:`)."""
    return [line for line in stderr.splitlines() if ":CONSOLE" in line]


@dataclass
class Element:
    tag: str
    attributes: dict[str, str]
    children: list[Element] = field(default_factory=list)
    text: str = ""

    @property
    def classes(self) -> set[str]:
        return set(self.attributes.get("class", "").split())

    def walk(self) -> list[Element]:
        found = [self]
        for child in self.children:
            found.extend(child.walk())
        return found

    def all_text(self) -> str:
        return self.text + "".join(child.all_text() for child in self.children)

    def find(self, class_name: str) -> list[Element]:
        return [element for element in self.walk() if class_name in element.classes]

    def by_id(self, element_id: str) -> Element:
        [element] = [element for element in self.walk() if element.attributes.get("id") == element_id]
        return element


class _DomParser(HTMLParser):
    VOID = frozenset({"meta", "link", "br", "img", "input", "hr"})

    def __init__(self) -> None:
        super().__init__()
        self.root = Element("#document", {})
        self.stack = [self.root]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, Optional[str]]]) -> None:
        element = Element(tag, {name: value or "" for name, value in attrs})
        self.stack[-1].children.append(element)
        if tag not in self.VOID:
            self.stack.append(element)

    def handle_endtag(self, tag: str) -> None:
        while len(self.stack) > 1:
            if self.stack.pop().tag == tag:
                break

    def handle_data(self, data: str) -> None:
        self.stack[-1].text += data


def parse(dom: str) -> Element:
    parser = _DomParser()
    parser.feed(dom)
    return parser.root


def test_the_viewer_shows_the_tree_the_waterfall_and_the_details_without_console_errors(
    recordings: Recordings, tmp_path: Path
) -> None:
    run = recordings.first
    page = write_viewer(run, tmp_path / "run.html")
    done = run_chromium(page, tmp_path, "--dump-dom")
    assert console_messages(done.stderr) == []
    document = parse(done.stdout)
    [html_element] = [element for element in document.children if element.tag == "html"]
    assert "data-viewer-errors" not in html_element.attributes
    [body] = [element for element in html_element.walk() if element.tag == "body"]
    assert body.attributes["data-viewer-ready"] == "yes"

    # the call tree: one node per call, each nested in its parent's
    nodes = {int(node.attributes["data-call-id"]): node for node in body.find("tree-node")}
    assert sorted(nodes) == sorted(call.call_id for call in run.calls)
    for call in run.calls:
        row = next(child for child in nodes[call.call_id].children if "tree-row" in child.classes)
        assert row.all_text().startswith(f"{call.position}{call.agent_alias}")
        if call.parent_call_id is not None:
            assert nodes[call.call_id] in nodes[call.parent_call_id].walk()
    llm_row = nodes[run.call_at("0.0.0").call_id].children[0].all_text()
    assert "stand-in-1" in llm_row and "first token" in llm_row and "6 in / 6 out" in llm_row
    assert "ValueError" in nodes[run.call_at("0.2").call_id].children[0].all_text()

    # the waterfall: a row and a bar per call, a first-token mark per stream, a tick per token, the error
    waterfall = body.by_id("waterfall")
    rows = waterfall.find("wf-row")
    assert [int(row.attributes["data-call-id"]) for row in rows] == [call.call_id for call in run.calls]
    assert len(waterfall.find("wf-bar")) == len(run.calls)
    streams = [stream for call in run.calls for stream in call.streams]
    assert len(waterfall.find("wf-first-token")) == len(streams) == 2
    assert len(waterfall.find("wf-token")) == sum(len(stream.chunk_times) for stream in streams)
    assert len(waterfall.find("wf-error")) == 1
    assert "left:" in waterfall.find("wf-bar")[0].attributes["style"]

    # token usage in total, and the selected call (the failed one) in full
    usage = run.usage
    assert body.by_id("totals").all_text() == (
        f"tokens: {usage.input_tokens} in / {usage.output_tokens} out ({usage.total_tokens} total)"
    )
    details = body.by_id("details")
    assert details.attributes["data-call-id"] == str(run.call_at("0.2").call_id)
    assert "ValueError: no sources for this claim" in details.all_text()
    assert LONG_ANSWER in done.stdout  # whole messages are in the page, shown on selection


def test_a_script_error_in_the_page_is_caught_by_this_test(recordings: Recordings, tmp_path: Path) -> None:
    page = tmp_path / "broken.html"
    page.write_text(render_viewer(recordings.first).replace("JSON.parse(", "JSON.parse(missingName + "))
    done = run_chromium(page, tmp_path, "--dump-dom")
    assert any("missingName is not defined" in line for line in console_messages(done.stderr))
    assert 'data-viewer-errors="1"' in done.stdout and 'id="viewer-errors"' in done.stdout


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def test_a_call_named_in_the_address_is_selected(recordings: Recordings, tmp_path: Path) -> None:
    page = write_viewer(recordings.first, tmp_path / "run.html")
    llm = recordings.first.call_at("0.0.0")
    done = run_chromium(page, tmp_path, "--dump-dom", fragment=f"#call={llm.call_id}")
    details = parse(done.stdout).by_id("details")
    assert details.attributes["data-call-id"] == str(llm.call_id)
    text = details.all_text()
    assert "tokens 6 in / 6 out" in text and "model stand-in-1" in text and "Research paper." in text


def test_a_screenshot_of_the_viewer_is_saved(recordings: Recordings, tmp_path: Path) -> None:
    page = write_viewer(recordings.first, tmp_path / "run.html")
    shot = tmp_path / "viewer.png"
    size = f"--window-size={WINDOW[0]},{WINDOW[1]}"
    llm = recordings.first.call_at("0.0.0")
    done = run_chromium(
        page, tmp_path, f"--screenshot={shot}", size, "--hide-scrollbars", fragment=f"#call={llm.call_id}"
    )
    assert console_messages(done.stderr) == []
    assert _png_size(shot) == WINDOW
    assert shot.stat().st_size > 20_000  # a rendered page, not a blank one
    if os.environ.get("MINIAGENTS_UPDATE_SCREENSHOT") == "1" or not DOCS_SCREENSHOT.exists():
        DOCS_SCREENSHOT.parent.mkdir(exist_ok=True)
        shutil.copyfile(shot, DOCS_SCREENSHOT)
    assert _png_size(DOCS_SCREENSHOT) == WINDOW


def test_a_text_recording_without_times_shows_its_tree_and_says_it_has_no_waterfall(
    recordings: Recordings, tmp_path: Path
) -> None:
    recording = tmp_path / "flow.jsonl"
    asyncio.run(acopy(SQLiteStore(recordings.path), JSONLStore(recording), [recordings.first_run_id]))

    async def aread() -> RecordedRun:
        async with JSONLStore(recording) as store:
            return await aload_run(store)

    run = asyncio.run(aread())
    assert not run.timed
    done = run_chromium(write_viewer(run, tmp_path / "run.html"), tmp_path, "--dump-dom")
    assert console_messages(done.stderr) == []
    body = parse(done.stdout)
    assert len(body.find("tree-node")) == len(run.calls)
    assert "no times recorded" in body.by_id("summary").all_text()
    waterfall = body.by_id("waterfall")
    assert waterfall.find("wf-row") == [] and "holds no times" in waterfall.all_text()
    assert " ms" not in "".join(node.all_text() for node in body.find("tree-row"))
