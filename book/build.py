"""Build the book site: the chapter in English and Japanese with executed outputs, and the docs.

    python -m book.build [--full] [--out build/book]

Steps: each framework's chapter code runs once in a Jupyter kernel (``book.execute``, cached);
the chapter source becomes a MyST page per language (``book.chapter_page``) with the outputs
merged in by cell; ``docs/*.md``, the API (from ``d2lres/core/api.py``'s docstrings), the command
line's help and the main job's report become pages; Sphinx writes the English site to ``--out``
and the Japanese chapter to ``--out/ja``; the notebooks of both languages are copied under
``--out/notebooks`` for the tabs' download links.
"""
from __future__ import annotations

import argparse
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
REPORT = ROOT / "runs" / "compare-quick"
CLI_COMMANDS = ["summary", "check", "data", "train", "compare", "bench", "profile"]

CREDIT = {
    "en": ("This chapter follows “Residual Networks (ResNet)” of *Dive into Deep Learning* (Aston Zhang, "
           "Zachary C. Lipton, Mu Li, Alexander J. Smola; https://d2l.ai), whose text is licensed under "
           "CC BY-SA 4.0; its structure and exercises are the book's. The prose here is d2lres's own "
           "retelling; the code is d2lres's."),
    "ja": ("本章は『Dive into Deep Learning』（Aston Zhang、Zachary C. Lipton、Mu Li、Alexander J. Smola 著、"
           "https://d2l.ai、本文は CC BY-SA 4.0）の「Residual Networks (ResNet)」の章に沿っています。"
           "章の構成と演習は原著のもの、本文は d2lres が日本語で書き起こしたもの、コードは d2lres のものです。"),
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
    "en": {"fast": "fast mode (`D2LRES_FAST=1`: 512 images at 32x32, one epoch)",
           "full": "the chapter's settings (10 epochs, lr 0.05, batch 256, 96x96)", "none": "not executed"},
    "ja": {"fast": "高速モード（`D2LRES_FAST=1`：512 枚、32x32、1 エポック）",
           "full": "本章の設定（10 エポック、学習率 0.05、バッチ 256、96x96）", "none": "未実行"},
}


def run_outputs(text: str, mode: str, cache: Path, set_name: str) -> tuple[dict, int]:
    """Each framework's outputs (executing what the cache lacks) and how many executions ran."""
    cells, have, outputs, executed = chapter_page.framework_cells(text), backends.available(), {}, 0
    for fw, module in chapter.FRAMEWORKS.items():
        short = module.rsplit(".", 1)[1]
        if short in have:
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


def chapter_md(text: str, lang: str, labels: list[str], outputs: dict, src: Path, notebook_rel: str,
               both: bool) -> str:
    """The chapter page of ``lang`` (``both``: the other language is built too)."""
    modes = "; ".join(f"{chapter_page.LABELS[fw]} {MODE_TEXT[lang][outputs[fw]['mode'] if fw in outputs else 'none']}"
                      for fw in chapter.FRAMEWORKS)
    if lang == "en":
        links = '<a class="d2lres-lang-switch" href="ja/resnet.html" hreflang="ja" lang="ja">日本語</a>'
    else:
        links = ('<a class="d2lres-lang-switch" href="../resnet.html" hreflang="en" lang="en">English</a> '
                 '<a href="../index.html">プロジェクトの文書（英語）</a>')
    switch = f'<div class="d2lres-lang">{links if both else ""}</div>'
    tabs = [chapter_page.LABELS[fw] for fw in chapter.FRAMEWORKS if outputs.get(fw, {}).get("records")]
    recorded = RECORDED[lang].format(tabs=", ".join(tabs) if lang == "en" else "、".join(tabs)) if tabs else ""
    body = chapter_page.render(text, lang, labels, outputs, src / "_outputs", "_outputs", notebook_rel, both)
    first, _, rest = body.lstrip().partition("\n")  # the title line
    label_line = ""
    if first.startswith("(") and first.endswith(")="):  # the title's label
        label_line, (first, _, rest) = first + "\n", rest.partition("\n")
    return (f"{label_line}{first}\n\n```{{raw}} html\n{switch}\n```\n\n"
            f"```{{admonition}} {'Outputs' if lang == 'en' else '出力について'}\n:class: note\n"
            f"{HEADER[lang].format(modes=modes)}{recorded}\n```\n{rest}\n\n"
            f"```{{raw}} html\n<p class=\"d2lres-credit\">{CREDIT[lang]}</p>\n```\n")


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


def write_sources(src: Path, src_ja: Path | None, en: str, ja: str | None, outputs: dict) -> None:
    for d in (src, src_ja):
        if d is not None:
            shutil.rmtree(d, ignore_errors=True)
            d.mkdir(parents=True)
    labels = [chapter_page.slug(h) for h in chapter_page.headings(en)]
    shutil.copytree(ROOT / "docs", src / "docs")
    index = (BOOK / "index.md").read_text()
    if ja is None:  # the lines of the Japanese link
        index = re.sub(r" and\n  ```\{raw\} html\n.*?\n  ```\n", ",\n", index, flags=re.S)
    (src / "index.md").write_text(index)
    (src / "resnet.md").write_text(chapter_md(en, "en", labels, outputs, src, "notebooks/", ja is not None))
    (src / "api.md").write_text(api_md())
    (src / "cli-help.md").write_text(cli_md())
    (src / "report.md").write_text(report_md(src))
    if ja is not None:
        if len(chapter_page.headings(ja)) != len(labels):
            raise SystemExit(f"book: {JA_SOURCE} has {len(chapter_page.headings(ja))} headings, the English "
                             f"source {len(labels)}: the anchors pair headings by position")
        (src_ja / "resnet.md").write_text(chapter_md(ja, "ja", labels, outputs, src_ja, "../notebooks/", True))


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
    en = chapter.SOURCE.read_text()
    ja = JA_SOURCE.read_text() if JA_SOURCE.exists() else None
    if ja is None:
        print(f"book: no {JA_SOURCE.relative_to(ROOT)}: the Japanese chapter is not built", file=sys.stderr)
    else:
        problems = chapter.same_code_problems(ja, JA_SOURCE, chapter.SOURCE)
        if problems:
            raise SystemExit("book: the Japanese code cells differ from the English source's:\n" + "\n".join(problems))
    outputs, executed = run_outputs(en, "full" if args.full else "fast", args.cache, args.set)
    if not args.full:  # the training cells' recorded runs, where current
        print("\n".join(record.apply(outputs, chapter.SOURCE, chapter_page.framework_cells(en))), flush=True)
    work = args.out.parent / (args.out.name + "-src")
    write_sources(work / "en", work / "ja" if ja is not None else None, en, ja, outputs)
    shutil.rmtree(args.out, ignore_errors=True)
    sphinx(work / "en", args.out, work / "doctrees-en")
    if ja is not None:
        sphinx(work / "ja", args.out / "ja", work / "doctrees-ja", language="ja", root_doc="resnet",
               html_title="d2lres（日本語）")
    for lang, (_, folder) in chapter.LANGUAGES.items():
        for fw in chapter.FRAMEWORKS:
            nb = chapter.notebook_path(folder, fw)
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
