"""STUB, replaced by the engineer building the Matrix side (status
broadcaster, board, heartbeats). Only the signatures are fixed here."""

from __future__ import annotations

from typing import Any

from ...runtime.registry import Registry
from ...runtime.spec import ChildSpec

__all__ = ["matrix_children", "poke_broadcaster"]


def matrix_children(bot: Any, dag_store: Any, node_config: Any) -> list[ChildSpec]:
    return []


def poke_broadcaster(registry: Registry) -> None:
    return None
