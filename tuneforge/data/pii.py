"""Finding and redacting personal data in training text: emails, phone numbers, card numbers
and bank account numbers, each replaced by a typed placeholder.

A model memorises what it sees often enough, so personal data in a training set can come back
out of the fine-tuned model. Redaction keeps the shape of the text ("write to [EMAIL]") so the
model still learns how such replies look. Numbers are only redacted when their structure says
what they are: card numbers must pass the Luhn check and IBANs the ISO 7064 mod-97 check, so
order numbers, amounts and dates are left alone.

Example:
    >>> redact_pii("Card 4111 1111 1111 1111, mail ann@example.com")
    ('Card [CARD_NUMBER], mail [EMAIL]', Counter({'CARD_NUMBER': 1, 'EMAIL': 1}))
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable

EMAIL = "EMAIL"
PHONE = "PHONE"
CARD_NUMBER = "CARD_NUMBER"
ACCOUNT_NUMBER = "ACCOUNT_NUMBER"
PII_TYPES = (EMAIL, PHONE, CARD_NUMBER, ACCOUNT_NUMBER)

_EMAIL_RE = re.compile(
    r"(?<![\w.+-])[A-Za-z0-9][A-Za-z0-9._%+-]*@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*\.[A-Za-z]{2,}(?![\w-])"
)
# IBAN: country code, two check digits, then 11-30 letters/digits, optionally in groups of four.
_IBAN_RE = re.compile(
    r"(?<![A-Za-z0-9])[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?(?![A-Za-z0-9])"
)
# Card numbers: 13-19 digits written together, or in groups of four (Amex: 4-6-5) with one
# consistent separator.
_CARD_RE = re.compile(
    r"(?<![\d-])(?:\d{13,19}|\d{4}([ -])\d{4}\1\d{4}\1\d{4}(?:\1\d{1,3})?|\d{4}([ -])\d{6}\2\d{5})(?![\d])"
)
# Account numbers the text introduces as such ("account number: 12345678", "acct #1234-5678").
_ACCOUNT_RE = re.compile(
    r"(?i)\b(?:account|acct|a/c)(?:\s+(?:number|no\.?|num\.?)|\s*#|\s*no\.)?\s*[:#]?\s*"
    r"(\d[\d -]{4,20}\d)(?![\d])"
)
# Phone numbers: international (+CC ...), North American ((555) 123-4567, 555-123-4567) and
# European national numbers starting with 0 (020 7946 0958, 06 12 34 56 78). Dates, amounts and
# bare short numbers do not fit these shapes.
_PHONE_RE = re.compile(
    r"(?<![\w+])(?:"
    r"\+\d{1,3}(?:[ .-]?\(\d{1,4}\))?(?:[ .-]?\d{1,4}){2,5}"
    r"|\(\d{3}\)[ .-]?\d{3}[ .-]?\d{4}"
    r"|\d{3}([ .-])\d{3}\1\d{4}"
    r"|\d{10}"
    r"|0\d{1,4}[ .-]\d{3,4}[ .-]\d{3,4}"
    r"|0\d(?:[ .-]\d{2}){4}"
    r")(?![\w])"
)


def luhn_ok(digits: str) -> bool:
    """Whether a string of digits passes the Luhn checksum that every payment card number carries."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def iban_ok(iban: str) -> bool:
    """Whether `iban` (spaces allowed) passes the ISO 13616 mod-97 check."""
    compact = iban.replace(" ", "").upper()
    if not 15 <= len(compact) <= 34:
        return False
    rearranged = compact[4:] + compact[:4]
    try:
        number = int("".join(str(int(ch, 36)) for ch in rearranged))
    except ValueError:
        return False
    return number % 97 == 1


def _digits(text: str) -> str:
    return "".join(ch for ch in text if ch.isdigit())


def _replacer(kind: str, counts: Counter[str], check: Callable[[str], bool] | None = None):
    placeholder = f"[{kind}]"

    def replace(match: re.Match) -> str:
        if check is not None and not check(match.group(0)):
            return match.group(0)
        counts[kind] += 1
        return placeholder

    return replace


def _replace_account(counts: Counter[str]):
    def replace(match: re.Match) -> str:
        counts[ACCOUNT_NUMBER] += 1
        start, end = match.span(1)
        whole = match.group(0)
        offset = match.start(0)
        return whole[: start - offset] + f"[{ACCOUNT_NUMBER}]" + whole[end - offset :]

    return replace


def _is_phone(text: str) -> bool:
    return 7 <= len(_digits(text)) <= 15


# A cheap test that lets text without '@' and without runs of digits skip every regex.
_MAYBE_PII = re.compile(r"@|\d{2}")


def redact_pii(text: str) -> tuple[str, Counter[str]]:
    """Replace emails, phone numbers, card numbers and account numbers with typed placeholders.

    Returns the redacted text and how many of each type were replaced (keys from `PII_TYPES`).
    Digit runs that fail the card (Luhn) or IBAN (mod-97) checksum are left as they are.
    """
    counts: Counter[str] = Counter()
    if not _MAYBE_PII.search(text):
        return text, counts
    if "@" in text:
        text = _EMAIL_RE.sub(_replacer(EMAIL, counts), text)
    text = _IBAN_RE.sub(_replacer(ACCOUNT_NUMBER, counts, iban_ok), text)
    text = _CARD_RE.sub(_replacer(CARD_NUMBER, counts, lambda s: luhn_ok(_digits(s))), text)
    text = _ACCOUNT_RE.sub(_replace_account(counts), text)
    text = _PHONE_RE.sub(_replacer(PHONE, counts, _is_phone), text)
    return text, counts
