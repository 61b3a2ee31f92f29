"""Phone numbers of clients, written by people in any common form, to E.164.

Accounting keeps its own small normaliser instead of importing telephony (the rating side must
not depend on the call model). The rules match the call tracker's: `84951234567`,
`74951234567`, `+7 (495) 123-45-67` and `4951234567` are all `+74951234567`. An eleven-digit
`7…` without `+` is the country code written without `+`, which phonenumbers would otherwise
read as a national number.
"""

from __future__ import annotations

import phonenumbers

_INTERNATIONAL_WITHOUT_PLUS = {"RU": "7", "KZ": "7"}


def normalize_number(raw: str, region: str = "RU") -> str | None:
    """E.164 form of `raw`, or None when it is not a valid number."""
    text = raw.strip()
    digits = "".join(ch for ch in text if ch.isdigit())
    if not digits or len(digits) > 15:
        return None
    candidates = [text]
    code = _INTERNATIONAL_WITHOUT_PLUS.get(region)
    if not text.startswith("+") and code and digits.startswith(code) and len(digits) == 11:
        candidates.insert(0, "+" + digits)
    for candidate in candidates:
        try:
            parsed = phonenumbers.parse(candidate, region)
        except phonenumbers.NumberParseException:
            continue
        if phonenumbers.is_valid_number(parsed):
            return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)
    return None
