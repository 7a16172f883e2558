"""Build the book site: the chapter's two editions in English and Japanese with executed outputs, and the docs.

    python -m book.build [--full] [--out build/book]

Steps: each edition's code runs once per framework in a Jupyter kernel (``book.execute``, cached);
each edition's source becomes a MyST page per language (``book.chapter_page``: ``resnet`` the 0.17
edition, ``resnet-1.0`` the 1.0 one) with the outputs merged in by cell; ``docs/*.md``, the API
(from ``d2lres/core/api.py``'s docstrings), the command line's help and the main job's report
become pages; Sphinx writes the English site to ``--out`` and the Japanese chapter pages with
their index to ``--out/ja``; the notebooks of both languages are copied under ``--out/notebooks``
for the tabs' download links. A framework whose backend lacks a ``d2l.<name>`` its cells call is
not executed, and its tabs say which names are missing.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from book import chapter, chapter_page, execute, record
from d2lres.core import api
from d2lres.host import backends

ROOT = Path(__file__).resolve().parent.parent
BOOK = ROOT / "book"
JA_SOURCE = chapter.LANGUAGES["ja"][0]
_D2L_NAME = re.compile(r"\bd2l\.([A-Za-z_]\w*)")
REPORT = ROOT / "runs" / "compare-quick"
CLI_COMMANDS = ["summary", "check", "data", "train", "compare", "bench", "profile"]

CREDIT = {
    ("en", "0.17"): ("This chapter follows “Residual Networks (ResNet)” of *Dive into Deep Learning* (Aston Zhang, "
                     "Zachary C. Lipton, Mu Li, Alexander J. Smola; https://d2l.ai), whose text is licensed under "
                     "CC BY-SA 4.0; its structure and exercises are the book's. The prose here is d2lres's own "
                     "retelling; the code is d2lres's."),
    ("ja", "0.17"): ("本章は『Dive into Deep Learning』（Aston Zhang、Zachary C. Lipton、Mu Li、Alexander J. Smola 著、"
                     "https://d2l.ai、本文は CC BY-SA 4.0）の「Residual Networks (ResNet)」の章に沿っています。"
                     "章の構成と演習は原著のもの、本文は d2lres が日本語で書き起こしたもの、"
                     "コードは d2lres のものです。"),
    ("en", "1.0"): ("This chapter follows “Residual Networks (ResNet) and ResNeXt” of *Dive into Deep Learning*, "
                    "1.0 edition (Aston Zhang, Zachary C. Lipton, Mu Li, Alexander J. Smola; https://d2l.ai), "
                    "whose text is licensed under CC BY-SA 4.0 and its code under a modified MIT license; its "
                    "structure, code cells and exercises are the book's. The prose here is d2lres's own retelling."),
    ("ja", "1.0"): ("本章は『Dive into Deep Learning』1.0 版（Aston Zhang、Zachary C. Lipton、Mu Li、"
                    "Alexander J. Smola 著、https://d2l.ai、本文は CC BY-SA 4.0、コードは修正 MIT ライセンス）の"
                    "「Residual Networks (ResNet) and ResNeXt」の章に沿っています。章の構成、コードセルと演習は"
                    "原著のもの、本文は d2lres が日本語で書き起こしたものです。"),
}
HEADER = {
    "en": "Outputs: {modes}. `make book FULL=1` executes the chapter's settings instead.",
    "ja": "出力：{modes}。`make book FULL=1` で本章の設定どおりに実行します。",
}
RECORDED = {
    "en": " The training cell's output under {tabs} is a run of that cell recorded at lighter settings, "
          "which its label states with the accuracy reached.",
    "ja": " {tabs} のタブの学習のセルの出力は、そのセルを軽い設定で実行して記録したものです"
          "（設定と到達した精度はその出力に記載）。",
}
MODE_TEXT = {
    "en": {"fast": "fast mode (`D2LRES_FAST=1`: 512 images at 32x32, one epoch)", "none": "not executed",
           "full": {"0.17": "the chapter's settings (10 epochs, lr 0.05, batch 256, 96x96)",
                    "1.0": "the chapter's settings (10 epochs, lr 0.01, batch 128, 96x96)"},
           "missing": "not executed: {module} lacks {names}, which its cells call"},
    "ja": {"fast": "高速モード（`D2LRES_FAST=1`：512 枚、32x32、1 エポック）", "none": "未実行",
           "full": {"0.17": "本章の設定（10 エポック、学習率 0.05、バッチ 256、96x96）",
                    "1.0": "本章の設定（10 エポック、学習率 0.01、バッチ 128、96x96）"},
           "missing": "未実行：コードセルが呼ぶ {names} が {module} にまだありません"},
}
#: (language, edition) -> the page's first note: which edition it is, for whom, and the other pages
#: (``{other}``: the other edition's page; ``{lang}``: this edition in the other language; ``{index}``)
EDITION = {
    ("en", "0.17"): ("This page is the chapter's <strong>0.17 edition</strong>, the one ja.d2l.ai prints "
                     "(<code>train_ch6</code>, <code>load_data_fashion_mnist</code>), for ja.d2l.ai's readers; "
                     "its code calls d2lres's own API. d2l.ai's readers read the "
                     "<a href=\"{other}\">1.0 edition</a>. In Japanese: "
                     "<a href=\"{lang}\" hreflang=\"ja\" lang=\"ja\">0.17 版</a>. "
                     "<a href=\"{index}\">Which edition is which</a>."),
    ("en", "1.0"): ("This page is the chapter's <strong>1.0 edition</strong>, the one d2l.ai prints "
                    "(<code>d2l.Classifier</code>, <code>d2l.Trainer</code>, ResNeXt), for d2l.ai's readers; "
                    "its code is the book's, run on d2lres. ja.d2l.ai's readers read the "
                    "<a href=\"{other}\">0.17 edition</a>. In Japanese: "
                    "<a href=\"{lang}\" hreflang=\"ja\" lang=\"ja\">1.0 版</a>. "
                    "<a href=\"{index}\">Which edition is which</a>."),
    ("ja", "0.17"): ("このページは本章の <strong>0.17 版</strong>です。<code>ja.d2l.ai</code> が載せている版"
                     "（<code>train_ch6</code>、<code>load_data_fashion_mnist</code>）で、その読者に向けたものです。"
                     "コードは d2lres 自身の API を呼びます。<code>d2l.ai</code> の読者向けの"
                     "<a href=\"{other}\">1.0 版</a>もあります。"
                     "<a href=\"{lang}\" hreflang=\"en\" lang=\"en\">English (0.17)</a>。"
                     "<a href=\"{index}\">二つの版について</a>。"),
    ("ja", "1.0"): ("このページは本章の <strong>1.0 版</strong>です。<code>d2l.ai</code>（英語）が載せている版"
                    "（<code>d2l.Classifier</code>、<code>d2l.Trainer</code>、ResNeXt）を、<code>d2l.ai</code> の"
                    "読者と、日本語で読みたい <code>ja.d2l.ai</code> の読者に向けて書いたものです。"
                    "コードは原著のもので、d2lres の上で動きます。<code>ja.d2l.ai</code> と同じ"
                    "<a href=\"{other}\">0.17 版</a>もあります。"
                    "<a href=\"{lang}\" hreflang=\"en\" lang=\"en\">English (1.0)</a>。"
                    "<a href=\"{index}\">二つの版について</a>。"),
}
JA_INDEX = """# d2lres：残差ネットワークの章（日本語）

『Dive into Deep Learning』の残差ネットワーク（ResNet）の章を、d2lres の上で動くコードとともに
日本語で読めるページです。章には二つの版があります。

- **1.0 版**（[ResNet と ResNeXt の章](resnet-1.0.md)）：`d2l.ai`（英語）が載せている版です。
  `d2l.Classifier` と `d2l.Trainer` を使い、最後に ResNeXt の節があります。コードは原著のもので、
  `from d2lres import torch as d2l` のように d2lres を読み込むだけで動きます。
- **0.17 版**（[ResNet の章](resnet.md)）：`ja.d2l.ai` が載せている版です。`train_ch6` で学習し、
  コードは d2lres 自身の関数を呼びます。

どちらのページも、フレームワークごとのタブ、実行した出力、ノートブックのダウンロードを備えています。
プロジェクトの文書は英語です。

```{raw} html
<p><a href="../index.html" hreflang="en">プロジェクトの文書（英語）</a></p>
```

```{toctree}
:maxdepth: 2

1.0 版（d2l.ai）<resnet-1.0>
0.17 版（ja.d2l.ai）<resnet>
```
"""


def missing_names(module: str, cells: list[str]) -> list[str]:
    """The ``d2l.<name>``s that ``cells`` call and the backend ``module`` lacks, looked up in a
    fresh process (which imports that framework only)."""
    names = sorted(set(_D2L_NAME.findall("\n".join(cells))))
    if not names:
        return []
    code = (f"import importlib, json; m = importlib.import_module({module!r}); "
            f"print(json.dumps([n for n in {names!r} if not hasattr(m, n)]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         env=execute.kernel_env("fast"), timeout=600)
    if out.returncode:
        raise SystemExit(f"book: could not import {module} to look up its names:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_outputs(text: str, mode: str, cache: Path, set_name: str) -> tuple[dict, int]:
    """Each framework's outputs (executing what the cache lacks) and how many executions ran."""
    cells, have, outputs, executed = chapter_page.framework_cells(text), backends.available(), {}, 0
    for fw, module in chapter.FRAMEWORKS.items():
        short = module.rsplit(".", 1)[1]
        missing = [] if short not in have or execute.cached_metadata(fw, cells[fw], mode, cache, set_name) \
            else missing_names(module, cells[fw])
        if missing:
            print(f"book: {fw}: not executed: {module} lacks d2l.{', d2l.'.join(missing)}", flush=True)
            outputs[fw] = {"missing": missing, "module": module}
        elif short in have:
            tic = time.perf_counter()
            got, ran = execute.execute(fw, cells[fw], mode, cache, set_name)
            executed += ran
            print(f"book: {fw}: {'executed' if ran else 'cached'} ({mode}, {time.perf_counter() - tic:.1f} s)",
                  flush=True)
            outputs[fw] = {"cells": got, "mode": mode}
        elif mode == "full" and execute.cached_metadata(fw, cells[fw], "fast", cache, set_name):
            got, _ = execute.execute(fw, cells[fw], "fast", cache, set_name)
            outputs[fw] = {"cells": got, "mode": "fast"}
            print(f"book: {fw}: not installed; keeping the cached fast outputs", flush=True)
        else:
            print(f"book: {fw}: not installed in this set; its tabs show no outputs", flush=True)
    return outputs, executed


def _mode_text(lang: str, edition: str, got: dict | None) -> str:
    if got is None:
        return MODE_TEXT[lang]["none"]
    if "missing" in got:
        names = ", ".join(f"d2l.{n}" for n in got["missing"])
        return MODE_TEXT[lang]["missing"].format(module=got["module"], names=names)
    text = MODE_TEXT[lang][got["mode"]]
    return text[edition] if isinstance(text, dict) else text


def chapter_md(text: str, lang: str, labels: list[str], outputs: dict, src: Path, notebook_rel: str,
               both: bool, edition: str = "0.17") -> str:
    """The chapter page of ``lang`` in ``edition`` (``both``: the other language is built too)."""
    page = chapter.EDITIONS[edition]
    other = chapter.EDITIONS[next(e for e in chapter.EDITIONS if e != edition)]
    modes = "; ".join(f"{chapter_page.LABELS[fw]} {_mode_text(lang, edition, outputs.get(fw))}"
                      for fw in chapter.FRAMEWORKS)
    if lang == "en":
        links = f'<a class="d2lres-lang-switch" href="ja/{page}.html" hreflang="ja" lang="ja">日本語</a>'
        where = {"other": f"{other}.html", "lang": f"ja/{page}.html", "index": "index.html"}
    else:
        links = (f'<a class="d2lres-lang-switch" href="../{page}.html" hreflang="en" lang="en">English</a> '
                 '<a href="../index.html">プロジェクトの文書（英語）</a>')
        where = {"other": f"{other}.html", "lang": f"../{page}.html", "index": "index.html"}
    switch = f'<div class="d2lres-lang">{links if both else ""}</div>'
    tabs = [chapter_page.LABELS[fw] for fw in chapter.FRAMEWORKS if outputs.get(fw, {}).get("records")]
    recorded = RECORDED[lang].format(tabs=", ".join(tabs) if lang == "en" else "、".join(tabs)) if tabs else ""
    banner = EDITION[lang, edition].format(**where)
    if not both:  # no other language: drop its link
        banner = re.sub(r' ?(In Japanese: )?<a href="[^"]*" hreflang=[^>]*>[^<]*</a>[.。]', "", banner)
    shown = {fw: {"reason": _mode_text(lang, edition, got)} if "missing" in got else got
             for fw, got in outputs.items()}
    body = chapter_page.render(text, lang, labels, shown, src / "_outputs" / page, f"_outputs/{page}", notebook_rel,
                               both, chapter.notebook_name(Path(page + ".md")))
    lines = body.lstrip().split("\n")
    title = next(n for n, line in enumerate(lines) if line.startswith("# "))  # after its labels
    head, rest = "\n".join(lines[:title + 1]), "\n".join(lines[title + 1:])
    return (f"{head}\n\n```{{raw}} html\n{switch}\n<p class=\"d2lres-edition\">{banner}</p>\n```\n\n"
            f"```{{admonition}} {'Outputs' if lang == 'en' else '出力について'}\n:class: note\n"
            f"{HEADER[lang].format(modes=modes)}{recorded}\n```\n{rest}\n\n"
            f"```{{raw}} html\n<p class=\"d2lres-credit\">{CREDIT[lang, edition]}</p>\n```\n")


def api_md() -> str:
    members = ", ".join(api.NAMES)
    return ("# The API\n\nEvery backend package (`d2lres.torch`, `d2lres.tf`, `d2lres.mxnet`, `d2lres.jax`) "
            "exports these names with these signatures; `tests/test_api.py` holds each backend to them. "
            "Generated from `d2lres/core/api.py`'s docstrings.\n\n```{eval-rst}\n.. automodule:: d2lres.core.api\n"
            f"   :members: {members}\n   :undoc-members:\n```\n")


def cli_md() -> str:
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"} | {"COLUMNS": "100"}
    parts = ["# Command-line reference\n\nEach command's `--help`, as this version prints it "
             "(see [the command line](docs/cli.md) for the tour).\n"]
    for args in [[], *[[c] for c in CLI_COMMANDS]]:
        out = subprocess.run([sys.executable, "-m", "d2lres", *args, "--help"], capture_output=True,
                             text=True, env=env, cwd=ROOT, timeout=300)
        parts.append(f"## `d2lres {' '.join(args) or ''}`\n\n```text\n{(out.stdout or out.stderr).strip()}\n```\n")
    return "\n".join(parts)


def report_md(src: Path) -> str:
    head = "# The main job's report\n\n"
    if (REPORT / "report.md").exists():
        files, pngs = src / "report-files", sorted(REPORT.glob("*.png"))
        files.mkdir(exist_ok=True)
        text = (REPORT / "report.md").read_text()
        for png in pngs:
            shutil.copy(png, files / png.name)
            text = text.replace(f"]({png.name})", f"](report-files/{png.name})")
        images = "".join(f"\n![{p.stem}](report-files/{p.name})\n" for p in pngs
                         if f"report-files/{p.name}" not in text)
        return head + "From `runs/compare-quick/` (this machine's last `make run`).\n\n" + _demote(text) + images
    return head + ("No `runs/compare-quick/report.md` here: `make run` trains ResNet-18 in every backend "
                   "from the same weights and writes it (with `curves.png`); `make book` then shows it on "
                   "this page. The last published run is under [Performance](docs/performance.md), "
                   "from `docs/main-job/`.\n")


def _demote(text: str) -> str:
    """A report's headings one level down, below the page's title."""
    return "\n".join("#" + line if line.startswith("#") else line for line in text.split("\n"))


def write_sources(src: Path, src_ja: Path | None, editions: dict[str, tuple[str, str | None, dict]]) -> None:
    """The MyST sources of both sites; ``editions`` maps an edition to its English text, its
    Japanese text (None: not built) and its outputs."""
    for d in (src, src_ja):
        if d is not None:
            shutil.rmtree(d, ignore_errors=True)
            d.mkdir(parents=True)
    shutil.copytree(ROOT / "docs", src / "docs")
    index = (BOOK / "index.md").read_text()
    if src_ja is None:  # the lines of the Japanese links
        index = re.sub(r"\n  ```\{raw\} html\n  <p class=\"d2lres-ja\".*?```\n", "", index, flags=re.S)
    (src / "index.md").write_text(index)
    (src / "api.md").write_text(api_md())
    (src / "cli-help.md").write_text(cli_md())
    (src / "report.md").write_text(report_md(src))
    if src_ja is not None:
        (src_ja / "index.md").write_text(JA_INDEX)
    for edition, (en, ja, outputs) in editions.items():
        page, prefix = chapter.EDITIONS[edition], chapter.EDITIONS[edition].replace(".", "-")
        labels = [chapter_page.slug(h, prefix) for h in chapter_page.headings(en)]
        (src / f"{page}.md").write_text(chapter_md(en, "en", labels, outputs, src, "notebooks/", src_ja is not None,
                                                   edition))
        if src_ja is not None:
            if len(chapter_page.headings(ja)) != len(labels):
                raise SystemExit(f"book: the Japanese {page}.md has {len(chapter_page.headings(ja))} headings, the "
                                 f"English source {len(labels)}: the anchors pair headings by position")
            (src_ja / f"{page}.md").write_text(chapter_md(ja, "ja", labels, outputs, src_ja, "../notebooks/", True,
                                                          edition))


def sphinx(src: Path, out: Path, doctrees: Path, **overrides) -> None:
    from sphinx.application import Sphinx
    from sphinx.util.docutils import docutils_namespace

    with docutils_namespace():
        app = Sphinx(str(src), str(BOOK), str(out), str(doctrees), "html", confoverrides=overrides,
                     status=None, warning=sys.stderr, keep_going=True, freshenv=True)
        app.build()
        if app.statuscode:
            raise SystemExit(f"book: sphinx failed for {src}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m book.build", description=__doc__.split("\n")[0])
    parser.add_argument("--full", action="store_true", help="the chapter's settings, not fast mode")
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "book")
    parser.add_argument("--cache", type=Path, default=ROOT / "build" / "book-cache",
                        help="executed notebooks, by hash (%(default)s)")
    parser.add_argument("--set", default=os.environ.get("SET", "all"), help="the constraint set (for the cache key)")
    args = parser.parse_args(argv)
    tic = time.perf_counter()
    editions, executed = {}, 0
    has_ja = all(chapter.edition_source("ja", e).exists() for e in chapter.EDITIONS)
    if not has_ja:
        print("book: the Japanese sources are not all there: the Japanese chapter is not built", file=sys.stderr)
    for edition in chapter.EDITIONS:
        en_source, ja_source = chapter.edition_source("en", edition), chapter.edition_source("ja", edition)
        en = en_source.read_text()
        ja = ja_source.read_text() if has_ja else None
        if ja is not None:
            problems = chapter.same_code_problems(ja, ja_source, en_source)
            if problems:
                raise SystemExit("book: the Japanese code cells differ from the English source's:\n"
                                 + "\n".join(problems))
        print(f"book: the {edition} edition", flush=True)
        outputs, ran = run_outputs(en, "full" if args.full else "fast", args.cache, args.set)
        if not args.full:  # the training cells' recorded runs, where current
            print("\n".join(record.apply(outputs, en_source, chapter_page.framework_cells(en))), flush=True)
        editions[edition], executed = (en, ja, outputs), executed + ran
    work = args.out.parent / (args.out.name + "-src")
    write_sources(work / "en", work / "ja" if has_ja else None, editions)
    shutil.rmtree(args.out, ignore_errors=True)
    sphinx(work / "en", args.out, work / "doctrees-en")
    if has_ja:
        sphinx(work / "ja", args.out / "ja", work / "doctrees-ja", language="ja", html_title="d2lres（日本語）")
    for lang, (_, folder) in chapter.LANGUAGES.items():
        for fw in chapter.FRAMEWORKS:
            for page in chapter.EDITIONS.values():
                nb = chapter.notebook_path(folder, fw, f"{page}.ipynb")
                if nb.exists():
                    dest = args.out / "notebooks" / ("ja" if lang == "ja" else "") / fw / nb.name
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy(nb, dest)
    for empty in args.out.rglob("_sources"):  # html_copy_source is off; Sphinx leaves the folder
        empty.rmdir()
    pages = sorted(args.out.rglob("*.html"))
    size = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
    print(f"book: {len(pages)} pages, {size / 1e6:.1f} MB in {args.out}; notebooks executed: {executed}; "
          f"{time.perf_counter() - tic:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
