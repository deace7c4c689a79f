"""Cells of the CSV exports (pledges, registrations, the audit trail): every text cell goes
through ``csv_safe``, because organizers open these files in spreadsheet programs."""

_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_safe(value: str) -> str:
    """Keep spreadsheet programs from running a cell as a formula (CSV injection)."""
    return "'" + value if value[:1] in _FORMULA_STARTS else value
