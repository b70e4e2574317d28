"""The tables the benchmarks print: PACS-lite's figure, its peers', the ratio, the target and whether it is met.

A `PeersRow` has one peer (bench/compare_dimse.py: Orthanc's DICOM server, made with `Row`) or
several (bench/compare_orthanc.py: Orthanc with its SQLite index and with its PostgreSQL index);
the ratio is taken against the better peer of each row, so that no target is met against a weak one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


def fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "—"
    digits = 0 if value >= 100 else 1 if value >= 10 else 2
    return f"{value:,.{digits}f} {unit}"


@dataclass
class PeersRow:
    """One measurement of PACS-lite and of each peer (None: not measured there)."""

    label: str
    unit: str
    pacs: float
    peers: dict[str, float | None] = field(default_factory=dict)
    higher_is_better: bool = False
    target: str = ""
    target_ratio: float | None = None  # met when the ratio against the better peer reaches it
    target_pacs_max: float | None = None  # met when PACS-lite's own figure stays under it
    show_ratio: bool = True

    def best_peer(self) -> float | None:
        figures = [value for value in self.peers.values() if value is not None and value > 0]
        if not figures:
            return None
        return max(figures) if self.higher_is_better else min(figures)

    @property
    def ratio(self) -> float | None:
        best = self.best_peer()
        if not self.show_ratio or best is None or self.pacs <= 0:
            return None
        return self.pacs / best if self.higher_is_better else best / self.pacs

    @property
    def met(self) -> str:
        if self.target_ratio is not None:
            return "—" if self.ratio is None else ("yes" if self.ratio >= self.target_ratio else "**no**")
        if self.target_pacs_max is not None:
            return "yes" if self.pacs < self.target_pacs_max else "**no**"
        return ""


def peers_table(
    rows: list[PeersRow], peer_names: list[str], *, ratio_label: str = "PACS-lite / better peer (>1 = PACS-lite better)"
) -> str:
    lines = [
        f"| Measurement | PACS-lite | {' | '.join(peer_names)} | {ratio_label} | Target | Met |",
        "| --- | ---: | " + " | ".join("---:" for _ in peer_names) + " | ---: | --- | --- |",
    ]
    for row in rows:
        ratio = "—" if row.ratio is None else f"{row.ratio:.2f}x"
        peers = [fmt(row.peers.get(name), row.unit) for name in peer_names]
        cells = [row.label, fmt(row.pacs, row.unit), *peers, ratio, row.target, row.met]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def Row(label: str, unit: str, pacs: float, orthanc: float | None, **options: Any) -> PeersRow:
    """A row with one peer, Orthanc (bench/compare_dimse.py)."""
    return PeersRow(label, unit, pacs, {"Orthanc": orthanc}, **options)


def comparison_table(rows: list[PeersRow]) -> str:
    return peers_table(rows, ["Orthanc"], ratio_label="PACS-lite/Orthanc (>1 = PACS-lite better)")
