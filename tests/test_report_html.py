"""``pricebench report RUN_DIR``: one self-contained HTML file per run.

Structure tests read the HTML with the standard library's parser (one sortable leaderboard per task with
one row per cell, every image a data: URI holding a PNG, nothing fetched from the network, every string
from the run escaped, bad input exit 2 with nothing written); the last tests open the report in headless
Chromium and read back, from the DOM after the page's script ran, that every table rendered, every image
decoded and a click on a header sorts numerically with missing values last, and save a screenshot.
"""

from __future__ import annotations

import base64
import contextlib
import json
import math
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from bench import cli, hookimpl, plugins, runner, suite
from bench.methods import Pricer, Setting
from bench.plugins import load
from bench.report import html as report_html

EVIL_LABEL = """<script>alert("label")</script> & 'quoted'"""
EVIL_MESSAGE = """<img src=x onerror=alert(1)> & "boom" </td></table>"""
EVIL_TASK = """<script>alert('task')</script>&amp;"""

# cli.main installs the registry it loads as the process's: put the previous one back after each test
pytestmark = pytest.mark.usefixtures("restore_registry")


@contextlib.contextmanager
def keeping_registry():
    """The same for module-scoped fixtures, which run outside any test's restore_registry."""
    old = plugins.set_registry(None)
    plugins.set_registry(old)
    try:
        yield
    finally:
        plugins.set_registry(old)


class _BS(Pricer):
    version = "1"
    supports = {"black_scholes": ("european_call",)}

    def price(self, inputs):
        from pricebench_plugins.models import black_scholes as bs

        return bs.price(inputs["S"], inputs["K"], inputs["T"], inputs["r"], inputs["q"], inputs["sigma"], 1.0)


class Shifted(_BS):
    name = "report_shifted"
    settings = {"bias": Setting(1e-2, float, "added to every price, divided by steps"),
                "steps": Setting(1, int, "divides the bias", min=1)}

    def price(self, inputs):
        return super().price(inputs) + self.bias / self.steps


class Exploder(_BS):
    name = "report_exploder"

    def price(self, inputs):
        raise RuntimeError(EVIL_MESSAGE)


class ReportPlugin:
    @hookimpl
    def register_pricers(self, register):
        register(Shifted)
        register(Exploder)


def _suite_data() -> dict:
    quick = {"repeats": 3, "min_time": 0.0, "timeout": 60.0}
    return {
        "name": "report_unit",
        "seed": 11,
        "tasks": [
            {"name": "calls", "kind": "price", "model": "black_scholes", "product": "european_call", "n": 200,
             "sampler": "lhs", "fixed": {"S": 100.0, "q": 0.0},
             "domain": {"K": [80.0, 120.0], "T": [0.1, 2.0], "r": [0.0, 0.05], "sigma": [0.1, 0.5]},
             "reference": "closed_form", "baseline": "closed_form",
             "methods": [{"name": "closed_form", "settings": {"backend": "numpy"}},
                         {"name": "report_shifted", "settings": {"steps": [8, 64, 512]}},
                         {"name": "report_shifted", "settings": {"bias": 0.5}, "label": EVIL_LABEL},
                         "report_exploder"]} | quick,
            {"name": "iv", "kind": "implied_vol", "model": "black_scholes", "product": "european_call", "n": 200,
             "sampler": "uniform", "fixed": {"S": 1.0, "K": 1.0, "T": 0.5, "r": 0.0},
             "domain": {"sigma": [0.05, 0.9]}, "reference": "true_sigma", "pricer": "closed_form",
             "methods": [{"name": "newton", "settings": {"backend": "numpy"}},
                         {"name": "bisection", "settings": {"backend": "numpy"}}]} | quick,
            {"name": "approx", "kind": "approximate", "model": "black_scholes", "product": "european_call",
             "n": 600, "validation": 0, "test": 300, "sampler": "lhs", "fixed": {"K": 1.0, "q": 0.0, "r": 0.0},
             "domain": {"S": [0.8, 1.2], "T": [0.1, 1.0], "sigma": [0.1, 0.5]}, "pricer": "closed_form",
             "methods": [{"name": "least_squares", "settings": {"degree": [2, 4]}}]} | quick,
        ],
    }


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    registry = load(extra=[("report_test", ReportPlugin())])
    out = tmp_path_factory.mktemp("report_runs")
    with keeping_registry():
        s = suite.parse(_suite_data(), "report_unit.toml", registry)
        result = runner.run(s, registry, out_dir=out / "results", cache_dir=out / "cache")
    return result.directory


@pytest.fixture
def run_copy(run_dir, tmp_path):
    """A private copy of the run (tests that alter it or write into it)."""
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns(".lock", "report.html"))
    return copy


def _rows(directory: Path) -> list[dict]:
    return [json.loads(line) for line in (directory / "rows.jsonl").read_text().splitlines()]


class Page(HTMLParser):
    """What the structure tests look at: tables (class, caption, header cells, body rows), images, scripts."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.tables, self.images, self.scripts, self.body, self.links = [], [], [], {}, []
        self._stack, self._cell, self._in_caption, self._in_script = [], None, False, False
        self.feed(text)
        self.close()

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.links += [(tag, name, value) for name, value in attrs.items() if name in ("src", "href", "srcset")]
        if tag == "body":
            self.body = attrs
        elif tag == "table":
            self._stack.append({"class": attrs.get("class", ""), "caption": "", "head": [], "rows": [],
                                "section": None})
        elif tag == "caption" and self._stack:
            self._in_caption = True
        elif tag in ("thead", "tbody") and self._stack:
            self._stack[-1]["section"] = tag
        elif tag == "tr" and self._stack and self._stack[-1]["section"] == "tbody":
            self._stack[-1]["rows"].append([])
        elif tag in ("td", "th") and self._stack:
            self._cell = {"text": "", "sort": attrs.get("data-sort"), "type": attrs.get("data-type")}
        elif tag == "img":
            self.images.append(attrs)
        elif tag == "script":
            self._in_script = True
            self.scripts.append("")

    def handle_endtag(self, tag):
        if tag == "table" and self._stack:
            self.tables.append(self._stack.pop())
        elif tag == "caption":
            self._in_caption = False
        elif tag in ("td", "th") and self._cell is not None and self._stack:
            table = self._stack[-1]
            if table["section"] == "thead":
                table["head"].append(self._cell)
            elif table["rows"]:
                table["rows"][-1].append(self._cell)
            self._cell = None
        elif tag == "script":
            self._in_script = False

    def handle_data(self, data):
        if self._in_script:
            self.scripts[-1] += data
        elif self._cell is not None:
            self._cell["text"] += data
        elif self._in_caption and self._stack:
            self._stack[-1]["caption"] += data

    def of_class(self, css: str) -> list[dict]:
        return [t for t in self.tables if css in t["class"].split()]


@pytest.fixture(scope="module")
def report(run_dir, tmp_path_factory):
    """The report of the shared run, written with --out (the run folder itself stays as the run left it)."""
    path = tmp_path_factory.mktemp("report") / "report.html"
    with keeping_registry():
        assert cli.main(["report", str(run_dir), "--out", str(path)]) == 0
    text = path.read_text(encoding="utf-8")
    return path, text, Page(text)


# ------------------------------------------------------------------------------------------ structure


def test_one_sortable_leaderboard_per_task_with_a_row_per_cell(run_dir, report):
    _, _, page = report
    rows = _rows(run_dir)
    by_task = {}
    for r in rows:
        by_task.setdefault(r["task"], []).append(r)
    assert set(by_task) == {"calls", "iv", "approx"}
    boards = page.of_class("leaderboard")
    assert len(boards) == 3
    for table in boards:
        task = table["caption"].split(":")[0]
        assert len(table["rows"]) == len(by_task[task]), task
        heads = [h["text"] for h in table["head"]]
        assert heads[:4] == ["#", "method", "settings", "device"] and "median" in heads and "note" in heads
        assert "sortable" in table["class"]
        assert all(len(r) == len(heads) for r in table["rows"])
        # numeric columns carry the value itself for sorting: the exact median of each cell
        median = heads.index("median")
        assert table["head"][median]["type"] == "num"
        sorts = sorted(float(r[median]["sort"]) for r in table["rows"] if r[median]["sort"])
        expected = sorted(r["latency_median_s"] for r in by_task[task] if math.isfinite(r["latency_median_s"]))
        assert sorts == pytest.approx(expected, rel=1e-12)
    calls = next(t for t in boards if t["caption"].startswith("calls"))
    assert len(calls["rows"]) == 6  # closed_form, three biases, the labelled one, the exploder
    status = [h["text"] for h in calls["head"]].index("status")
    assert calls["rows"][-1][status]["text"] == "error"  # broken cells rank last
    # the speed-up column comes from leaderboard.csv (derived from rows.jsonl at the end of each task)
    speed = [h["text"] for h in calls["head"]].index("speed-up")
    assert "1x" in [r[speed]["text"] for r in calls["rows"]]
    iv = next(t for t in boards if t["caption"].startswith("iv"))
    assert "iterations" in [h["text"] for h in iv["head"]]
    approx = next(t for t in boards if t["caption"].startswith("approx"))
    assert {"fit", "break-even"} <= {h["text"] for h in approx["head"]}
    # targets.csv: one row per method and device of each task
    targets = page.of_class("targets")
    assert len(targets) == 3
    calls_targets = next(t for t in targets if t["caption"].startswith("calls"))
    assert {r[0]["text"] for r in calls_targets["rows"]} == {"closed_form", "report_shifted", "report_exploder"}
    assert page.body["data-tables"] == str(len(page.tables))


def test_every_image_is_an_inline_png_and_nothing_is_fetched(run_dir, report):
    path, text, page = report
    pngs = sorted(p.relative_to(run_dir).as_posix() for p in run_dir.rglob("*.png"))
    assert {"calls.png", "iv.png", "approx.png"} <= set(pngs)
    assert any(p.startswith("artifacts/approx/") for p in pngs)  # the approximators' plots
    assert len(page.images) == len(pngs) == int(page.body["data-images"])
    assert sorted(img["alt"] for img in page.images) == pngs
    for img in page.images:
        src = img["src"]
        assert src.startswith("data:image/png;base64,"), src[:40]
        data = base64.b64decode(src.split(",", 1)[1], validate=True)
        assert data.startswith(b"\x89PNG\r\n\x1a\n") and data == (run_dir / img["alt"]).read_bytes()
    assert not re.search(r"https?://", text, re.IGNORECASE)
    assert page.links and all(value.startswith("data:image/png;base64,") if name == "src" else value.startswith("#")
                              for tag, name, value in page.links), [(t, n, v[:40]) for t, n, v in page.links]
    assert "<link" not in text and "@import" not in text and "url(" not in text
    assert "Content-Security-Policy" in text and "default-src 'none'" in text
    # the run's metadata: suite, run id, machine, packages, and the audit of the approximate task
    meta = json.loads((run_dir / "run.json").read_text())
    for value in (meta["run_id"], meta["suite"], meta["machine"]["cpu"], meta["machine"]["host"],
                  meta["machine"]["packages"]["numpy"], str(meta["seed"])):
        assert value in text
    (audit,) = page.of_class("audit")
    approx = [r for r in _rows(run_dir) if r["task"] == "approx"]
    assert len(audit["rows"]) == len(approx) == 2
    assert sorted(float(r[4]["sort"]) for r in audit["rows"]) == sorted(float(r["arb_violations"]) for r in approx)


def test_strings_from_the_run_are_escaped(report):
    _, text, page = report
    assert len(page.scripts) == 1  # only the report's own script; none injected by a label or message
    assert EVIL_LABEL not in text and EVIL_MESSAGE not in text and "<img src=x" not in text
    assert "&lt;script&gt;alert(&quot;label&quot;)&lt;/script&gt; &amp; &#x27;quoted&#x27;" in text
    calls = next(t for t in page.of_class("leaderboard") if t["caption"].startswith("calls"))
    texts = [c["text"] for r in calls["rows"] for c in r]
    assert any(t.startswith(EVIL_LABEL) for t in texts)  # the parser decodes it back to the label
    assert any(EVIL_MESSAGE in t for t in texts)


def test_a_task_name_with_markup_and_load_notes(run_copy, tmp_path, capsys):
    """Rows as another tool might write them: a task named with markup, cells flagged busy and noisy."""
    rows = _rows(run_copy)
    for r in rows:  # whatever this machine's load did to the run, only the two cells below are flagged
        r["busy"] = False
        r["message"] = "; ".join(p for p in (r["message"] or "").split("; ")
                                 if not p.startswith(("busy machine", "noisy timing")))
        if r["task"] == "iv":
            r["task"] = EVIL_TASK
    flagged = [r for r in rows if r["task"] == "calls" and r["status"] == "ok"][:2]
    flagged[0]["busy"] = True
    flagged[0]["message"] = "busy machine: other processes kept 1.8 of 2 CPUs busy <while> & this cell ran"
    flagged[1]["message"] = "noisy timing: IQR 21% of median"
    (run_copy / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"torn": ')
    meta = json.loads((run_copy / "run.json").read_text())
    meta["tasks"][EVIL_TASK] = meta["tasks"].pop("iv")
    meta["status"] = "interrupted"
    (run_copy / "run.json").write_text(json.dumps(meta))
    (run_copy / "leaderboard.csv").unlink()  # a run stopped before its first table: rows.jsonl alone
    out = tmp_path / "r.html"
    assert cli.main(["report", str(run_copy), "--out", str(out)]) == 0
    assert str(out) in capsys.readouterr().out
    text = out.read_text()
    page = Page(text)
    assert EVIL_TASK not in text and "&lt;script&gt;alert(&#x27;task&#x27;)&lt;/script&gt;&amp;amp;" in text
    assert len(page.scripts) == 1
    assert len(page.of_class("leaderboard")) == 3
    (load,) = page.of_class("load")
    assert [r[4]["text"] for r in load["rows"]] == ["busy", "noisy"]
    assert "<while>" not in text and "&lt;while&gt; &amp; this cell ran" in text
    assert "did not finish (interrupted)" in text


def test_default_output_is_report_html_in_the_run_folder(run_copy, capsys):
    before = {p.relative_to(run_copy) for p in run_copy.rglob("*")}
    assert cli.main(["report", str(run_copy)]) == 0
    after = {p.relative_to(run_copy) for p in run_copy.rglob("*")}
    assert after - before == {Path("report.html")}  # nothing else written, no temporary file left
    assert f"wrote {run_copy / 'report.html'}" in capsys.readouterr().out
    # a second report replaces the first and does not take it for a plot of the run
    assert cli.main(["report", str(run_copy)]) == 0
    assert (run_copy / "report.html").read_text().count("<img ") == len(list(run_copy.rglob("*.png")))


def test_a_schema_1_run_reads_from_its_csv(tmp_path):
    out = tmp_path / "old.html"
    assert cli.main(["report", "tests/data/schema1_run", "--out", str(out)]) == 0
    page = Page(out.read_text())
    assert len(page.of_class("leaderboard")) == 3 and not page.images


def _listing(folder: Path) -> dict:
    return {p: p.stat().st_mtime_ns for p in folder.rglob("*")}


@pytest.mark.parametrize("case", ["missing", "file", "not_a_run", "bad_json", "not_an_object", "out_is_folder",
                                  "out_folder_missing"])
def test_bad_input_exit_2_naming_the_path_and_writing_nothing(case, run_copy, tmp_path, capsys):
    target, extra = run_copy, []
    if case == "missing":
        target = tmp_path / "nope"
    elif case == "file":
        target = run_copy / "rows.jsonl"
    elif case == "not_a_run":
        target = tmp_path / "empty"
        target.mkdir()
    elif case == "bad_json":
        (run_copy / "run.json").write_text('{"suite": ')
    elif case == "not_an_object":
        (run_copy / "run.json").write_text("[1, 2]")
    elif case == "out_is_folder":
        extra = ["--out", str(tmp_path)]
    elif case == "out_folder_missing":
        extra = ["--out", str(tmp_path / "no" / "such" / "r.html")]
    before = _listing(tmp_path)
    assert cli.main(["report", str(target), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and len(err.splitlines()) == 1, err
    named = {"missing": target, "file": target, "not_a_run": target, "bad_json": run_copy / "run.json",
             "not_an_object": run_copy / "run.json", "out_is_folder": tmp_path,
             "out_folder_missing": tmp_path / "no" / "such" / "r.html"}[case]
    assert str(named) in err
    assert _listing(tmp_path) == before  # nothing written, not even a temporary file


# ------------------------------------------------------------------------------------------ headless browser

# the same test must run in CI, where .ci/run installs Debian's chromium; elsewhere it says what is missing
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def _browser() -> str:
    for name in BROWSERS:
        found = shutil.which(name)
        if found:
            return found
    pytest.skip("no headless browser (install Debian's chromium package) to open the HTML report: "
                f"none of {', '.join(BROWSERS)} is on PATH")


def _chromium(browser: str, *args: str, profile: Path) -> subprocess.CompletedProcess:
    command = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
               "--no-first-run", "--hide-scrollbars", f"--user-data-dir={profile}", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


# appended to a copy of the report: click headers, record the order each click gives
_SORT_PROBE = """<script>
window.addEventListener("load", function(){
  var table = document.querySelector("table.leaderboard");
  var heads = Array.prototype.slice.call(table.tHead.rows[0].cells);
  function column(name){
    var i = heads.findIndex(function(h){ return h.textContent === name; });
    heads[i].click();
    return Array.prototype.map.call(table.tBodies[0].rows, function(r){ return r.cells[i].getAttribute("data-sort"); });
  }
  var up = column("median"), down = column("median"), settings = column("settings");
  document.body.setAttribute("data-probe", JSON.stringify({up: up, down: down, settings: settings}));
});
</script></body>"""


def _body_attributes(dom: str) -> dict:
    match = re.search(r"<body([^>]*)>", dom)
    assert match, dom[:500]
    return dict(re.findall(r'([\w-]+)="([^"]*)"', match.group(1)))


def test_the_report_renders_in_headless_chromium(report, tmp_path):
    browser = _browser()
    path, text, page = report
    result = _chromium(browser, "--virtual-time-budget=10000", "--dump-dom", path.as_uri(), profile=tmp_path / "p1")
    assert result.returncode == 0, result.stderr[-2000:]
    body = _body_attributes(result.stdout)
    assert body.get("data-tables-ok") == "true", body
    assert body.get("data-images-ok") == "true", body
    assert body["data-tables-rendered"] == body["data-tables"] == str(len(page.tables))
    assert body["data-images-loaded"] == body["data-images"] == str(len(page.images)) != "0"

    shot = tmp_path / "report.png"
    result = _chromium(browser, f"--screenshot={shot}", "--window-size=1280,2000", path.as_uri(),
                       profile=tmp_path / "p2")
    assert result.returncode == 0 and shot.is_file(), result.stderr[-2000:]
    data = shot.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 20_000
    width, height = report_html._png_size(data)
    assert (width, height) == (1280, 2000)
    import matplotlib.image

    pixels = matplotlib.image.imread(str(shot))[..., :3]
    assert pixels.std() > 0.05 and (pixels < 0.5).mean() > 0.005  # text and plots, not a blank page
    print(f"headless Chromium screenshot of the report: {shot}")


def test_headers_sort_numbers_as_numbers_with_missing_values_last(report, tmp_path):
    browser = _browser()
    path, text, _ = report
    probe = tmp_path / "probe.html"
    probe.write_text(text.replace("</body>", _SORT_PROBE, 1), encoding="utf-8")
    result = _chromium(browser, "--virtual-time-budget=10000", "--dump-dom", probe.as_uri(), profile=tmp_path / "p")
    assert result.returncode == 0, result.stderr[-2000:]
    import html

    order = json.loads(html.unescape(_body_attributes(result.stdout)["data-probe"]))
    up, down = order["up"], order["down"]
    assert "" in up  # the exploder's cell has no median
    values = [float(v) for v in up if v]
    assert values == sorted(values) and len(values) >= 5 and up[-1] == ""
    values = [float(v) for v in down if v]
    assert values == sorted(values, reverse=True) and down[-1] == ""
    # text compares numbers inside it by value (steps=8 < steps=64 < steps=512), empty settings last
    settings = order["settings"]
    assert [s for s in settings if s.startswith("steps=")] == ["steps=8", "steps=64", "steps=512"]
    assert settings[-1] == "" and settings.count("") == 1
