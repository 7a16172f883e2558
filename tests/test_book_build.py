"""The book's page generator, its execution cache (a real Jupyter kernel) and the Japanese
chapter's checks, without a browser (``tests/test_book.py`` has the browser)."""
from __future__ import annotations

import shutil

import pytest

from book import chapter, chapter_page, execute

SOURCE = """# Title

Intro with $\\mathcal{F}$.

```{.python .input}
#@tab pytorch
import torch
```

```{.python .input}
#@tab jax
import jax
```

:begin_tab:mxnet
MXNet's note.
:end_tab:

:begin_tab:pytorch
PyTorch's note.
:end_tab:

## A section

```{.python .input}
#@tab all
print("same code")
```

```{.python .input}
#@tab pytorch
#@save
def f():
    return 1
```

```{.python .input}
#@tab pytorch
x = 2
```
"""


def test_groups_are_keyed_by_framework():
    groups = [p for p in chapter_page.pieces(SOURCE) if isinstance(p, chapter_page.Group)]
    assert [(g.kind, list(g.tabs)) for g in groups] == [
        ("code", ["pytorch", "jax"]),                  # two frameworks: only their tabs
        ("text", ["pytorch", "mxnet"]),                # in framework order, not the source's
        ("code", list(chapter.FRAMEWORKS)),            # #@tab all: under every tab
        ("code", ["pytorch"]),                         # a framework's second cell starts a group
        ("code", ["pytorch"]),
    ]
    assert groups[2].cells == {"pytorch": 1, "tensorflow": 0, "mxnet": 0, "jax": 1}
    assert groups[3].tabs["pytorch"].startswith("#@save\ndef f():") and groups[4].cells == {"pytorch": 3}
    assert chapter_page.framework_cells(SOURCE)["jax"] == ["import jax", 'print("same code")']


def test_page_carries_sync_keys_outputs_and_english_anchors(tmp_path):
    outputs = {"pytorch": {"mode": "fast", "cells": [[], [{"output_type": "stream", "name": "stdout",
                                                            "text": "same code\n"}], [], []]}}
    labels = [chapter_page.slug(h) for h in chapter_page.headings(SOURCE)]
    assert labels == ["resnet-title", "resnet-a-section"]
    ja = SOURCE.replace("# Title", "# 表題").replace("## A section", "## ある節")
    page = chapter_page.render(ja, "ja", labels, outputs, tmp_path, "_outputs", "../notebooks/")
    assert "(resnet-title)=\n# 表題" in page and "(resnet-a-section)=\n## ある節" in page
    assert page.count(":sync-group: framework") == 5 and ":sync: jax" in page
    assert "出力 (PyTorch, 高速モード、D2LRES_FAST=1)</p><pre>same code</pre>" in page
    assert "この環境には TensorFlow が入っていないため未実行" in page  # no outputs: said so, not left blank
    assert 'href="../notebooks/ja/pytorch/resnet.ipynb"' in page and 'href="../notebooks/pytorch/resnet.ipynb"' in page


def test_a_rebuild_with_nothing_changed_executes_nothing(tmp_path):
    """A real kernel runs the cells once; the same code and set again is read from the cache."""
    cells = ["import os\nx = 6 * 7", "print(x, os.environ.get('D2LRES_FAST'))"]
    out, ran = execute.execute("pytorch", cells, "fast", tmp_path)
    assert ran and out[1][0]["text"] == "42 1\n"
    out, ran = execute.execute("pytorch", cells, "fast", tmp_path)
    assert not ran and out[1][0]["text"] == "42 1\n"
    assert len(list(tmp_path.glob("*.ipynb"))) == 1
    out, ran = execute.execute("pytorch", cells, "full", tmp_path)  # the chapter's settings: no fast mode
    assert ran and out[1][0]["text"] == "42 None\n"
    _, ran = execute.execute("pytorch", [cells[0], "print(x + 1)"], "fast", tmp_path)  # code changed
    assert ran
    _, ran = execute.execute("pytorch", cells, "fast", tmp_path, set_name="current")  # another set
    assert ran
    assert execute.cached_metadata("pytorch", cells, "fast", tmp_path)["mode"] == "fast"


def test_an_error_in_a_cell_stops_the_build(tmp_path):
    import nbclient

    with pytest.raises(nbclient.exceptions.CellExecutionError, match="ZeroDivisionError"):
        execute.execute("jax", ["1 / 0"], "fast", tmp_path)
    assert not list(tmp_path.glob("*.ipynb"))


# --------------------------------------------------------------------------- the Japanese chapter


@pytest.fixture
def two_languages(tmp_path):
    """The English source and a Japanese one made from it (its headings and prose replaced)."""
    en = tmp_path / "resnet.md"
    shutil.copy(chapter.SOURCE, en)
    text = en.read_text()
    ja_text = "".join(("# 日本語の見出し\n" if line.startswith("#") and not line.startswith("#@") else line)
                      if not line.startswith(("Think", "Adding")) else "日本語の本文。\n"
                      for line in text.splitlines(keepends=True))
    (tmp_path / "ja").mkdir()
    ja = tmp_path / "ja" / "resnet.md"
    ja.write_text(ja_text)
    return en, ja


def test_japanese_code_cells_must_be_the_english_ones(two_languages):
    en, ja = two_languages
    assert chapter.same_code_problems(ja.read_text(), ja, en) == []
    text = ja.read_text()
    ja.write_text(text.replace("blk = Residual(3)\nX = tf.random", "blk = Residual(4)\nX = tf.random", 1))
    problems = chapter.same_code_problems(ja.read_text(), ja, en)
    assert len(problems) == 1 and "[tensorflow] differs from" in problems[0]
    cells = chapter.parse_code_cells(text)
    ja.write_text(text[:cells[-1].start - len("```{.python .input}\n")])  # the last cell dropped
    assert any(f"{len(cells) - 1} code cells" in p for p in chapter.same_code_problems(ja.read_text(), ja, en))


def test_japanese_notebooks_are_built_and_checked(two_languages, capsys):
    en, ja = two_languages
    out = ja.parent
    written = chapter.build(ja, out)
    assert [p.parent.name for p in written] == list(chapter.FRAMEWORKS)
    nb = (out / "pytorch" / "resnet.ipynb").read_text()
    assert "日本語の本文。" in nb and "Think of a network" not in nb
    assert chapter.notebook_problems(ja.read_text(), out, chapter.source_name(ja)) == []
    ja.write_text(ja.read_text().replace("日本語の本文。", "別の本文。", 1))
    assert len(chapter.notebook_problems(ja.read_text(), out, chapter.source_name(ja))) == len(chapter.FRAMEWORKS)


def test_full_mode_keeps_the_fast_outputs_of_a_missing_framework(tmp_path, monkeypatch):
    """``make book FULL=1`` where only PyTorch is installed: PyTorch runs the chapter's settings,
    TensorFlow keeps its cached fast run (labelled fast), MXNet and JAX, never run, have none."""
    from book import build

    text = '```{.python .input}\n#@tab all\nimport os\nprint(os.environ.get("D2LRES_FAST"))\n```\n'
    cells = chapter_page.framework_cells(text)
    execute.execute("tensorflow", cells["tensorflow"], "fast", tmp_path)
    monkeypatch.setattr(build.backends, "available", lambda: ["torch"])
    outputs, executed = build.run_outputs(text, "full", tmp_path, "all")
    assert executed == 1 and sorted(outputs) == ["pytorch", "tensorflow"]
    assert outputs["pytorch"]["mode"] == "full" and outputs["pytorch"]["cells"][0][0]["text"] == "None\n"
    assert outputs["tensorflow"]["mode"] == "fast" and outputs["tensorflow"]["cells"][0][0]["text"] == "1\n"


# --------------------------------------------------------------------------- the two editions


def test_a_framework_lacking_the_cells_d2l_names_is_not_executed_and_says_so(tmp_path, monkeypatch):
    """The names are looked up in the backend itself (a fresh process); a framework lacking one
    is not run, and its tabs and the page's note name what is missing, in both languages."""
    from book import build

    assert build.missing_names("d2lres.torch", ["x = d2l.Trainer(1)  # d2l.no_such_name", "d2l.randn(1)"]) \
        == ["no_such_name"]
    text = '(sec-x)=\n# Title\n\n```{.python .input}\n#@tab all\nd2l.get_key()\n```\n'
    monkeypatch.setattr(build, "missing_names", lambda module, cells: ["get_key"] if module == "d2lres.jax" else [])
    monkeypatch.setattr(build.backends, "available", lambda: ["jax"])
    outputs, executed = build.run_outputs(text, "fast", tmp_path, "all")
    assert executed == 0 and outputs == {"jax": {"missing": ["get_key"], "module": "d2lres.jax"}}
    labels = [chapter_page.slug(h, "resnet-1-0") for h in chapter_page.headings(text)]
    for lang, said in (("en", "not executed: d2lres.jax lacks d2l.get_key, which its cells call"),
                       ("ja", "未実行：コードセルが呼ぶ d2l.get_key が d2lres.jax にまだありません")):
        page = build.chapter_md(text, lang, labels, outputs, tmp_path, "notebooks/", True, "1.0")
        assert page.count(said) == 2  # the page's note and the tab
        assert 'href="notebooks/' + ("ja/" if lang == "ja" else "") + 'jax/resnet-1.0.ipynb"' in page
        banner = page.split('<p class="d2lres-edition">')[1].split("</p>")[0]
        assert "1.0" in banner and 'href="resnet.html"' in banner and 'href="index.html"' in banner
        assert ('href="ja/resnet-1.0.html"' if lang == "en" else 'href="../resnet-1.0.html"') in banner
