"""How one stored response is laid out in one Redis string, so that a hit is one GET and a split.

    HC1 <variant> <stored_at_ms> <initial_age_ms> <lifetime_ms> <swr_ms> <sie_ms> <flags>
        <status> <vary> <hlen> T[ <tag> <purge_seq>]...\\n            (one line, spaces)
    <header block: "name: value\\r\\n" per field, hlen bytes><body bytes, unchanged>

Everything a hit needs is decided when the response is stored (freshness lifetime, corrected
initial age, stale windows, flags), so a hit parses no Cache-Control. The line is written
partly by the fill script (``store``): the stored-at time is Redis's clock (``TIME``), the
one clock every replica reads ages against, and each tag's purge sequence is read in the same
script that stores the entry (a purge between the upstream's answer and the fill is seen).
``variant`` is ``-`` or the hash of the request header values ``vary`` names; ``flags`` is
``-`` or letters: ``m`` never stale (must-revalidate, proxy-revalidate, s-maxage), ``n``
no-cache (revalidate every time). Header names are lower case; tags hold no space.

The bytes ``HC1 PASS`` are a hit-for-miss marker: the last answer was not storable, so
requests for the key go to the upstream at once, without waiting on a fill lease.
"""

from __future__ import annotations

from dataclasses import dataclass

MAGIC = b"HC1"
PASS = b"HC1 PASS"
NO_VARIANT = b"-"
#: The Lua pattern of the fields the lookup script reads: stored-at, initial age, lifetime.
LUA_PATTERN = "^HC1 %S+ (%d+) (%d+) (%d+) "

Headers = list[tuple[bytes, bytes]]


@dataclass(slots=True)
class Stored:
    variant: bytes
    stored_at_ms: int
    initial_age_ms: int
    lifetime_ms: int
    swr_ms: int
    sie_ms: int
    flags: bytes
    status: int
    vary: tuple[bytes, ...]
    headers: Headers
    body: bytes
    tags: tuple[bytes, ...] = ()

    def age_ms(self, now_ms: int) -> int:
        """RFC 9111 section 4.2.3: corrected initial age plus resident time."""
        return self.initial_age_ms + max(0, now_ms - self.stored_at_ms)

    @property
    def no_stale(self) -> bool:
        return b"m" in self.flags

    @property
    def no_cache(self) -> bool:
        return b"n" in self.flags

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None


def fields(
    *,
    initial_age_ms: int,
    lifetime_ms: int,
    swr_ms: int,
    sie_ms: int,
    flags: bytes,
    status: int,
    vary: tuple[bytes, ...],
    header_block: bytes,
) -> bytes:
    """The part of the line after the stored-at time (the fill script adds the rest)."""
    return b"%d %d %d %d %b %d %b %d" % (
        initial_age_ms,
        lifetime_ms,
        swr_ms,
        sie_ms,
        flags or b"-",
        status,
        b",".join(vary) or b"-",
        len(header_block),
    )


def header_block(headers: Headers) -> bytes:
    return b"".join(b"%b: %b\r\n" % (name, value) for name, value in headers)


def decode(raw: bytes) -> Stored | None:
    """The stored response; None for anything else (a miss), the PASS marker included."""
    end = raw.find(b"\n")
    if end < 0 or not raw.startswith(b"HC1 "):
        return None
    parts = raw[:end].split(b" ")
    if len(parts) < 12 or parts[11] != b"T":
        return None
    try:
        hlen = int(parts[10])
        block = raw[end + 1 : end + 1 + hlen]
        headers: Headers = []
        for line in block.split(b"\r\n"):
            if line:
                name, _, value = line.partition(b": ")
                headers.append((name, value))
        vary = parts[9]
        return Stored(
            variant=parts[1],
            stored_at_ms=int(parts[2]),
            initial_age_ms=int(parts[3]),
            lifetime_ms=int(parts[4]),
            swr_ms=int(parts[5]),
            sie_ms=int(parts[6]),
            flags=parts[7],
            status=int(parts[8]),
            vary=() if vary == b"-" else tuple(vary.split(b",")),
            headers=headers,
            body=raw[end + 1 + hlen :],
            tags=tuple(parts[12::2]),
        )
    except ValueError:
        return None
