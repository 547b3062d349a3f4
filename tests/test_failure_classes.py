"""The per-category policy table (protocol.errors.FAILURE_CLASSES) and the doc that shows it."""

from __future__ import annotations

import re
from pathlib import Path

from protocol.errors import (
    DISPOSITION,
    FAILURE_CLASSES,
    Disposition,
    ErrorCategory,
    HealthScope,
    Retrier,
)

DOC = Path(__file__).resolve().parent.parent / "docs" / "errors.md"
ROW = re.compile(r"^\| `(?P<category>[a-z_]+)` \| (?P<disposition>\w+) \| (?P<circuit>[^|]*) \|")


def doc_rows() -> dict[str, tuple[str, str]]:
    rows = {}
    for line in DOC.read_text().splitlines():
        match = ROW.match(line)
        if match and match["category"] in ErrorCategory._value2member_map_:
            rows[match["category"]] = (match["disposition"], match["circuit"])
    return rows


def test_every_category_has_one_row_and_dispositions_derive_from_it() -> None:
    assert set(FAILURE_CLASSES) == set(ErrorCategory)
    assert all(DISPOSITION[c] is row.disposition for c, row in FAILURE_CLASSES.items())


def test_final_categories_are_retried_by_no_broker_and_holds_count_on_the_provider() -> None:
    for category, row in FAILURE_CLASSES.items():
        if row.disposition is Disposition.FINAL:
            assert row.retried_by is not Retrier.BROKER, category
        if row.hold is not None or row.pauses_provider:
            assert row.health is HealthScope.PROVIDER, category


def test_docs_table_matches_the_policy_table() -> None:
    rows = doc_rows()
    assert set(rows) == {c.value for c in ErrorCategory}
    for category, row in FAILURE_CLASSES.items():
        disposition, circuit = rows[category.value]
        assert disposition == row.disposition.value, category
        expected = {
            HealthScope.PROVIDER: "provider + model",
            HealthScope.MODEL: "model only",
            HealthScope.NONE: "—",
        }[row.health]
        assert circuit.startswith(expected), (category, circuit)
        hold = re.search(r"hold (\d+) s", circuit)
        assert (float(hold[1]) if hold else None) == row.hold, category
        assert ("pauses the provider" in circuit) == row.pauses_provider, category
