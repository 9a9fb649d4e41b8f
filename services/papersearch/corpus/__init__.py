"""Corpus readers: every format yields the same :class:`Paper` record."""
