"""The Japanese chapter of each edition (notebooks/ja/resnet.md, the 0.17 edition;
notebooks/ja/resnet-1.0.md, the 1.0 edition) against its English source: the same code cells in
the same order, the same headings, labels and tab passages, and no English prose left (the
glossary's allowed words aside). Framework-free: text only."""
import re
from pathlib import Path

import pytest

from book import chapter

ROOT = Path(__file__).resolve().parent.parent
EN = ROOT / "notebooks" / "resnet.md"
JA = ROOT / "notebooks" / "ja" / "resnet.md"
GLOSSARY = ROOT / "docs" / "glossary-ja.md"

_ANY_FENCE = re.compile(r"^```.*?^```[ \t]*$", re.M | re.S)
_HEADING = re.compile(r"^(#{1,6})[ \t]+\S", re.M)
_TARGET = re.compile(r"^\(([\w-]+)\)=[ \t]*$", re.M)
_BEGIN_TAB = re.compile(r"^:begin_tab:.*$", re.M)
# removed before looking for words: math, inline code, link targets, HTML, labels, tab markers
_NOT_PROSE = [re.compile(r"\$\$.*?\$\$", re.S)] + [re.compile(p, re.M) for p in
              (r"\$[^$]*\$", r"`[^`]*`", r"\]\([^)]*\)", r"<[^>]*>", r"^\([\w-]+\)=[ \t]*$",
               r"^:(?:begin|end)_tab:.*$")]
_WORD = re.compile(r"[A-Za-z][A-Za-z0-9]*(?:-[A-Za-z][A-Za-z0-9]*)*")
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u9fff\uff01-\uff5e]")
_KATAKANA = re.compile(r"[\u30a0-\u30ff]+")


def _blank(m: re.Match) -> str:
    """The match replaced by its newlines only, so that line numbers stay."""
    return "\n" * m.group(0).count("\n")


def without_code(text: str) -> str:
    return _ANY_FENCE.sub(_blank, text)


def prose(text: str) -> str:
    """The text a reader reads as sentences: no code cells, math, inline code, link targets."""
    text = without_code(text)
    for pattern in _NOT_PROSE:
        text = pattern.sub(_blank, text)
    return text


def allowed_words(glossary: str) -> set[str]:
    section = glossary.split("## Allowed English words", 1)[1]
    return set(re.search(r"^```text\n(.*?)^```", section, re.M | re.S).group(1).split())


def glossary_japanese(glossary: str) -> str:
    """The 日本語 column of the glossary's tables, joined."""
    return "\n".join(row.split("|")[1].strip() for row in glossary.splitlines()
                     if row.startswith("|") and not row.startswith(("| 日本語", "|---")))


def english_words(text: str, allowed: set[str]) -> list[str]:
    """``line: word`` for every Latin-script word of the prose that is not allowed."""
    return [f"{n}: {w}" for n, line in enumerate(prose(text).split("\n"), 1)
            for w in _WORD.findall(line) if w not in allowed]


def code_cells(text: str) -> list[str]:
    """Each code cell as written, markers included."""
    return [text[c.start:c.end] for c in chapter.parse_code_cells(text)]


def outline(text: str) -> list[str]:
    """Heading levels, section labels and tab passages, in order (``#``, ``(label)=``, ``:begin_tab:X``)."""
    text = without_code(text)
    marks = [(m.start(), m.group(1)) for m in _HEADING.finditer(text)]
    marks += [(m.start(), m.group(0)) for m in _TARGET.finditer(text)]
    marks += [(m.start(), m.group(0).strip()) for m in _BEGIN_TAB.finditer(text)]
    return [mark for _, mark in sorted(marks)]


@pytest.fixture(scope="module", params=list(chapter.EDITIONS))
def sources(request):
    """(English, Japanese, glossary) of one edition."""
    en, ja = (chapter.edition_source(lang, request.param) for lang in ("en", "ja"))
    return en.read_text(), ja.read_text(), GLOSSARY.read_text()


@pytest.fixture(scope="module")
def sources_017():
    return EN.read_text(), JA.read_text(), GLOSSARY.read_text()


def test_same_code_cells_in_the_same_order(sources):
    en, ja, _ = sources
    en_cells, ja_cells = code_cells(en), code_cells(ja)
    assert len(en_cells) == len(ja_cells) > 20
    for i, (a, b) in enumerate(zip(en_cells, ja_cells)):
        assert a == b, f"code cell {i + 1} differs"
    assert [(c.tabs, c.save) for c in chapter.parse_code_cells(en)] == \
        [(c.tabs, c.save) for c in chapter.parse_code_cells(ja)]


def test_same_headings_labels_and_tab_passages(sources):
    en, ja, _ = sources
    en_outline, ja_outline = outline(en), outline(ja)
    assert en_outline == ja_outline
    assert en_outline.count("##") >= 6 and en_outline[0].startswith("(sec-resnet") and en_outline[1] == "#"
    # every label sits right on its heading, so a language switch lands on the same section
    for text in (en, ja):
        lines = without_code(text).split("\n")
        for n, line in enumerate(lines):
            if _TARGET.match(line):
                assert _HEADING.match(lines[n + 1]), f"label {line} is not followed by a heading"


def test_no_english_prose_on_the_japanese_page(sources):
    _, ja, glossary = sources
    assert english_words(ja, allowed_words(glossary)) == []
    for n, block in enumerate(re.split(r"\n[ \t]*\n", prose(ja))):
        if re.search(r"[^\W\d_]", block):
            assert _CJK.search(block), f"block {n} has no Japanese: {block.strip()[:80]!r}"


def test_the_checks_catch_english_prose_and_changed_code(sources_017):
    en, ja, glossary = sources_017
    allowed = allowed_words(glossary)
    found = {w.split(": ")[1] for w in english_words(en, allowed)}
    assert {"residual", "block", "the", "Summary"} <= found
    sentence = ja.replace("## まとめ\n", "## まとめ\n\nThe residual block adds its input back.\n", 1)
    assert [w.split(": ")[1] for w in english_words(sentence, allowed)] == \
        ["The", "residual", "block", "adds", "its", "input", "back"]
    # words inside code, math, inline code and link targets are not prose
    assert english_words("見る `net` と $\\mathbf{x}$ と [d2lres](docs/api.md)\n", allowed) == []
    cell = code_cells(ja)[-1]
    assert code_cells(ja.replace(cell, cell.replace("v2", "v3"), 1)) != code_cells(en)
    assert outline(ja.replace("### 解答例", "## 解答例", 1)) != outline(en)


def test_glossary_covers_the_pages_katakana(sources):
    en, ja, glossary = sources
    terms = glossary_japanese(glossary)
    used = ("残差ブロック", "残差接続", "恒等写像", "バッチ正規化", "畳み込み層", "全結合層",
            "大域平均プーリング", "最大値プーリング", "関数クラス", "学習率")
    used += ("勾配消失", "過学習") if "train_ch6" in en else ("グループ畳み込み", "遅延初期化")
    for term in used:
        assert term in terms and term in ja
    missing = sorted({k for k in _KATAKANA.findall(prose(ja)) if k not in terms})
    assert missing == [], f"katakana words not in docs/glossary-ja.md: {missing}"
