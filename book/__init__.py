"""The chapter and the project's docs as a static site (``make book``; ``python -m book.build``)."""
