"""Looking inside exception groups.

Trio wraps what a nursery's tasks raise in ``ExceptionGroup``s, nested as
deep as the nurseries are. A caller that wants to know *what* went wrong (a
``KeyboardInterrupt``, a refused login) needs the plain exceptions at the
leaves; this is the one place that walks there.
"""

from __future__ import annotations

from typing import TypeVar

__all__ = ["leaves"]

E = TypeVar("E", bound=BaseException)


def leaves(exc: BaseException, kind: type[E] = BaseException) -> list[E]:  # type: ignore[assignment]  # BaseException is the widest E
    """The exceptions of type ``kind`` in ``exc``, looking inside groups, in order."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in leaves(inner, kind)]
    return [exc] if isinstance(exc, kind) else []
