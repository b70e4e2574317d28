"""Reading DICOMweb Accept headers: quoted or unquoted parameters, several values at once.

OHIF sends `multipart/related; type="application/octet-stream"; transfer-syntax=*`, or the
same without quotes (omitQuotationForMultipartRequest); servers that refused one of the forms
broke it. Django's own Accept helpers ignore `type=` and `transfer-syntax=`, which is exactly
what DICOMweb negotiates on, hence this small parser.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

# A comma that is not inside a quoted string separates two media ranges.
_SPLIT = re.compile(r',(?=(?:[^"]*"[^"]*")*[^"]*$)')
_PARAM = re.compile(r'^\s*([!#$%&\'*+.^_`|~0-9A-Za-z-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;]*)\s*$')


@dataclass(frozen=True)
class MediaRange:
    """One entry of an Accept header, e.g. multipart/related with type and transfer-syntax."""

    media_type: str
    params: dict[str, str] = field(default_factory=dict)
    quality: float = 1.0

    @property
    def part_type(self) -> str | None:
        """The `type=` of a multipart/related range (what each part is)."""
        value = self.params.get("type")
        return value.lower() if value else None

    @property
    def transfer_syntax(self) -> str | None:
        return self.params.get("transfer-syntax")

    def matches(self, media_type: str) -> bool:
        wanted, _, wanted_sub = self.media_type.partition("/")
        offered, _, offered_sub = media_type.lower().partition("/")
        return (wanted in ("*", offered)) and (wanted_sub in ("*", offered_sub))


def parse_accept(header: str | None) -> list[MediaRange]:
    """Media ranges of an Accept header, best first; `*/*` when the header is missing or empty.

    Ranges with q=0 are "not acceptable" (RFC 9110 12.4.2): they are dropped, and a header
    naming nothing else leaves nothing acceptable.
    """
    if not header or not header.strip():
        return [MediaRange("*/*")]
    ranges: list[MediaRange] = []
    for raw in _SPLIT.split(header):
        pieces = raw.split(";")
        media_type = pieces[0].strip().lower()
        if not media_type:
            continue
        params: dict[str, str] = {}
        quality = 1.0
        for piece in pieces[1:]:
            match = _PARAM.match(piece)
            if match is None:
                continue
            name, value = match.group(1).lower(), match.group(2).strip()
            if value.startswith('"') and value.endswith('"'):
                value = value[1:-1]
            if name == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
            else:
                params[name] = value
        if quality > 0:
            ranges.append(MediaRange(media_type, params, quality))
    ranges.sort(key=lambda item: -item.quality)  # stable: equal quality keeps the client's order
    return ranges
