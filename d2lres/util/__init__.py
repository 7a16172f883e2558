"""Utilities every layer above may use: atomic files and run folders (``files``, ``guard``:
validate, then act), interrupts (``signals``), jobs in fresh processes (``jobs``), the stamps
reports carry (``stamps``), memory estimates (``memory``). They import only ``d2lres.errors`` and
``d2lres.host``."""
