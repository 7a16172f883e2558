"""Recorded runs of the chapter's training cells: what the pages show as those cells' outputs.

A training cell at the chapter's settings takes about an hour per framework on a CPU, and the
fast mode's smoke run (``D2LRES_FAST=1``) shows a network that has not learnt. So each training
cell is run once per framework at stated lighter settings -- the cells as printed with a few exact
replacements in the cell or a settings cell before it (:class:`Recipe`), its own optimizer and
learning rate -- and its output is committed
under ``book/records/<recipe>/<framework>.json`` (the text, the settings, the metrics reached, the
date, commit, CPU, versions and the command that reproduces it) with ``<framework>.png`` (the plot).

A record is *current* while its key holds: a hash of the framework, the code the kernel ran up to
and including the cell (as printed, before the replacements), the replacements and the installed
framework's versions. ``book.build`` shows a current record in place of the cell's executed fast-mode
output, labelled with its settings and accuracy; a stale, missing or refused record leaves the
executed output, labelled as such, and the build names it.

    python -m book.record [RECIPE ...] [--framework pytorch ...]   (records, one run at a time)
    python -m book.record --status                                   (each record: current or why not)
"""
from __future__ import annotations

import argparse
import base64
import datetime
import hashlib
import io
import json
import math
import re
import sys
import textwrap
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from book import chapter, chapter_page, execute

ROOT = Path(__file__).resolve().parent.parent
RECORDS = ROOT / "book" / "records"
FORMAT = 1
MAX_JSON = 64 * 1024
MAX_PNG = 512 * 1024
MAX_PIXELS = 4_000_000
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
#: tab name -> the distributions whose versions a record is keyed on
VERSIONED = {"pytorch": ("torch",), "tensorflow": ("tensorflow", "tensorflow-cpu", "keras"),
             "mxnet": ("mxnet",), "jax": ("jax", "jaxlib", "flax", "optax")}


class RecordError(ValueError):
    """A record file that cannot be used: unreadable, malformed, too large, or not a record."""


@dataclass(frozen=True)
class Recipe:
    """How one training cell is recorded.

    ``name``: the record's folder under ``book/records``; ``source``: the chapter source (relative
    to the checkout: a tab-style ``.md`` or a chapter script, :func:`source_cells`); ``locate``:
    text that only the recorded cell holds, in every framework; ``lighter``: exact replacements
    (each found once in the recorded cell and the cells before it) that make the run affordable;
    ``settings``: what ran, per language; ``probe``: an expression evaluated after the cell, a
    dict of metric name -> number."""
    name: str
    source: str
    locate: str
    lighter: tuple[tuple[str, str], ...]
    settings: dict[str, str]
    probe: str
    frameworks: tuple[str, ...] = tuple(chapter.FRAMEWORKS)


RECIPES = {r.name: r for r in (
    Recipe("resnet-0.17/train", "notebooks/resnet.md", "res.train_ch6(",
           (("lr, num_epochs, batch_size, resize, limit = 0.05, 10, 256, 96, None",
             "lr, num_epochs, batch_size, resize, limit = 0.05, 1, 128, 40, None"),),
           {"en": "1 epoch at 40x40, batch 128, plain SGD at lr 0.05 (the chapter: 10 epochs at 96x96, batch 256)",
            "ja": "1 エポック、40x40、バッチ 128、学習率 0.05 の SGD（本章の設定は 10 エポック、96x96、バッチ 256）"},
           "{'train acc': history['epochs'][-1]['train_acc'], 'test acc': history['epochs'][-1]['test_acc']}"),
    Recipe("resnet-1.0/train", "notebooks/resnet-1.0.md", "trainer.fit(model, data)",
           (("max_epochs, batch_size, resize, limit = 10, 128, (96, 96), None",
             "max_epochs, batch_size, resize, limit = 1, 128, (40, 40), None"),),
           {"en": "1 epoch at 40x40, batch 128, SGD at lr 0.01 (the chapter: 10 epochs at 96x96)",
            "ja": "1 エポック、40x40、バッチ 128、学習率 0.01 の SGD（本章の設定は 10 エポック、96x96）"},
           "{'val_acc': trainer.history['epochs'][-1]['test_acc']}"),
)}


def script_cells(text: str) -> list[str]:
    """A chapter script's cells: its definitions (everything before ``if __name__ == "__main__":``),
    then the main block's paragraphs, dedented."""
    head, sep, main = text.partition('\nif __name__ == "__main__":\n')
    if not sep:
        raise RecordError('a chapter script needs an `if __name__ == "__main__":` block')
    return [head.strip("\n")] + [p.strip("\n") for p in re.split(r"\n\s*\n", textwrap.dedent(main)) if p.strip()]


def source_cells(source: str, framework: str) -> list[str]:
    """The code cells of ``framework`` in the chapter source ``source``, in order."""
    text = (ROOT / source).read_text()
    if source.endswith(".py"):
        return script_cells(text)
    return chapter_page.framework_cells(text)[framework]


def cell_index(recipe: Recipe, cells: list[str]) -> int:
    """The index of the recipe's cell among ``cells`` (exactly one holds ``recipe.locate``)."""
    found = [i for i, code in enumerate(cells) if recipe.locate in code]
    if len(found) != 1:
        raise RecordError(f"{recipe.name}: {len(found)} cells of {recipe.source} hold {recipe.locate!r}, not one")
    return found[0]


def lighter_cells(recipe: Recipe, cells: list[str]) -> list[str]:
    """The cells as they are recorded (the recorded cell last): each of the recipe's replacements
    found exactly once among them -- in the recorded cell or in a settings cell before it."""
    cells = list(cells)
    for old, new in recipe.lighter:
        where = [j for j, code in enumerate(cells) if old in code]
        count = sum(code.count(old) for code in cells)
        if count != 1:
            raise RecordError(f"{recipe.name}: the cells hold {old!r} {count} times, not once; "
                              "the recipe's replacements no longer fit the cells")
        cells[where[0]] = cells[where[0]].replace(old, new)
    return cells


def versions(framework: str) -> dict[str, str]:
    """The installed versions of the framework's distributions (those installed)."""
    found = {}
    for dist in VERSIONED[framework]:
        try:
            found[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return found


def _sha(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def key_parts(recipe: Recipe, framework: str, cells: list[str], found: dict[str, str]) -> dict[str, str]:
    """What a record is keyed on, each part hashed apart so that a stale record says which changed."""
    i = cell_index(recipe, cells)
    return {"cell": _sha(cells[i]), "earlier cells": _sha(cells[:i]), "settings": _sha(recipe.lighter),
            "versions": _sha([framework, found])}


def paths(recipe: Recipe, framework: str, root: Path = RECORDS) -> tuple[Path, Path]:
    folder = root / recipe.name
    return folder / f"{framework}.json", folder / f"{framework}.png"


# --- reading: every field checked, nothing from the file used as a path or as markup -----------------

_FIELDS = {"format": int, "recipe": str, "framework": str, "key": dict, "versions": dict, "settings": dict,
           "metrics": dict, "text": str, "image_sha256": str, "executed_cell": str, "date": str,
           "commit": (str, type(None)), "cpu": str, "python": str, "seconds": (int, float), "command": str}


def _refuse_constant(name: str):
    raise RecordError(f"it holds {name}, which is not a number a record may hold")


def read(recipe: Recipe, framework: str, root: Path = RECORDS) -> tuple[dict, bytes]:
    """The record of ``recipe``'s cell in ``framework`` and its PNG, checked; :class:`RecordError`
    (with the reason) for a missing, oversized, malformed or mismatched one."""
    json_path, png_path = paths(recipe, framework, root)
    if not json_path.is_file():
        raise RecordError("no record")
    if json_path.stat().st_size > MAX_JSON:
        raise RecordError(f"{json_path.stat().st_size:,} bytes, more than a record's {MAX_JSON:,}")
    try:
        data = json.loads(json_path.read_bytes().decode("utf-8"), parse_constant=_refuse_constant)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RecordError(f"not a JSON record ({e})") from None
    if not isinstance(data, dict):
        raise RecordError("not a JSON object")
    for name, kind in _FIELDS.items():
        if name not in data:
            raise RecordError(f"field {name!r} missing")
        if not isinstance(data[name], kind) or isinstance(data[name], bool):
            raise RecordError(f"field {name!r} has the wrong type ({type(data[name]).__name__})")
    for name in ("date", "commit", "cpu", "python", "command", "image_sha256", "recipe", "framework"):
        if data[name] is not None and len(data[name]) > 400:
            raise RecordError(f"field {name!r} is longer than 400 characters")
    if max(len(data["text"]), len(data["executed_cell"])) > 20_000:
        raise RecordError("its text is longer than 20,000 characters")
    if data["format"] != FORMAT:
        raise RecordError(f"format {data['format']}, this build reads format {FORMAT}")
    if (data["recipe"], data["framework"]) != (recipe.name, framework):
        raise RecordError(f"it records {data['recipe']!r} in {data['framework']!r}, "
                          f"not {recipe.name!r} in {framework!r}")
    for name in ("key", "versions", "settings"):
        if not all(isinstance(k, str) and isinstance(v, str) and len(v) <= 400 for k, v in data[name].items()):
            raise RecordError(f"field {name!r} must map names to short strings")
    try:
        aware = datetime.datetime.fromisoformat(data["date"]).tzinfo is not None
    except ValueError:
        aware = False
    if not aware:
        raise RecordError(f"field 'date' is not an ISO date with its time zone ({data['date'][:40]!r})")
    if set(data["settings"]) != {"en", "ja"}:
        raise RecordError("field 'settings' must hold 'en' and 'ja'")
    if not data["metrics"] or not all(isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool)
                                      and math.isfinite(v) for k, v in data["metrics"].items()):
        raise RecordError("field 'metrics' must map names to finite numbers")
    if not png_path.is_file():
        raise RecordError(f"its image {png_path.name} is missing")
    if png_path.stat().st_size > MAX_PNG:
        raise RecordError(f"its image has {png_path.stat().st_size:,} bytes, more than {MAX_PNG:,}")
    png = png_path.read_bytes()
    if hashlib.sha256(png).hexdigest() != data["image_sha256"]:
        raise RecordError(f"its image {png_path.name} is not the one recorded (SHA-256 differs)")
    check_png(png)
    return data, png


def check_png(png: bytes) -> None:
    """Refuse bytes that are not one sane PNG image."""
    from PIL import Image, UnidentifiedImageError

    if not png.startswith(_PNG_MAGIC):
        raise RecordError("its image is not a PNG")
    try:
        with Image.open(io.BytesIO(png)) as im:
            if im.format != "PNG" or im.width * im.height > MAX_PIXELS:
                raise RecordError(f"its image is {im.width}x{im.height} {im.format}, not a plot")
            im.verify()
    except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError) as e:
        raise RecordError(f"its image is not a readable PNG ({e})") from None


def stale_reasons(data: dict, parts: dict[str, str], found: dict[str, str]) -> list[str]:
    """Why a record no longer fits (empty: it is current)."""
    reasons = [f"the {name} changed" for name, h in parts.items() if name != "versions" and data["key"].get(name) != h]
    if data["key"].get("versions") != parts["versions"]:
        was = ", ".join(f"{k} {v}" for k, v in data["versions"].items()) or "none"
        now = ", ".join(f"{k} {v}" for k, v in found.items()) or "not installed"
        reasons.append(f"recorded on {was}, this set has {now}")
    return reasons


def lookup(recipe: Recipe, framework: str, cells: list[str],
           root: Path = RECORDS) -> tuple[dict | None, bytes | None, str]:
    """The current record of the cell, or ``(None, None, why not)``."""
    try:
        found = versions(framework)
        parts = key_parts(recipe, framework, cells, found)
        data, png = read(recipe, framework, root)
    except RecordError as e:
        return None, None, str(e)
    reasons = stale_reasons(data, parts, found)
    return (None, None, "stale: " + "; ".join(reasons)) if reasons else (data, png, "current")


def apply(outputs: dict[str, dict], source: Path, cells: dict[str, list[str]], root: Path = RECORDS) -> list[str]:
    """Put the current records of ``source``'s recipes in place of their cells' executed outputs
    (``outputs[fw]``, as ``book.build`` holds them: ``records`` maps a cell's index to its record,
    ``stale`` to why it has none); returns the build's lines about them."""
    lines = []
    for recipe in RECIPES.values():
        if (ROOT / recipe.source).resolve() != Path(source).resolve():
            continue
        for fw in recipe.frameworks:
            if fw not in outputs or fw not in cells:
                continue
            where = paths(recipe, fw, root)[0]
            where = where.relative_to(ROOT) if where.is_relative_to(ROOT) else where
            try:
                i = cell_index(recipe, cells[fw])
            except RecordError as e:
                lines.append(f"book: {fw}: {e}")
                continue
            data, png, why = lookup(recipe, fw, cells[fw], root)
            if data is None:
                outputs[fw].setdefault("stale", {})[i] = command(recipe, fw)
                lines.append(f"book: {fw}: {where}: {why}; the page shows the executed output "
                             f"({command(recipe, fw)} records it)")
            else:
                outputs[fw]["cells"][i] = record_outputs(data, png)
                outputs[fw].setdefault("records", {})[i] = data
                lines.append(f"book: {fw}: {where}: current, shown ({metrics_text(data)})")
    return lines


def metrics_text(data: dict) -> str:
    return ", ".join(f"{name} {value:.3f}" for name, value in data["metrics"].items())


def record_outputs(data: dict, png: bytes) -> list[dict]:
    """The record as the cell's nbformat outputs (the plot, then the text)."""
    return [{"output_type": "display_data", "metadata": {},
             "data": {"image/png": base64.b64encode(png).decode(), "text/plain": "<Figure>"}},
            {"output_type": "stream", "name": "stdout", "text": data["text"] + "\n"}]


def command(recipe: Recipe, framework: str) -> str:
    return f"make record RECIPE={recipe.name} FW={framework}"


# --- recording ------------------------------------------------------------------------------------------

def record(recipe: Recipe, framework: str, root: Path = RECORDS, timeout: int = 3 * 3600) -> dict:
    """Run the recipe's cell (and the cells before it) in ``framework``'s kernel at the lighter
    settings and write its record; returns the record."""
    from d2lres.host import isa
    from d2lres.util import files, stamps

    if framework not in recipe.frameworks:
        raise RecordError(f"{recipe.name} is recorded in {', '.join(recipe.frameworks)}, not {framework}")
    cells = source_cells(recipe.source, framework)
    i = cell_index(recipe, cells)
    ran = lighter_cells(recipe, cells[:i + 1])
    found = versions(framework)
    tic = time.perf_counter()
    probe = f"import json as _json\nprint(_json.dumps({{k: float(v) for k, v in ({recipe.probe}).items()}}))"
    nb = execute.run_cells([*ran, probe], execute.kernel_env("full"), timeout)
    seconds = time.perf_counter() - tic
    text, pngs = chapter_page.output_parts(nb.cells[i].outputs)
    if not pngs:
        raise RecordError(f"{recipe.name} in {framework} drew no plot")
    metrics = json.loads(chapter_page.output_parts(nb.cells[-1].outputs)[0].strip().splitlines()[-1])
    s = stamps.stamps([chapter.FRAMEWORKS[framework].rsplit(".", 1)[1]], data={})
    data = {"format": FORMAT, "recipe": recipe.name, "framework": framework,
            "key": key_parts(recipe, framework, cells, found), "versions": found, "settings": recipe.settings,
            "metrics": metrics, "text": text, "image_sha256": hashlib.sha256(pngs[-1]).hexdigest(),
            "executed_cell": ran[-1], "date": s["date"], "commit": s["commit"], "cpu": isa.describe(s["cpu"]),
            "gpus": s["gpus"], "python": s["python"], "seconds": round(seconds, 1),
            "command": command(recipe, framework)}
    json_path, png_path = paths(recipe, framework, root)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    files.atomic_write(png_path, lambda f: f.write(pngs[-1]))
    files.atomic_write_text(json_path, json.dumps(data, indent=1, ensure_ascii=False) + "\n")
    return data


def status(root: Path = RECORDS) -> list[tuple[str, str, str]]:
    """``(recipe, framework, current / why not)`` for every record the recipes name."""
    rows = []
    for recipe in RECIPES.values():
        for fw in recipe.frameworks:
            try:
                cells = source_cells(recipe.source, fw)
            except (OSError, RecordError) as e:
                rows.append((recipe.name, fw, f"no source: {e}"))
                continue
            rows.append((recipe.name, fw, lookup(recipe, fw, cells, root)[2]))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m book.record", description=__doc__.split("\n")[0])
    parser.add_argument("recipes", nargs="*", metavar="RECIPE", help=f"default: all ({', '.join(RECIPES)})")
    parser.add_argument("--framework", action="append", choices=list(chapter.FRAMEWORKS),
                        help="record only these (repeat; default: every framework of the recipe)")
    parser.add_argument("--status", action="store_true", help="say which records are current, record nothing")
    args = parser.parse_args(argv)
    unknown = [r for r in args.recipes if r not in RECIPES]
    if unknown:
        parser.error(f"unknown recipe {', '.join(unknown)}; choose from {', '.join(RECIPES)}")
    if args.status:
        for name, fw, state in status():
            print(f"{name} {fw}: {state}")
        return 0
    for name in args.recipes or list(RECIPES):
        recipe = RECIPES[name]
        for fw in args.framework or recipe.frameworks:
            if fw not in recipe.frameworks:
                continue
            print(f"record: {name} in {fw} ({recipe.settings['en']}) ...", flush=True)
            data = record(recipe, fw)
            print(f"record: {paths(recipe, fw)[0].relative_to(ROOT)}: {data['metrics']}, {data['seconds']:.0f} s",
                  flush=True)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except RecordError as e:
        sys.exit(f"record: {e}")
