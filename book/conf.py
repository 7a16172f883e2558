"""Sphinx configuration of the book site (``python -m book.build`` passes the language)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

project = "d2lres"
author = "the d2lres authors"
copyright = "d2lres authors; chapter text after Dive into Deep Learning (CC BY-SA 4.0)"
extensions = ["myst_parser", "sphinx_design", "sphinx.ext.autodoc", "sphinx.ext.napoleon", "book.mathml"]
# The API stubs' docstrings are Google style (Args:, Returns:).
napoleon_google_docstring = True
napoleon_numpy_docstring = False
myst_enable_extensions = ["colon_fence", "dollarmath"]
myst_heading_anchors = 3
html_math_renderer = "mathml"
html_theme = "furo"
html_title = "d2lres"
html_static_path = ["static"]
html_css_files = ["d2lres.css"]
html_js_files = ["d2lres.js"]
html_show_sourcelink = False
html_copy_source = False
html_last_updated_fmt = None
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
exclude_patterns = ["docs/*/**"]  # docs/bench/... etc.: included by the pages, not pages themselves
suppress_warnings = ["myst.xref_missing"]
html_favicon = "static/favicon.svg"
html_show_search_summary = False  # the summaries are fetched, which file:// refuses
