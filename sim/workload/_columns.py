"""Reading CSV columns into arrays with errors that name the file, the row and the column."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np


class CsvTable:
    """The string cells of a CSV file with a header.

    Attributes:
        path: the file (for messages).
        header: column names, stripped.
        rows: data rows (blank lines skipped), each a list of cell strings.
        line_numbers: 1-based file line of each data row.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        with self.path.open(newline="") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None:
                raise ValueError(f"{self.path}: the file is empty (no header, no rows)")
            self.header = [h.strip() for h in header]
            self.rows: list[list[str]] = []
            self.line_numbers: list[int] = []
            for row in reader:
                if not any(cell.strip() for cell in row):
                    continue
                self.rows.append(row)
                self.line_numbers.append(reader.line_num)
        if not self.rows:
            raise ValueError(f"{self.path}: no data rows after the header; a trace needs at "
                             "least one request")

    def where(self, i: int, column: str) -> str:
        """``'<file>: row <r> (line <l>), column <c>'`` for data row index ``i`` (0-based)."""
        return f"{self.path}: row {i + 1} (line {self.line_numbers[i]}), column {column!r}"

    def require(self, columns: tuple[str, ...]) -> None:
        """Raise naming the first missing column, and check every row's cell count."""
        for column in columns:
            if column not in self.header:
                raise ValueError(f"{self.path}: missing column {column!r}; the header is "
                                 f"{','.join(self.header)} and must include "
                                 f"{','.join(columns)}")
        width = len(self.header)
        for i, row in enumerate(self.rows):
            if len(row) != width:
                column = self.header[min(len(row), width - 1)]
                raise ValueError(f"{self.where(i, column)}: the row has {len(row)} cells but "
                                 f"the header has {width}")

    def strings(self, column: str) -> list[str]:
        """The cells of one column, stripped."""
        j = self.header.index(column)
        return [row[j].strip() for row in self.rows]

    def numbers(self, column: str, integer: bool, minimum: float) -> np.ndarray:
        """Parse one column to (n,) int64 or float64, every value finite and >= ``minimum``.

        Raises:
            ValueError: naming the file, the 1-based row, the line and the column of the first
                bad cell.
        """
        cells = self.strings(column)
        try:
            values = np.array(cells, dtype=np.float64)
        except ValueError:
            values = np.array([_to_float(c) for c in cells])
        bad = ~np.isfinite(values) | (values < minimum)
        if integer:
            bad |= values != np.rint(values)
        if np.any(bad):
            i = int(np.argmax(bad))
            kind = "an integer" if integer else "a finite number"
            raise ValueError(f"{self.where(i, column)}: {cells[i]!r} is not {kind} >= {minimum}")
        return values.astype(np.int64) if integer else values

    def check_sorted(self, values: np.ndarray, column: str) -> None:
        """Raise naming the first row whose value is below the previous row's."""
        back = np.diff(values) < 0
        if np.any(back):
            i = int(np.argmax(back)) + 1
            raise ValueError(f"{self.where(i, column)}: {values[i]} is earlier than the "
                             f"previous row's {values[i - 1]}; sort the file by {column}")


def _to_float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return float("nan")
