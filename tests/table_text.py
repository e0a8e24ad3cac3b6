"""Reading a rendered rich table back, for tests that check nothing is dropped at a narrow width."""

from __future__ import annotations

from rich.console import Console


def render(renderable, width: int = 80) -> str:
    """`renderable` as plain text on a console `width` columns wide."""
    console = Console(width=width, record=True)
    console.print(renderable)
    return console.export_text()


def column_texts(text: str) -> list[str]:
    """Each column of a rendered rich table, its pieces on every line joined: a cell wrapped or folded over
    several lines reads whole again (nothing was dropped)."""
    rows = [line.split("│")[1:-1] for line in text.splitlines() if line.startswith("│")]
    heads = [line.split("┃")[1:-1] for line in text.splitlines() if line.startswith("┃")]
    width = max(len(r) for r in rows + heads)
    return ["".join(r[c].strip() for r in heads + rows if c < len(r)) for c in range(width)]


def missing_cells(text: str, cells) -> list[str]:
    """The cell texts of `cells` that no column of the rendered table `text` holds whole."""
    columns = column_texts(text)
    return [c for c in cells if not any(c.replace(" ", "") in col.replace(" ", "") for col in columns)]
