"""A link's clicks over time as CSV (a selectors.ClickSeries): the admin's "Download clicks per
day" and the JSON API's clicks with format=csv write it the same way."""

from __future__ import annotations

import csv
import io

from links.selectors import ClickSeries


def clicks_csv(series: ClickSeries, *, unit: str) -> str:
    """One row a slot: its start ("day": the date; "hour": ISO 8601 in UTC), the total, then
    one column per replica (node label)."""
    out = io.StringIO()
    writer = csv.writer(out)
    nodes = list(series.by_node)
    # A node label may start with "-", which a spreadsheet would read as a formula.
    writer.writerow([unit, "clicks", *(f"'{n}" if n[:1] in "=+-@" else n for n in nodes)])
    for i, slot in enumerate(series.slots):
        row = [series.by_node[n][i] for n in nodes]
        when = slot.date().isoformat() if unit == "day" else slot.isoformat()
        writer.writerow([when, sum(row), *row])
    return out.getvalue()
