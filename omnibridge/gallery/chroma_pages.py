"""Reading a whole Chroma collection in pages.

One `get` of more than about 32,700 records with their metadata or vectors fails inside Chroma ("too many
SQL variables": SQLite's limit on bound variables), so a gallery past that size could not be browsed or
mapped. Pages of a few thousand records each stay far below it and cost the same in all.
"""

from __future__ import annotations

PAGE = 5_000


def get_all(collection, include: list[str], where: dict | None = None, page: int | None = None) -> dict[str, list]:
    """Every record of `collection` (matching `where`): `ids` and one list per name in `include`."""
    page = page or PAGE
    found: dict[str, list] = {"ids": [], **{name: [] for name in include}}
    while True:
        chunk = collection.get(where=where, include=include, limit=page, offset=len(found["ids"]))
        for name, values in found.items():
            values.extend(chunk[name])
        if len(chunk["ids"]) < page:
            return found


def get_by_ids(collection, ids: list[str], include: list[str], page: int | None = None) -> dict[str, list]:
    """The records of these ids (those that exist), fetched a page of ids at a time."""
    page = page or PAGE
    found: dict[str, list] = {"ids": [], **{name: [] for name in include}}
    for start in range(0, len(ids), page):
        chunk = collection.get(ids=ids[start:start + page], include=include)
        for name, values in found.items():
            values.extend(chunk[name])
    return found
