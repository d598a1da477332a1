"""Named registries: how a method is chosen by name, and how a researcher adds one.

Policy losses (:data:`tracerl_jax.losses.POLICY_LOSSES`), advantage
estimators (:data:`tracerl_jax.advantages.ADVANTAGE_ESTIMATORS`), training-row
builders of the RL methods (:data:`tracerl_jax.rl.ROW_BUILDERS`) and model
families (:data:`tracerl_jax.families.FAMILIES`) are each a :class:`Registry`.
A config names an entry (``rl.method = "coupled"``); adding a method is
registering a function under a new name::

    from tracerl_jax.losses import POLICY_LOSSES

    @POLICY_LOSSES.register("my_loss")
    def my_loss(logp_new, logp_old, advantages, p_mask, **settings):
        ...

and then ``--config.rl.loss=my_loss``.
"""

from __future__ import annotations

from typing import Generic, Iterator, Optional, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Entries of one kind by name.

    Args:
      kind: what the entries are, for error messages ("policy loss").
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str, entry: Optional[T] = None, *, replace: bool = False):
        """Registers ``entry`` under ``name``; without ``entry``, a decorator.

        Raises:
          ValueError: ``name`` is not a non-empty string, or is taken and
            ``replace`` is False.
        """
        if not isinstance(name, str) or not name:
            raise ValueError(f"a {self.kind} name must be a non-empty string, got {name!r}")

        def add(e: T) -> T:
            if name in self._entries and not replace:
                raise ValueError(f"{self.kind} {name!r} is already registered (pass replace=True to override)")
            self._entries[name] = e
            return e

        return add if entry is None else add(entry)

    def get(self, name: str) -> T:
        """The entry named ``name``.

        Raises:
          ValueError: no such entry (the message lists the registered names).
        """
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise ValueError(f"unknown {self.kind} {name!r}; registered: {self.names()}") from None

    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def __contains__(self, name) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {list(self._entries)})"


def check_name(registry: Registry, name: str, field: str) -> None:
    """Raises ``ValueError`` naming the config ``field`` when ``name`` is not registered."""
    if name not in registry:
        raise ValueError(f"{field} must be one of {registry.names()} (registered {registry.kind}s), got {name!r}")

