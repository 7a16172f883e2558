"""The chapter source (d2l's tab style) as a MyST page with sphinx-design tab sets.

Consecutive code cells of different frameworks form one group, a ``#@tab all`` cell a group of
its own (the same code under every framework's tab, each with its own outputs), and consecutive
``:begin_tab:`` passages a group of text. Every tab set belongs to the sync group ``framework``
and each tab carries its framework's key, so the tabs switch together by framework, never by
position: a group lacking a framework shows only the tabs it has. Headings get labels from the
English source's headings, by position, so both languages carry the same anchors.
"""
from __future__ import annotations

import base64
import datetime
import hashlib
import html
import re
from dataclasses import dataclass, field
from pathlib import Path

from book.chapter import _FENCE, _MD_TAB, FRAMEWORKS, parse_code_cells

LABELS = {"pytorch": "PyTorch", "tensorflow": "TensorFlow", "mxnet": "MXNet", "jax": "JAX"}
_HEADING = re.compile(r"^(#{1,6})[ \t]+(.+?)[ \t]*$", re.M)
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_NOTE = {
    "en": {"output": "Output", "fast": "fast mode, D2LRES_FAST=1", "full": "the chapter's settings",
           "none": "not executed here: {fw} is not installed in this set",
           "notebook": "Notebook", "other": "日本語", "lang": "English",
           "recorded": "a recorded run of this cell at lighter settings: {settings}; {metrics}",
           "recorded_on": "Recorded {date} at commit {commit} on {cpu}; {versions}, Python {python}; "
                          "{minutes} min. To reproduce: {command}",
           "stale": "; no current recorded run of this cell: {command} records one"},
    "ja": {"output": "出力", "fast": "高速モード、D2LRES_FAST=1", "full": "本章の設定",
           "none": "この環境には {fw} が入っていないため未実行",
           "notebook": "ノートブック", "other": "English", "lang": "日本語",
           "recorded": "このセルを軽い設定で実行し記録した出力：{settings}；{metrics}",
           "recorded_on": "記録：{date}、コミット {commit}、{cpu}；{versions}、Python {python}；{minutes} 分。"
                          "再現するには {command}",
           "stale": "；このセルの最新の記録はありません。{command} で記録します"},
}


@dataclass
class Group:
    """A tab set: ``kind`` "code" or "text"; ``tabs`` maps a framework to its code (or text);
    ``cells`` maps a framework to the index of that cell among the framework's code cells."""
    kind: str
    tabs: dict[str, str] = field(default_factory=dict)
    cells: dict[str, int] = field(default_factory=dict)
    shared: bool = False  # one ``#@tab all`` cell under every tab


def pieces(text: str) -> list[str | Group]:
    """The source as markdown strings and tab groups, in order."""
    spans = [(m.start(), m.end(), "code", m) for m in _FENCE.finditer(text)]
    spans += [(m.start(), m.end(), "text", m) for m in _MD_TAB.finditer(text)]
    spans.sort(key=lambda s: s[0])
    cells = iter(parse_code_cells(text))
    counts = dict.fromkeys(FRAMEWORKS, 0)
    out: list[str | Group] = []
    pos = 0
    for start, end, kind, m in spans:
        between = text[pos:start]
        last = out[-1] if out else None
        joinable = isinstance(last, Group) and last.kind == kind and not between.strip()
        if kind == "code":
            cell = next(cells)
            shared = "all" in cell.tabs
            tabs = list(FRAMEWORKS) if shared else [t for t in cell.tabs if t in FRAMEWORKS]
            if not (joinable and not shared and not last.shared and len(tabs) == 1 and tabs[0] not in last.tabs):
                out += [between, Group("code", shared=shared)]
            for fw in tabs:
                out[-1].tabs[fw] = ("#@save\n" if cell.save else "") + cell.code
                out[-1].cells[fw] = counts[fw]
                counts[fw] += 1
        else:
            names = [t.strip() for t in m.group(1).split(",")]
            names = list(FRAMEWORKS) if "all" in names else names
            if not (joinable and not set(names) & set(last.tabs)):
                out += [between, Group("text")]
            for fw in names:
                out[-1].tabs[fw] = m.group(2).strip("\n")
        pos = end
    out.append(text[pos:])
    for group in out:
        if isinstance(group, Group):
            group.tabs = {fw: group.tabs[fw] for fw in FRAMEWORKS if fw in group.tabs}
    return out


def framework_cells(text: str) -> dict[str, list[str]]:
    """Each framework's code cells, in order: what its kernel executes."""
    cells: dict[str, list[str]] = {fw: [] for fw in FRAMEWORKS}
    for cell in parse_code_cells(text):
        for fw in FRAMEWORKS:
            if "all" in cell.tabs or fw in cell.tabs:
                cells[fw].append(cell.code)
    return cells


def headings(text: str) -> list[str]:
    """The headings of the source's prose (outside code cells), in order."""
    return [m.group(2) for m in _HEADING.finditer(_FENCE.sub("", text))]


def slug(title: str, prefix: str = "resnet") -> str:
    """A heading's label: ``prefix`` (one per page, so that two pages' labels differ) and its words."""
    return f"{prefix}-" + (re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-") or "section")


def _fence(code: str, info: str) -> str:
    ticks = "`" * max(3, max((len(m) for m in re.findall(r"`+", code)), default=0) + 1)
    return f"{ticks}{info}\n{code}\n{ticks}"


def output_parts(outputs: list[dict]) -> tuple[str, list[bytes]]:
    """A cell's stdout and results as text (progress redraws and colours resolved), and its PNGs."""
    text, pngs = [], []
    for out in outputs:
        kind = out.get("output_type")
        if kind == "stream" and out.get("name") == "stdout":
            text.append(out.get("text", ""))
        elif kind in ("execute_result", "display_data"):
            data = out.get("data", {})
            if "image/png" in data:
                pngs.append(base64.b64decode(data["image/png"]))
            elif "text/plain" in data and kind == "execute_result":
                text.append(data["text/plain"] + "\n")
    joined = _ANSI.sub("", "".join(text))
    lines = [line.rsplit("\r", 1)[-1] for line in joined.split("\n")]  # progress redraws: the last
    return "\n".join(lines).strip("\n"), pngs


def _outputs(outputs: list[dict], image_dir: Path, image_prefix: str) -> tuple[str, list[str]]:
    """A cell's stdout and results as text, and its images (files written to ``image_dir``)."""
    text, pngs = output_parts(outputs)
    images = []
    for png in pngs:
        name = f"{image_prefix}-{hashlib.sha256(png).hexdigest()[:12]}.png"
        image_dir.mkdir(parents=True, exist_ok=True)
        (image_dir / name).write_bytes(png)
        images.append(name)
    return text, images


def _label(lang: str, fw: str, got: dict, index: int) -> str:
    """The line above a cell's output: its framework and mode; or the recorded run it shows
    (``got["records"]``) and where that was made; or that the cell's record is missing or stale."""
    note, record = _NOTE[lang], got.get("records", {}).get(index)
    if record is None:
        stale = got.get("stale", {}).get(index)
        what = note[got["mode"]] + (note["stale"].format(command=stale) if stale else "")
        return f'<p class="d2lres-out-label">{note["output"]} ({LABELS[fw]}, {html.escape(what)})</p>'
    metrics = ", ".join(f"{name} {value:.3f}" for name, value in record["metrics"].items())
    what = note["recorded"].format(settings=record["settings"][lang], metrics=metrics)
    date = datetime.datetime.fromisoformat(record["date"]).astimezone(datetime.timezone.utc)
    versions = ", ".join(f"{k} {v}" for k, v in record["versions"].items())
    where = note["recorded_on"].format(
        date=f"{date:%Y-%m-%d %H:%M} UTC", commit=record["commit"] or "?", cpu=record["cpu"], versions=versions,
        python=record["python"], minutes=max(1, round(record["seconds"] / 60)), command=record["command"])
    return (f'<p class="d2lres-out-label">{note["output"]} ({LABELS[fw]}, {html.escape(what)})</p>'
            f'<p class="d2lres-out-label d2lres-recorded">{html.escape(where)}</p>')


def render(text: str, lang: str, labels: list[str], outputs: dict[str, dict], image_dir: Path,
           image_rel: str, notebook_rel: str, other_language: bool = True,
           notebook: str = "resnet.ipynb") -> str:
    """The MyST page of one language.

    ``outputs[fw]`` is ``{"cells": [...per code cell outputs...], "mode": "fast"|"full"}``
    (with ``records``/``stale`` for recorded cells, ``book.record.apply``), ``{"reason": why it was
    not executed}``, or missing (not installed); images go to ``image_dir``, linked as
    ``image_rel/<name>``; ``notebook_rel`` is the path from the page to the site's ``notebooks/``
    folder and ``notebook`` the notebooks' file name;
    ``other_language``: whether the other language's notebooks are in the site."""
    note = _NOTE[lang]
    body: list[str] = []
    heading_no = 0

    def label_headings(md: str) -> str:
        nonlocal heading_no

        def sub(m):
            nonlocal heading_no
            label = labels[heading_no] if heading_no < len(labels) else slug(m.group(2))
            heading_no += 1
            return f"({label})=\n{m.group(0)}"
        return _HEADING.sub(sub, md)

    for piece in pieces(text):
        if isinstance(piece, str):
            body.append(label_headings(piece))
            continue
        items = []
        for fw, content in piece.tabs.items():
            if piece.kind == "text":
                inner = content
            else:
                inner = _fence(content, "python")
                got = outputs.get(fw)
                if got is None or "reason" in got:
                    why = got["reason"] if got else note["none"].format(fw=LABELS[fw])
                    inner += ("\n\n```{raw} html\n<p class=\"d2lres-out-label\">"
                              + html.escape(why) + "</p>\n```")
                else:
                    out_text, images = _outputs(got["cells"][piece.cells[fw]], image_dir,
                                                f"{fw}-{piece.cells[fw]:02d}")
                    if out_text or images:
                        inner += ("\n\n```{raw} html\n<div class=\"d2lres-output\">"
                                  + _label(lang, fw, got, piece.cells[fw])
                                  + (f"<pre>{html.escape(out_text)}</pre>" if out_text else "") + "</div>\n```")
                    for name in images:
                        inner += f"\n\n```{{image}} {image_rel}/{name}\n:alt: {LABELS[fw]}\n:class: d2lres-plot\n```"
                other = "ja" if lang == "en" else "en"
                mine = f"{notebook_rel}{'ja/' if lang == 'ja' else ''}{fw}/{notebook}"
                theirs = f"{notebook_rel}{'ja/' if other == 'ja' else ''}{fw}/{notebook}"
                stem = notebook.removesuffix(".ipynb")
                inner += ("\n\n```{raw} html\n<p class=\"d2lres-nb\">"
                          f"{note['notebook']}: <a href=\"{mine}\" download=\"{stem}-{fw}-{lang}.ipynb\">"
                          f"{notebook} ({LABELS[fw]}, {note['lang']})</a>"
                          + (f" · <a href=\"{theirs}\" download=\"{stem}-{fw}-{other}.ipynb\">{note['other']}</a>"
                             if other_language else "") + "</p>\n```")
            items.append(f":::{{tab-item}} {LABELS[fw]}\n:sync: {fw}\n\n{inner}\n:::")
        kind = "d2lres-code" if piece.kind == "code" else "d2lres-text"
        body.append("::::{tab-set}\n:sync-group: framework\n:class: " + kind + "\n\n"
                    + "\n\n".join(items) + "\n::::")
    return "".join(body)
