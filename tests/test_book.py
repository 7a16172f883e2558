"""The built book site in a real browser: Debian's Chromium driven by Playwright, on the site
served from 127.0.0.1 and opened from ``file://``, in English and Japanese.

Both editions of the chapter (``resnet.html``: 0.17, ``resnet-1.0.html``: 1.0) are held to the same
checks. Run ``make book`` first; without the site, Playwright or Chromium every test here is skipped
with the reason. Screenshots of the chapter go to ``build/book-screenshots/``, with the requests
each page made (``requests.json``)."""
from __future__ import annotations

import functools
import http.server
import json
import re
import threading
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

from book import chapter, record
from book.chapter_page import LABELS
from d2lres import spec
from d2lres.host import backends

ROOT = Path(__file__).resolve().parent.parent
SITE = ROOT / "build" / "book"
SHOTS = ROOT / "build" / "book-screenshots"
CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--no-first-run"]
HAS_JA = all(chapter.edition_source("ja", edition).exists() for edition in chapter.EDITIONS)
#: edition -> its chapter page
PAGES = {edition: f"{name}.html" for edition, name in chapter.EDITIONS.items()}

try:
    import playwright.sync_api as pw
except ImportError:
    pw = None

pytestmark = [
    pytest.mark.skipif(not (SITE / "resnet.html").exists(), reason=f"the site is not built ({SITE}): run `make book`"),
    pytest.mark.skipif(pw is None, reason="playwright is not installed (the `book` extra: `make book`)"),
    pytest.mark.skipif(not CHROMIUM.exists(), reason="no /usr/bin/chromium (apt-get install chromium)"),
]

CHAPTERS = [*PAGES.values()] + ([f"ja/{page}" for page in PAGES.values()] if HAS_JA else [])
needs_ja = pytest.mark.skipif(not HAS_JA, reason="no notebooks/ja/resnet.md: the Japanese chapter is not built")
# Text outside code that betrays unrendered markup: raw math, d2l's roles and tab markers.
RAW = re.compile(r"\$[^$\s][^$\n]*\$|\\mathcal|\\mathbf|:numref:|:begin_tab:|:end_tab:|#@tab")
PROSE_JS = """(root) => {
  const skip = "pre, code, kbd, samp, math, script, style, .d2lres-output, .d2lres-nb";
  const out = [];
  const walk = document.createTreeWalker(document.querySelector(root), NodeFilter.SHOW_TEXT);
  for (let n = walk.nextNode(); n; n = walk.nextNode()) {
    if (!n.parentElement.closest(skip)) out.push(n.textContent);
  }
  return out.join(" ");
}"""


# The sections' labels (the chapter's, ``resnet-...``, from the English headings), in order.
SECTION_LABELS = """() => [...document.querySelectorAll('article section')].map(s =>
    [s.id, ...[...s.querySelectorAll(':scope > span[id]')].map(x => x.id)].find(id => id.startsWith('resnet-')))"""


def pages() -> list[str]:
    return sorted(p.relative_to(SITE).as_posix() for p in SITE.rglob("*.html"))


@pytest.fixture(scope="module")
def server():
    handler = functools.partial(_QuietHandler, directory=str(SITE))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()
    httpd.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def browser():
    with pw.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield b
        b.close()


@pytest.fixture(params=["http", "file"])
def base(request, server):
    return server if request.param == "http" else SITE.as_uri() + "/"


class Watched:
    """A browser context whose pages' console errors and requests are recorded."""

    def __init__(self, browser, base: str):
        self.base, self.errors, self.requests = base, [], {}
        self.context = browser.new_context(viewport={"width": 1280, "height": 1500})
        self.page = self.context.new_page()
        self.page.on("console", lambda m: m.type == "error" and self.errors.append(f"{self.page.url}: {m.text}"))
        self.page.on("pageerror", lambda e: self.errors.append(f"{self.page.url}: {e}"))
        self.page.on("request", self._request)
        self.current = None

    def _request(self, request):
        self.requests.setdefault(self.current, []).append(request.url)

    def goto(self, path: str):
        self.current = path
        self.page.goto(self.base + path)
        self.page.wait_for_load_state("load")
        return self.page

    def foreign(self) -> list[str]:
        """Every request not to the local server (or, from ``file://``, not to a file of the site)."""
        site = urlsplit(self.base)
        bad = []
        for page, urls in self.requests.items():
            for url in urls:
                u = urlsplit(url)
                if u.scheme in ("data", "about", "blob"):
                    continue
                if (u.scheme, u.netloc) != (site.scheme, site.netloc) or not u.path.startswith(site.path):
                    bad.append(f"{page}: {url}")
        return bad


@pytest.fixture
def watched(browser, base):
    w = Watched(browser, base)
    yield w
    w.context.close()


def checked(page) -> list[tuple[int, str]]:
    """(tab set index, the sync id of its chosen tab) for every tab set of the page."""
    return page.evaluate("""() => [...document.querySelectorAll('.sd-tab-set')].map((set, i) =>
        [i, set.querySelector(':scope > input:checked + label').dataset.syncId])""")


def keys(page) -> list[list[str]]:
    return page.evaluate("""() => [...document.querySelectorAll('.sd-tab-set')].map(set =>
        [...set.querySelectorAll(':scope > label')].map(l => l.dataset.syncId))""")


def choose(page, framework: str, set_index: int = 0):
    page.locator(".sd-tab-set").nth(set_index).locator(f":scope > label[data-sync-id='{framework}']").click()


def expect_choice(page, framework: str):
    """Every tab set that has ``framework`` shows it; the others show their first tab."""
    for (i, chosen), tabs in zip(checked(page), keys(page)):
        assert chosen == (framework if framework in tabs else tabs[0]), (page.url, i, tabs, chosen)
    visible = page.evaluate("""() => [...document.querySelectorAll('.sd-tab-set')].map(set =>
        [...set.querySelectorAll(':scope > .sd-tab-content')].filter(c => c.offsetParent !== null).length)""")
    assert visible and all(n == 1 for n in visible), visible


# --------------------------------------------------------------------------- every page


def test_every_page_loads_clean_and_local(watched):
    """No console error, no request elsewhere, every image loaded, no raw math or markup."""
    report = {}
    for path in pages():
        page = watched.goto(path)
        images = page.evaluate("() => [...document.images].map(i => [i.src, i.complete && i.naturalWidth > 0])")
        assert all(ok for _, ok in images), (path, [src for src, ok in images if not ok])
        text = page.evaluate(PROSE_JS, "article")
        assert not RAW.search(text), (path, RAW.search(text).group(0))
        report[path] = sorted({u.replace(watched.base, "") for u in watched.requests.get(path, [])})
    assert not watched.errors, watched.errors
    assert not watched.foreign(), watched.foreign()
    SHOTS.mkdir(parents=True, exist_ok=True)
    kind = "http" if watched.base.startswith("http") else "file"
    (SHOTS / f"requests-{kind}.json").write_text(json.dumps(report, indent=1))


def test_math_is_mathml():
    html = (SITE / "resnet.html").read_text()
    assert html.count("<math ") >= 10 and "\\mathcal" not in html.split("<math", 1)[1].split("</math>")[0]
    scripts = re.findall(r"<script[^>]*src=\"([^\"]+)\"", html)
    assert scripts and not [s for s in scripts if "mathjax" in s.lower() or "katex" in s.lower()], scripts


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.links, self.ids = [], set()

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "id" in a:
            self.ids.add(a["id"])
        if tag == "a" and a.get("name"):
            self.ids.add(a["name"])
        for key in ("href", "src"):
            if a.get(key) and not (tag == "link" and key == "href" and a.get("rel") == "canonical"):
                self.links.append(a[key])


@functools.cache
def _parsed(path: Path) -> _Links:
    parser = _Links()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser


def test_every_internal_link_and_anchor_resolves():
    broken, count = [], 0
    for rel in pages():
        path = SITE / rel
        for link in _parsed(path).links:
            u = urlsplit(link)
            if u.scheme or u.netloc or link.startswith("mailto:"):
                continue
            count += 1
            target = (path.parent / unquote(u.path)).resolve() if u.path else path
            if target.is_dir():
                target = target / "index.html"
            if not target.exists() or SITE.resolve() not in target.parents:
                broken.append(f"{rel}: {link} (no such file)")
            elif u.fragment and target.suffix == ".html" and unquote(u.fragment) not in _parsed(target).ids:
                broken.append(f"{rel}: {link} (no such anchor)")
    assert count > 100 and not broken, broken


# --------------------------------------------------------------------------- tabs


def test_a_tab_switches_every_group_and_is_remembered(watched):
    page = watched.goto("resnet.html")
    sets = keys(page)
    assert len(sets) >= 10 and all(tabs == list(chapter.FRAMEWORKS) for tabs in sets), sets
    expect_choice(page, "pytorch")
    choose(page, "mxnet", 3)
    expect_choice(page, "mxnet")
    page.reload()
    expect_choice(watched.page, "mxnet")
    page = watched.goto("docs/book.html")  # a group without MXNet beside one with it
    assert [len(t) for t in keys(page)] == [4, 3]
    expect_choice(page, "mxnet")  # the three-tab group keeps its first tab: no shift by position
    assert "-k torch" in page.locator(".sd-tab-set").nth(1).locator(".sd-tab-content:visible").inner_text()
    choose(page, "jax", 1)
    expect_choice(page, "jax")
    for path in CHAPTERS:
        expect_choice(watched.goto(path), "jax")
    assert not watched.errors and not watched.foreign()


@needs_ja
@pytest.mark.parametrize("chapter_page", PAGES.values())
def test_language_switch_leads_to_the_same_section(watched, chapter_page):
    page = watched.goto(chapter_page)
    en_ids = page.evaluate(SECTION_LABELS)
    assert len(en_ids) >= 8
    target = en_ids[3]
    choose(page, "tensorflow")
    page.evaluate("""(id) => { document.documentElement.style.scrollBehavior = 'auto';
        window.scrollTo(0, document.getElementById(id).getBoundingClientRect().top + window.scrollY + 5); }""", target)
    page.locator("a.d2lres-lang-switch").click()
    page.wait_for_load_state("load")
    assert page.url.endswith(f"ja/{chapter_page}#{target}"), page.url
    assert page.evaluate("() => document.documentElement.lang") == "ja"
    ja_ids = page.evaluate(SECTION_LABELS)
    assert ja_ids == en_ids
    expect_choice(page, "tensorflow")
    top = "(id) => document.getElementById(id).getBoundingClientRect().top"
    page.wait_for_function(f"() => Math.abs(({top})('{target}')) < 80")  # landed on the section
    page.locator("a.d2lres-lang-switch").click()
    page.wait_for_load_state("load")
    assert page.url.endswith(f"/{chapter_page}#{target}") and "/ja/" not in page.url
    page.wait_for_function(f"() => Math.abs(({top})('{target}')) < 80")
    assert not watched.errors and not watched.foreign()


# --------------------------------------------------------------------------- the chapter's content


def _code_tabs(page) -> list[tuple[str, str]]:
    """(framework, code) of every code tab, in page order."""
    return [tuple(x) for x in page.evaluate("""() => [...document.querySelectorAll('.sd-tab-set.d2lres-code')]
        .flatMap(set => [...set.querySelectorAll(':scope > label')].map(l =>
            [l.dataset.syncId, l.nextElementSibling.querySelector('div.highlight pre').textContent]))""")]


#: edition -> the #@save cells of its source: (framework, names)
SAVED = {"0.17": sorted((fw, name) for fw in chapter.FRAMEWORKS for name in ("Residual", "resnet_block")),
         "1.0": [("pytorch", "Residual")]}


@pytest.mark.parametrize("edition", PAGES)
def test_save_cells_under_their_tabs_and_both_languages_carry_the_same_code(browser, server, edition):
    w = Watched(browser, server)
    try:
        en = _code_tabs(w.goto(PAGES[edition]))
        cells = chapter.parse_code_cells(chapter.edition_source("en", edition).read_text())
        for cell in cells:
            want = ("#@save\n" if cell.save else "") + cell.code + "\n"
            tabs = list(chapter.FRAMEWORKS) if "all" in cell.tabs else cell.tabs
            for fw in tabs:
                assert (fw, want) in en, f"cell at line {cell.line} not under the {fw} tab"
        saved = sorted((c.tabs[0], name) for c in cells if c.save for name in chapter.defined_names(c.code))
        assert saved == SAVED[edition]
        if HAS_JA:
            assert _code_tabs(w.goto(f"ja/{PAGES[edition]}")) == en
    finally:
        w.context.close()


def test_outputs_are_under_each_tab(browser, server):
    """The executed outputs (the blocks' shapes, the shape walk, parameter counts, training lines
    and curve) under each installed framework's tab, labelled with their mode: what a real kernel
    printed when ``make book`` executed the framework's chapter; the training cell's recorded run
    where its record is current."""
    recorded = {fw: state for name, fw, state in record.status() if name == "resnet-0.17/train"}
    w = Watched(browser, server)
    try:
        page = w.goto("resnet.html")
        for fw, module in chapter.FRAMEWORKS.items():
            outs = page.evaluate("""(fw) => [...document.querySelectorAll(
                    `.sd-tab-set.d2lres-code > label[data-sync-id=${fw}]`)].map(l => l.nextElementSibling)
                .map(c => [c.querySelector('.d2lres-output')?.innerText || '', c.querySelectorAll('img').length])""",
                                 fw)
            text = "\n".join(t for t, _ in outs)
            if module.rsplit(".", 1)[1] not in backends.available():
                continue
            nhwc = fw in ("tensorflow", "jax")
            assert ("Residual(3): (4, 6, 6, 3)" if nhwc else "Residual(3): (4, 3, 6, 6)") in text, fw
            assert ("strides=2): (4, 3, 3, 6)" if nhwc else "strides=2): (4, 6, 3, 3)") in text, fw
            walk = "\n".join(f"{name:<13} output shape: {shape}" for name, shape, _ in spec.walk((1, 224, 224)))
            assert walk in text and "b5            output shape: (512, 7, 7)" in text, fw
            assert "trainable parameters: 11,178,378" in text and "BatchNorm running statistics: 7,808" in text
            assert "train acc" in text and "examples/sec" in text
            assert re.search(r"\((PyTorch|TensorFlow|MXNet|JAX), (fast mode, D2LRES_FAST=1|the chapter's settings)\)",
                             text), text[:300]
            assert sum(n for _, n in outs) >= 1, f"{fw}: no training curve"
            if recorded.get(fw) == "current":  # the training cell shows its recorded run, labelled
                assert (f"({LABELS[fw]}, a recorded run of this cell at lighter settings: " in text
                        and "To reproduce: make record RECIPE=resnet-0.17/train" in text), text[-600:]
    finally:
        w.context.close()


#: What the 1.0 edition's cells print before and after training, per framework: the two Residual
#: blocks, the layer summary's last stage, the two ResNeXt blocks.
SHAPES_1_0 = {
    "pytorch": ["torch.Size([4, 3, 6, 6])", "torch.Size([4, 6, 3, 3])", "torch.Size([1, 512, 3, 3])",
                "torch.Size([4, 32, 96, 96])", "torch.Size([4, 64, 48, 48])"],
    "mxnet": ["(4, 3, 6, 6)", "(4, 6, 3, 3)", "(1, 512, 3, 3)", "(4, 32, 96, 96)", "(4, 64, 48, 48)"],
    "tensorflow": ["TensorShape([4, 6, 6, 3])", "TensorShape([4, 3, 3, 6])", "(1, 3, 3, 512)",
                   "TensorShape([4, 96, 96, 32])", "TensorShape([4, 48, 48, 64])"],
    "jax": ["(4, 6, 6, 3)", "(4, 3, 3, 6)", "(1, 3, 3, 512)", "(4, 96, 96, 32)", "(4, 48, 48, 64)"],
}


def test_outputs_of_the_1_0_edition_are_under_each_tab(browser, server):
    """The 1.0 page: each installed framework's block shapes, layer summary, ResNeXt shapes and
    training board, labelled with their mode (the training cell's: its record, where current)."""
    w = Watched(browser, server)
    try:
        page = w.goto(PAGES["1.0"])
        for fw, module in chapter.FRAMEWORKS.items():
            tabs = page.evaluate("""(fw) => [...document.querySelectorAll(
                    `.sd-tab-set.d2lres-code > label[data-sync-id=${fw}]`)].map(l => l.nextElementSibling)
                .map(c => [c.querySelector('.d2lres-output')?.innerText || '',
                           [...c.querySelectorAll('.d2lres-out-label')].map(p => p.innerText).join(' '),
                           c.querySelectorAll('img').length])""", fw)
            text, labels = "\n".join(t for t, _, _ in tabs), " ".join(lb for _, lb, _ in tabs)
            if module.rsplit(".", 1)[1] not in backends.available():
                continue
            assert f"{module} lacks d2l." not in labels, (fw, labels[:300])  # every backend has d2l 1.0's names
            found = [shape for shape in SHAPES_1_0[fw] if shape in text]
            assert found == SHAPES_1_0[fw], (fw, text[:1000])
            assert f"({LABELS[fw]}, fast mode, D2LRES_FAST=1)" in labels or \
                f"({LABELS[fw]}, the chapter's settings)" in labels, labels[:300]
            assert sum(n for _, _, n in tabs) >= 1, f"{fw}: no training board"
    finally:
        w.context.close()


@pytest.mark.parametrize("path", CHAPTERS)
def test_each_page_says_its_edition_and_links_the_others(path):
    """Which edition, for whom, and links to the other edition, the other language and the index."""
    lang, page = ("ja", path[3:]) if path.startswith("ja/") else ("en", path)
    edition = next(e for e, p in PAGES.items() if p == page)
    other = next(p for p in PAGES.values() if p != page)
    banner = re.search(r'<p class="d2lres-edition">(.*?)</p>', (SITE / path).read_text(), re.S).group(1)
    text = re.sub(r"<[^>]+>", "", banner)
    assert (f"{edition} edition" if lang == "en" else f"{edition} 版") in text
    assert ("d2l.ai" if edition == "1.0" else "ja.d2l.ai") in text
    links = re.findall(r'href="([^"]+)"', banner)
    if HAS_JA:
        assert links == [other, f"ja/{page}" if lang == "en" else f"../{page}", "index.html"], links
    for link in links:
        assert (SITE / path).parent.joinpath(link).resolve().exists(), link


def test_the_index_pages_say_which_edition_is_which():
    index = (SITE / "index.html").read_text()
    for page in PAGES.values():
        assert f'href="{page}"' in index and (not HAS_JA or f'href="ja/{page}"' in index)
    assert "the one d2l.ai prints" in index and "the one ja.d2l.ai prints" in index
    if HAS_JA:
        ja = (SITE / "ja" / "index.html").read_text()
        assert all(f'href="{page}"' in ja for page in PAGES.values()) and "0.17 版" in ja and "1.0 版" in ja


@needs_ja
@pytest.mark.parametrize("path", [f"ja/{page}" for page in PAGES.values()] + ["ja/index.html"])
def test_no_english_prose_on_the_japanese_page(browser, server, path):
    w = Watched(browser, server)
    try:
        page = w.goto(path)
        text = page.evaluate(PROSE_JS, "article")
    finally:
        w.context.close()
    assert len(re.findall(r"[\u3040-\u30ff\u4e00-\u9fff]", text)) > (2000 if "resnet" in path else 200)
    allowed = _loanwords()
    runs = [m.group(0) for m in re.finditer(r"[A-Za-z][A-Za-z'-]*(?:[ ,]+[A-Za-z][A-Za-z'-]*){3,}", text)]
    english = [r for r in runs if not any(a.lower() in r.lower() for a in allowed)]
    assert not english, english


def _loanwords() -> set[str]:
    """Names and titles, and the glossary's English column (docs/glossary-ja.md), kept as written."""
    names = {"Dive into Deep Learning", "Aston Zhang", "Zachary C. Lipton", "Alexander J. Smola",
             "Residual Networks (ResNet)", "CC BY-SA", "Mu Li", "English (0.17)", "English (1.0)"}
    glossary = ROOT / "docs" / "glossary-ja.md"
    if glossary.exists():
        for line in glossary.read_text().split("\n"):
            names.update(c.strip(" `*") for c in line.split("|") if re.fullmatch(r"[ `*A-Za-z0-9().,/'-]+", c)
                         and len(c.strip(" `*")) > 3)
    return names


@pytest.mark.parametrize("path", CHAPTERS)
def test_chapter_screenshot(browser, server, path):
    """The chapter with JAX chosen, at the residual block and at the training section, as test
    artifacts (``build/book-screenshots/<page>-{en,ja}-{block,training}.png``; the 1.0 page with
    PyTorch chosen, and at its ResNeXt section too)."""
    w = Watched(browser, server)
    try:
        page = w.goto(path)
        one = "1.0" in path
        choose(page, "pytorch" if one else "jax")
        SHOTS.mkdir(parents=True, exist_ok=True)
        lang = "ja" if path.startswith("ja/") else "en"
        stem = path.removeprefix("ja/").removesuffix(".html")
        for name, section in (("top", 0), ("block", 2), ("training", 4), ("resnext", 5)) if one else \
                (("block", 2), ("training", 4)):
            page.evaluate("""(i) => { document.documentElement.style.scrollBehavior = 'auto';
                const s = document.querySelectorAll('article section[id]')[i];
                window.scrollTo(0, s.getBoundingClientRect().top + window.scrollY - 10); }""", section)
            page.wait_for_timeout(300)
            out = SHOTS / f"{stem}-{lang}-{name}.png"
            page.screenshot(path=str(out))
            assert out.stat().st_size > 50_000
    finally:
        w.context.close()


@pytest.mark.parametrize("path", ["search.html?q=residual"] + (["ja/search.html?q=残差"] if HAS_JA else []))
def test_search_works_offline(watched, path):
    page = watched.goto(path)
    page.wait_for_selector("#search-results ul li", timeout=20_000)
    assert page.locator("#search-results ul li").count() >= 1
    assert not watched.errors and not watched.foreign()


def test_the_notebooks_are_in_the_site():
    """The tabs' download links serve the committed notebooks of every language and edition built."""
    for lang, (_, folder) in chapter.LANGUAGES.items():
        if lang == "en" or HAS_JA:
            for fw in chapter.FRAMEWORKS:
                for name in chapter.EDITIONS.values():
                    rel = ("ja/" if lang == "ja" else "") + f"{fw}/{name}.ipynb"
                    assert (SITE / "notebooks" / rel).read_bytes() == \
                        chapter.notebook_path(folder, fw, f"{name}.ipynb").read_bytes()
    assert not (SITE / "_sources").exists()
