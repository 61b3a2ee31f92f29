"""The named SQL of `sql/queries.sql`, loaded once: `QUERIES["insert_charge"]`.

A file of plain SQL under `-- name: …` headers keeps every statement readable (and runnable in
psql) without an ORM; the test suite prepares each one against a freshly migrated database, so a
query that no longer fits the schema fails there and not in production.
"""

from __future__ import annotations

import re
from pathlib import Path

_HEADER = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)


def parse_queries(text: str) -> dict[str, str]:
    """Map each `-- name: x` header to the SQL below it, up to the next header."""
    parts = _HEADER.split(text)
    queries: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if name in queries:
            raise ValueError(f"query {name!r} is defined twice")
        queries[name] = _strip_trailing_comments(body)
    return queries


def _strip_trailing_comments(body: str) -> str:
    # Section comments between queries belong to no query.
    lines = body.strip().splitlines()
    while lines and (lines[-1].startswith("--") or not lines[-1].strip()):
        lines.pop()
    return "\n".join(lines)


QUERIES = parse_queries((Path(__file__).parent / "sql" / "queries.sql").read_text(encoding="utf-8"))
