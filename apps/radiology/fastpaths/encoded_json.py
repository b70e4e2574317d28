"""A JSON object that carries its own JSON text, so it is encoded once however often it is written.

Ingest needs a DICOM header's JSON twice: as the image_metadata column and inside the
metadata_text column (the same object with a BulkDataURI attribute for each bulk element
put in tag order). Encoding ~11 KB of JSON twice per instance, plus once more in the
database driver's adapter, was ~10% of a STOW-RS batch. An EncodedJSON is encoded once
(compact), in pieces cut where the bulk attributes will go; the JSONField's encoder writes
its text as is, and metadata_text is the same pieces with the bulk attributes between them.
"""

from __future__ import annotations

import bisect
import json
from collections.abc import Iterable
from typing import Any, NoReturn

import orjson

COMPACT = (",", ":")


def encode(value: Any) -> str:
    """Compact JSON text, as every stored header's text is written.

    orjson writes it (json.dumps was ~6% of a STOW-RS instance's CPU). It writes non-ASCII
    characters as UTF-8 where json.dumps escapes them, and 1e-05 as 0.00001: the same JSON.
    What it refuses (an int beyond 64 bits, a float subclass) json.dumps writes instead.
    """
    try:
        return orjson.dumps(value).decode()
    except TypeError:  # orjson.JSONEncodeError is one
        return json.dumps(value, separators=COMPACT)


class EncodedJSON(dict[str, Any]):
    """A dict that cannot change, with `text`: its JSON, written when it was made.

    Read-only because the text is written once: a change after that would be stored as the
    old text. Its members are encoded in runs cut before each key of `cut_before` (keys it
    does not have), so `spliced` can place members there without encoding anything again.
    """

    __slots__ = ("cuts", "held", "pieces", "text")

    def __init__(self, value: dict[str, Any], *, cut_before: Iterable[str] = (), hold: Iterable[str] = ()) -> None:
        # `hold`: keys taken out (kept in `held`) and cut before, for `filled` to put other values in.
        held = {key: value[key] for key in hold if key in value}
        if held:
            value = {key: member for key, member in value.items() if key not in held}
        super().__init__(value)
        self.held: dict[str, Any] = held
        keys = list(value)
        cuts = sorted(set(cut_before) | set(hold))
        if keys == sorted(keys) and not any(cut in value for cut in cuts):
            ends = [bisect.bisect_left(keys, cut) for cut in cuts]
            runs = zip([0, *ends], [*ends, len(keys)], strict=True)
            pieces = [encode({key: value[key] for key in keys[start:end]})[1:-1] for start, end in runs]
            self.cuts: tuple[str, ...] | None = tuple(cuts)
        else:  # members out of order: nothing can be placed between them by tag
            pieces = [encode(value)[1:-1]]
            self.cuts = None
        self.pieces = tuple(pieces)
        self.text = _joined(self.pieces)

    @classmethod
    def _restored(
        cls,
        value: dict[str, Any],
        text: str,
        pieces: tuple[str, ...],
        cuts: tuple[str, ...] | None,
        held: dict[str, Any] | None = None,
    ) -> EncodedJSON:
        restored = cls.__new__(cls)
        dict.update(restored, value)
        restored.text, restored.pieces, restored.cuts, restored.held = text, pieces, cuts, held or {}
        return restored

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickled (for the ingest parse helper) with its text: a copy is not encoded again.
        return (EncodedJSON._restored, (dict(self), self.text, self.pieces, self.cuts, self.held))

    def filled(self, members: dict[str, Any]) -> EncodedJSON:
        """A new EncodedJSON: this one with `members` put in at cuts (the held keys' places),
        still cut before its other cuts; only the members are encoded.

        A member at no cut (or an object out of key order) means encoding the whole object anew.
        """
        merged = dict(sorted({**self, **members}.items()))
        if self.cuts is None or not set(members) <= set(self.cuts):
            return EncodedJSON(merged, cut_before=[cut for cut in self.cuts or () if cut not in members])
        pieces = [self.pieces[0]]
        remaining = []
        for cut, piece in zip(self.cuts, self.pieces[1:], strict=True):
            if cut in members:
                pieces[-1] = ",".join(part for part in (pieces[-1], _member(cut, members[cut]), piece) if part)
            else:
                remaining.append(cut)
                pieces.append(piece)
        return EncodedJSON._restored(merged, _joined(pieces), tuple(pieces), tuple(remaining))

    def spliced(self, members: dict[str, str]) -> str | None:
        """The object's text with `members` (key -> its value's JSON text) added in key order.

        None when the members are not exactly the keys it was cut before (or its own keys are
        out of order): the caller then encodes the whole object.
        """
        if self.cuts is None or tuple(sorted(members)) != self.cuts:
            return None
        parts = [self.pieces[0]]
        for key, piece in zip(self.cuts, self.pieces[1:], strict=True):
            parts += [f"{json.dumps(key)}:{members[key]}", piece]
        return _joined(parts)

    def _read_only(self, *_args: Any, **_kwargs: Any) -> NoReturn:
        raise TypeError("An EncodedJSON is read-only: make a dict of it to change it.")

    __setitem__ = __delitem__ = __ior__ = _read_only
    clear = pop = popitem = setdefault = update = _read_only


def _member(key: str, value: Any) -> str:
    return f"{json.dumps(key)}:{encode(value)}"


def _joined(pieces: Iterable[str]) -> str:
    return "{" + ",".join(piece for piece in pieces if piece) + "}"


class EncodedJSONEncoder(json.JSONEncoder):
    """The JSONField encoder: an EncodedJSON as its text, anything else as json.dumps does."""

    def encode(self, o: Any) -> str:
        if isinstance(o, EncodedJSON):
            return o.text
        return super().encode(o)
