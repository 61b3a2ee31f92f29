"""Client phone numbers: from whatever the trunk sends to E.164.

Carriers hand Asterisk Russian numbers as `84951234567`, `74951234567`, `+74951234567` or
`4951234567`; all of them are one subscriber, `+74951234567`. `phonenumbers` knows the national
prefixes and lengths of every region, so the default region (RU) decides how a number without `+`
is read. A `7XXXXXXXXXX` with eleven digits is the country code written without `+`: phonenumbers
reads it as a national number, so that form is tried as international first.

Withheld numbers arrive as `anonymous`, `<unknown>`, `unknown`, `restricted`, `private` or empty:
they normalise to None. Anything else that is not a valid number also gives None (the raw value is
kept next to it by the caller), so garbage caller ids never crash the meter.
"""

from __future__ import annotations

import phonenumbers

WITHHELD = frozenset({"", "anonymous", "<unknown>", "unknown", "restricted", "private", "unavailable"})


def is_withheld(raw: str | None) -> bool:
    return raw is None or raw.strip().lower() in WITHHELD


def normalize(raw: str | None, region: str = "RU") -> str | None:
    """E.164 form of `raw` (`+74951234567`), or None when withheld or not a valid number."""
    if is_withheld(raw):
        return None
    assert raw is not None
    text = raw.strip()
    digits = "".join(ch for ch in text if ch.isdigit())
    if not digits or len(digits) > 15:
        return None
    candidates = [text]
    if not text.startswith("+") and _looks_international(digits, region):
        candidates.insert(0, "+" + digits)
    for candidate in candidates:
        parsed = _parse(candidate, region)
        if parsed is not None and phonenumbers.is_valid_number(parsed):
            return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)
    return None


def _looks_international(digits: str, region: str) -> bool:
    code = phonenumbers.country_code_for_region(region)
    return digits.startswith(str(code)) and len(digits) == 11 and region in {"RU", "KZ"}


def _parse(text: str, region: str) -> phonenumbers.PhoneNumber | None:
    try:
        return phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException:
        return None
