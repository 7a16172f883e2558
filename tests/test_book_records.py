"""The recorded runs the pages show for the training cells (``book/record.py``): a real record
made by a real kernel on a small chapter source, its key (a changed cell, earlier cell or version
makes it stale), its place and label on the page, and hostile or corrupt record files refused
without breaking the build."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil

import pytest

from book import chapter_page, record

SOURCE = '''# Title

```{.python .input}
#@tab all
steps = 3
```

```{.python .input}
#@tab all
epochs = 10
import matplotlib.pyplot as plt
plt.plot(range(epochs), [1 / (1 + e) for e in range(epochs)])
plt.show()
acc = 1 - 1 / (2 + epochs)
print(f"test acc {acc:.3f}")
```
'''


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """A record of the source's second cell in PyTorch's tab at "lighter settings" (2 epochs),
    made once by a real kernel; the tests copy its folder."""
    root = tmp_path_factory.mktemp("made")
    (root / "resnet.md").write_text(SOURCE)
    recipe = record.Recipe("t/train", str(root / "resnet.md"), "plt.plot(", (("epochs = 10", "epochs = 2"),),
                           {"en": "2 epochs", "ja": "2 エポック"}, "{'test acc': acc}", ("pytorch",))
    data = record.record(recipe, "pytorch", root / "records")
    return recipe, root, data


@pytest.fixture
def setup(made, tmp_path, monkeypatch):
    """The made record in a fresh folder, its recipe the only one; returns (recipe, source, records folder)."""
    recipe, root, _ = made
    shutil.copytree(root / "records", tmp_path / "records")
    source = tmp_path / "resnet.md"
    source.write_text(SOURCE)
    recipe = dataclasses.replace(recipe, source=str(source))
    monkeypatch.setattr(record, "RECIPES", {recipe.name: recipe})
    return recipe, source, tmp_path / "records"


def cells(text=SOURCE):
    return chapter_page.framework_cells(text)["pytorch"]


def test_a_record_holds_the_run_at_its_settings_and_where_it_was_made(made):
    recipe, _, data = made
    assert data["metrics"] == {"test acc": pytest.approx(0.75)}  # 2 epochs ran, not the cell's 10
    assert data["text"] == "test acc 0.750" and data["executed_cell"].startswith("epochs = 2\n")
    assert data["versions"]["torch"] and data["cpu"] and data["date"] and data["python"]
    assert data["command"] == "make record RECIPE=t/train FW=pytorch"
    assert record.lookup(recipe, "pytorch", cells(), made[1] / "records")[2] == "current"


def test_replacements_fit_the_cell_or_a_settings_cell_before_it_exactly_once(made):
    recipe = dataclasses.replace(made[0], lighter=(("steps = 3", "steps = 1"), ("epochs = 10", "epochs = 2")))
    assert record.lighter_cells(recipe, cells())[0] == "steps = 1"  # the 1.0 edition's settings cell
    assert record.lighter_cells(recipe, cells())[1].startswith("epochs = 2\n")
    for old, times in (("epochs", 4), (" = ", 3), ("epochs = 9", 0)):  # more than once, or nowhere: refused
        with pytest.raises(record.RecordError, match=f"the cells hold '{old}' {times} times, not once"):
            record.lighter_cells(dataclasses.replace(recipe, lighter=((old, "x"),)), cells())


def test_a_changed_cell_earlier_cell_settings_or_version_makes_it_stale(setup, monkeypatch):
    recipe, _, root = setup
    assert record.lookup(recipe, "pytorch", cells(), root)[2] == "current"
    changed = cells(SOURCE.replace("[1 / (1 + e)", "[2 / (1 + e)"))
    assert record.lookup(recipe, "pytorch", changed, root)[2] == "stale: the cell changed"
    earlier = cells(SOURCE.replace("steps = 3", "steps = 4"))
    assert record.lookup(recipe, "pytorch", earlier, root)[2] == "stale: the earlier cells changed"
    lighter = dataclasses.replace(recipe, lighter=(("epochs = 10", "epochs = 3"),))
    assert record.lookup(lighter, "pytorch", cells(), root)[2] == "stale: the settings changed"
    monkeypatch.setattr(record, "versions", lambda fw: {"torch": "0.0.1"})
    why = record.lookup(recipe, "pytorch", cells(), root)[2]
    assert why.startswith("stale: recorded on torch ") and why.endswith("this set has torch 0.0.1"), why


def test_the_page_shows_the_record_with_its_settings_accuracy_and_origin(setup, tmp_path):
    recipe, source, root = setup
    executed = [[], [{"output_type": "stream", "name": "stdout", "text": "test acc 0.091\n"}]]
    outputs = {"pytorch": {"mode": "fast", "cells": executed}}
    lines = record.apply(outputs, source, {"pytorch": cells()}, root)
    assert lines == [f"book: pytorch: {root}/t/train/pytorch.json: current, shown (test acc 0.750)"]
    page = chapter_page.render(SOURCE, "en", ["resnet-title"], outputs, tmp_path / "img", "_outputs", "notebooks/")
    assert ("Output (PyTorch, a recorded run of this cell at lighter settings: 2 epochs; test acc 0.750)</p>"
            in page) and "<pre>test acc 0.750</pre>" in page and "0.091" not in page
    assert "To reproduce: make record RECIPE=t/train FW=pytorch" in page and " UTC at commit " in page
    assert len(list((tmp_path / "img").glob("pytorch-01-*.png"))) == 1  # the recorded plot
    ja = chapter_page.render(SOURCE, "ja", ["resnet-title"], outputs, tmp_path / "img", "_outputs", "../notebooks/")
    assert "このセルを軽い設定で実行し記録した出力：2 エポック；test acc 0.750" in ja
    assert "再現するには make record" in ja


def test_a_stale_record_leaves_the_executed_output_labelled_and_named(setup, tmp_path):
    recipe, source, root = setup
    changed = SOURCE.replace("[1 / (1 + e)", "[2 / (1 + e)")
    outputs = {"pytorch": {"mode": "fast", "cells": [[], [{"output_type": "stream", "name": "stdout",
                                                           "text": "test acc 0.091\n"}]]}}
    lines = record.apply(outputs, source, {"pytorch": cells(changed)}, root)
    assert lines == [f"book: pytorch: {root}/t/train/pytorch.json: stale: the cell changed; the page shows the "
                     "executed output (make record RECIPE=t/train FW=pytorch records it)"]
    page = chapter_page.render(changed, "en", ["resnet-title"], outputs, tmp_path, "_outputs", "notebooks/")
    assert ("Output (PyTorch, fast mode, D2LRES_FAST=1; no current recorded run of this cell: make record "
            "RECIPE=t/train FW=pytorch records one)</p><pre>test acc 0.091</pre>") in page


def _edit(root, change):
    path = root / "t" / "train" / "pytorch.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def _image(root, png: bytes):
    (root / "t" / "train" / "pytorch.png").write_bytes(png)
    _edit(root, lambda d: d.update(image_sha256=hashlib.sha256(png).hexdigest()))


HOSTILE = {
    "not JSON": (lambda r: (r / "t/train/pytorch.json").write_text("{'format': 1"), "not a JSON record"),
    "oversized": (lambda r: (r / "t/train/pytorch.json").write_text(" " * 70_000 + "{}"), "more than a record's"),
    "a list": (lambda r: (r / "t/train/pytorch.json").write_text("[1, 2]"), "not a JSON object"),
    "NaN metric": (lambda r: (r / "t/train/pytorch.json").write_text(
        (r / "t/train/pytorch.json").read_text().replace('"test acc": 0.75', '"test acc": NaN')),
        "it holds NaN"),
    "missing field": (lambda r: _edit(r, lambda d: d.pop("key")), "field 'key' missing"),
    "wrong type": (lambda r: _edit(r, lambda d: d.update(metrics="high")), "field 'metrics' has the wrong type"),
    "another framework's": (lambda r: _edit(r, lambda d: d.update(framework="jax")), "not 't/train' in 'pytorch'"),
    "bad date": (lambda r: _edit(r, lambda d: d.update(date="yesterday")), "field 'date' is not an ISO date"),
    "swapped image": (lambda r: (r / "t/train/pytorch.png").write_bytes(b"\x89PNG\r\n\x1a\nxx"),
                      "is not the one recorded"),
    "image not a PNG": (lambda r: _image(r, b"<svg onload=alert(1)>"), "its image is not a PNG"),
    "truncated PNG": (lambda r: _image(r, (r / "t/train/pytorch.png").read_bytes()[:200]), "not a readable PNG"),
    "no image": (lambda r: (r / "t/train/pytorch.png").unlink(), "its image pytorch.png is missing"),
}


@pytest.mark.parametrize("name", HOSTILE)
def test_a_hostile_or_corrupt_record_is_refused_and_the_build_goes_on(setup, name):
    recipe, source, root = setup
    spoil, reason = HOSTILE[name]
    spoil(root)
    with pytest.raises(record.RecordError, match=reason):
        record.read(recipe, "pytorch", root)
    executed = [[], [{"output_type": "stream", "name": "stdout", "text": "test acc 0.091\n"}]]
    outputs = {"pytorch": {"mode": "fast", "cells": executed}}
    (line,) = record.apply(outputs, source, {"pytorch": cells()}, root)
    assert reason in line and "the page shows the executed output" in line
    assert outputs["pytorch"]["cells"][1][0]["text"] == "test acc 0.091\n" and "records" not in outputs["pytorch"]


def test_markup_in_a_record_is_shown_as_text(setup, tmp_path):
    recipe, source, root = setup
    _edit(root, lambda d: d.update(text="<script>alert(1)</script>", cpu="<img src=x onerror=alert(1)>"))
    outputs = {"pytorch": {"mode": "fast", "cells": [[], []]}}
    record.apply(outputs, source, {"pytorch": cells()}, root)
    page = chapter_page.render(SOURCE, "en", ["resnet-title"], outputs, tmp_path, "_outputs", "notebooks/")
    assert "<script>" not in page and "<img src=x" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "&lt;img src=x onerror=alert(1)&gt;" in page


def test_the_committed_records_are_well_formed_and_fit_their_cells():
    """Every recipe finds its cell in its source, and every committed record belongs to a recipe
    and reads clean (current or stale: a missing one is the build's line, not an error here)."""
    expected = {}
    for recipe in record.RECIPES.values():
        for fw in recipe.frameworks:
            record.cell_index(recipe, record.source_cells(recipe.source, fw))
            expected[record.paths(recipe, fw)[0]] = (recipe, fw)
    committed = sorted(record.RECORDS.rglob("*.json"))
    assert committed and set(committed) <= set(expected), sorted(set(committed) - set(expected))
    for path in committed:
        record.read(*expected[path])
