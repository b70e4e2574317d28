"""The listener's supported presentation contexts, shared by every association instead of copied into each.

pynetdicom's acceptor (transport.RequestHandler, 3.0.4) gives each new association
`deepcopy(server.contexts)`: with every storage SOP class, each with the ~40 transfer syntaxes
ingest takes (177 contexts, ~5,800 UIDs), that copy cost 33-38 ms of CPU per association on
this 2-core machine, before the A-ASSOCIATE-RQ was even read: most of a findscu's or an
echoscu's time here (echoscu 70 ms against 20 ms to dcmtk's storescp).

The copy protects the server's list from an association that would change it; nothing does
(negotiation, presentation.negotiate_as_acceptor, only reads the supported contexts and builds
new ones for the answer). So the listener hands the server `SharedPresentationContext`s: frozen
once built (setting an attribute or adding a transfer syntax raises), and therefore safe to
share, which is what their `__deepcopy__` does (it returns the context itself, as deepcopy does
for any immutable value). No private pynetdicom name is used: `start_server(contexts=...)` and
PresentationContext are public; should pynetdicom stop deep-copying, this only stops mattering.
tests/dimse/test_listener.py checks that an association's supported contexts are the shared ones.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

from pynetdicom.presentation import PresentationContext


class SharedPresentationContext(PresentationContext):
    """A supported presentation context that cannot change once built, so copies of it are itself."""

    # In a slot, not in the instance's __dict__: PresentationContext compares contexts by __dict__.
    __slots__ = ("_frozen",)

    def freeze(self) -> SharedPresentationContext:
        object.__setattr__(self, "_frozen", True)
        return self

    @property
    def frozen(self) -> bool:
        return getattr(self, "_frozen", False)

    def __setattr__(self, name: str, value: Any) -> None:
        if self.frozen:
            raise AttributeError(f"a shared presentation context cannot change ({name})")
        super().__setattr__(name, value)

    def add_transfer_syntax(self, syntax: Any) -> None:
        if self.frozen:
            raise AttributeError("a shared presentation context cannot change (transfer syntax)")
        super().add_transfer_syntax(syntax)

    def __deepcopy__(self, memo: dict[int, Any]) -> SharedPresentationContext:
        return self


def shared(contexts: Iterable[PresentationContext]) -> list[PresentationContext]:
    """Frozen copies of `contexts` (an AE's supported contexts), made once, for start_server(contexts=...)."""
    made: list[PresentationContext] = []
    for context in contexts:
        one = SharedPresentationContext()
        # The same attributes, values copied once here; transfer syntaxes stay a list (negotiation
        # iterates and searches it), and nothing appends to it once frozen (add_transfer_syntax).
        for name, value in copy.deepcopy(vars(context)).items():
            setattr(one, name, value)
        made.append(one.freeze())
    return made
