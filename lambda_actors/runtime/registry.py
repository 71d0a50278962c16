"""Names to addresses, one registry per supervision tree (no globals).

Every child is registered under its path (``node/store``) when added and
unregistered when it stops for good. Any other hashable key can be added
with ``register``; it goes away with its address. ``get_or_start`` is how
actors that exist per key (a room per room id) are found or created.

A child stopped with its spec kept (terminated, or a transient that
returned) keeps its keys, but ``get``/``lookup`` do not hand out its
address until it runs again; ``get_or_start`` starts it again.

Internal interface (supervisors only): ``_add_path``, ``_forget``,
``_add_supervisor``, ``_forget_supervisor``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Hashable, Iterator

from .errors import ActorStopped, NoSuchActor
from .state import Status

if TYPE_CHECKING:
    from .address import Address
    from .spec import ChildSpec
    from .supervisor import Supervisor

__all__ = ["Registry"]


class Registry:
    def __init__(self) -> None:
        self._by_key: dict[Hashable, Address] = {}
        self._keys_of: dict[Address, list[Hashable]] = {}
        self._supervisors: dict[str, Supervisor] = {}

    def register(self, key: Hashable, address: Address) -> None:
        """Make ``address`` reachable as ``key``; a key already in use is an error."""
        current = self._by_key.get(key)
        if current is not None and current is not address and not current.stopped:
            raise ValueError(f"{key!r} is already registered to {current!r}")
        if address.stopped:
            raise ValueError(f"{address!r} has stopped for good; it cannot be registered")
        self._by_key[key] = address
        keys = self._keys_of.setdefault(address, [])
        if key not in keys:  # registered again after a restart_child: keep one entry
            keys.append(key)

    def unregister(self, key: Hashable) -> None:
        address = self._by_key.pop(key, None)
        if address is not None:
            keys = self._keys_of.get(address)
            if keys is not None and key in keys:
                keys.remove(key)

    def lookup(self, key: Hashable) -> Address:
        """The address registered as ``key`` (a path or your own key); ``NoSuchActor`` if none."""
        address = self._by_key.get(key)
        if address is None or address.stopped:
            raise NoSuchActor(f"nothing is registered as {key!r}")
        return address

    def get(self, key: Hashable) -> Address | None:
        address = self._by_key.get(key)
        if address is None or address.stopped:
            return None
        return address

    def get_or_start(
        self,
        key: Hashable,
        supervisor: Supervisor,
        spec: ChildSpec | Callable[[], ChildSpec],
    ) -> Address:
        """The address registered as ``key``, starting ``spec`` under ``supervisor`` if there is none.

        ``spec`` may be a zero-argument callable, so the spec is only built
        on first use. Synchronous and therefore race-free: two tasks asking
        for the same key in the same tick get the same actor.
        """
        address = self.get(key)
        if address is not None:
            return address
        known = self._by_key.get(key)
        if known is not None:
            parent, _, name = known.path.rpartition("/")
            if parent == supervisor.path and known.state.status is Status.STOPPED:
                # Stopped with its spec kept (a transient that returned, or a
                # terminated child): the same actor starts again, at the same
                # address, without building its spec again.
                supervisor.restart_child(name)
                return known
        from .spec import ChildSpec

        if not isinstance(spec, ChildSpec):
            spec = spec()
        try:
            address = supervisor.address(spec.name)
        except NoSuchActor:
            address = supervisor.start_child(spec)
        if address.stopped and address.state.status is Status.STOPPED:
            # Stopped with its spec kept (a transient that returned, or a
            # terminated child): the same actor starts again, same address.
            supervisor.restart_child(spec.name)
        if address.stopped:
            raise ActorStopped(address.path)
        if key != address.path:
            self.register(key, address)
        return address

    def supervisor(self, path: str) -> Supervisor:
        """The supervisor at ``path`` (e.g. ``node/rooms``)."""
        sup = self._supervisors.get(path)
        if sup is None:
            raise NoSuchActor(f"no supervisor at {path!r}")
        return sup

    def keys(self) -> Iterator[Hashable]:
        return (k for k, a in list(self._by_key.items()) if not a.stopped)

    def __contains__(self, key: Hashable) -> bool:
        return self.get(key) is not None

    def __len__(self) -> int:
        return sum(1 for _ in self.keys())

    # Internal interface, called by supervisors only.
    def _add_supervisor(self, sup: Supervisor) -> None:
        self._supervisors[sup.path] = sup

    def _forget_supervisor(self, sup: Supervisor) -> None:
        if self._supervisors.get(sup.path) is sup:
            del self._supervisors[sup.path]

    def _add_path(self, address: Address) -> None:
        # The path key is implied by the address; only extra keys are listed
        # in _keys_of, which keeps an idle actor's footprint small.
        self._by_key[address.path] = address

    def _forget(self, address: Address) -> None:
        if self._by_key.get(address.path) is address:
            del self._by_key[address.path]
        for key in self._keys_of.pop(address, ()):
            if self._by_key.get(key) is address:
                del self._by_key[key]
