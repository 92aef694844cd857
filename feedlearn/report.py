"""Reports: metrics tables in the terminal (each method's figure is its own: `methods/<name>/figure.py`)."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from feedlearn.data.store import flatten


def metrics_table(title: str, columns: dict[str, dict[str, float]]) -> Table:
    """A table with one row per metric and one column per model (e.g. base, rise)."""
    table = Table(title=title)
    table.add_column("metric")
    for name in columns:
        table.add_column(name, justify="right")
    keys = list(dict.fromkeys(k for col in columns.values() for k in col))
    for key in keys:
        table.add_row(key, *(f"{col[key]:.1f}" if key in col else "-" for col in columns.values()))
    return table


def print_table(table: Table) -> None:
    """Print a rich table to the terminal."""
    Console().print(table)


def print_results(title: str, name: str, result: dict) -> None:
    """Print results of any depth: {metric: value} as one column called `name`; {column: {metric: value}}
    as one table (metrics nested inside a column become `a/b` rows); deeper results as one table per
    top-level key."""
    values = list(result.values())
    if not all(isinstance(v, dict) for v in values):
        print_table(metrics_table(title, {name: flatten(result)}))
    elif all(not all(isinstance(x, dict) for x in v.values()) for v in values):
        print_table(metrics_table(title, {key: flatten(v) for key, v in result.items()}))
    else:
        for key, sub in result.items():
            print_results(f"{title}: {key}", key, sub)
