"""The comparison grid's cells: methods x regimes (``local:<site>``, ``centralized``, ``federated``),
which apply (a method's ``regimes`` in the registry), their names and labels. Shared by
:mod:`.compare` (one seed) and :mod:`.compare_seeds` (several)."""

from __future__ import annotations

from ..methods import METHODS, method_class

REGIMES = ("local", "centralized", "federated")


def grid_cells(methods, sites, regimes=REGIMES) -> list[tuple[str, str]]:
    cells = [f"local:{s}" for s in sites] + ["centralized", "federated"]
    return [(m, r) for m in methods for r in cells if r.split(":", 1)[0] in regimes]


def applicable(method: str, regime: str) -> bool:
    return regime.split(":", 1)[0] in method_class(method).regimes


def method_label(method: str) -> str:
    return METHODS[method].label if method in METHODS else method


def cell_name(method: str, regime: str) -> str:
    return f"{method}__{regime.replace(':', '-')}"


def regime_label(regime: str, modality: dict) -> str:
    if regime.startswith("local:"):
        site = regime.split(":", 1)[1]
        return f"local {modality.get(site, site)} only"
    return regime
