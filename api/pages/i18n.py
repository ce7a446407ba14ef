"""The victim-facing words (gettext domain ``pages``) and the page language.

Catalogs: ``templates/locale/{kk,ru,en}/LC_MESSAGES/pages.po`` (compiled ``pages.mo``
committed), extracted from this module and ``templates/pages/`` with ``babel-pages.cfg``.
Loading goes through :mod:`notifications.i18n` (one loader for every domain).

The domain (``claims/intake/status.py``) speaks in codes — statuses, timeline events, payout
states, validator messages in English; this module turns them into the claimant's language.
A validator message that has no translation falls back to a hint for its field in that
language, so a Kazakh reader never gets an English sentence.
"""

from __future__ import annotations

from typing import Any

from notifications.i18n import DEFAULT_LANGUAGE, LANGUAGES, TEMPLATES_DIR, get_env, get_translations

DOMAIN = "pages"
PAGES_DIR = TEMPLATES_DIR / "pages"


def N_(message: str) -> str:
    """Mark a string for extraction; translated later, when the language is known."""
    return message


def gettext(lang: str, message: str) -> str:
    return get_translations(DOMAIN, lang).gettext(message)


def env(lang: str):
    return get_env(PAGES_DIR, DOMAIN, lang)


def pick_language(query_lang: str | None, accept_language: str | None) -> str:
    """``?lang=`` when it is one of ours, else the best of Accept-Language, else Kazakh."""
    if query_lang in LANGUAGES:
        return query_lang  # type: ignore[return-value]
    if accept_language:
        ranked: list[tuple[float, int, str]] = []
        for i, part in enumerate(accept_language.split(",")):
            tag, _, params = part.strip().partition(";")
            q = 1.0
            params = params.strip()
            if params.startswith("q="):
                try:
                    q = float(params[2:])
                except ValueError:
                    q = 0.0
            primary = tag.strip().split("-")[0].lower()
            if primary in LANGUAGES and q > 0:
                ranked.append((-q, i, primary))
        if ranked:
            return sorted(ranked)[0][2]
    return DEFAULT_LANGUAGE


# ----------------------------------------------------------------------------- statuses

STATUS_TEXT = {
    "submitted": N_("Received, waiting to be checked"),
    "verifying": N_("Being checked against the scheme's records"),
    "flagged": N_("Under review by a caseworker"),
    "needs_info": N_("We need more information from you"),
    "approved": N_("Approved"),
    "disputed": N_("Your objection is being reviewed"),
    "rejected": N_("Rejected"),
}

EVENT_TEXT = {
    "filed": N_("Claim received"),
    "document_added": N_("Document received"),
    "replied": N_("Your answer was received; checking again"),
    "disputed": N_("Your objection to the amount was received"),
    "dispute_settled": N_("Your objection was decided"),
    "address_change_requested": N_("Payout address change requested"),
    "address_changed": N_("Payout address changed"),
    "token_reset": N_("A new access token was issued"),
    "status_submitted": N_("Claim received"),
    "status_verifying": N_("Checking against the scheme's records"),
    "status_flagged": N_("Under review by a caseworker"),
    "status_needs_info": N_("More information requested from you"),
    "status_approved": N_("Claim approved"),
    "status_disputed": N_("Your objection is being reviewed"),
    "status_rejected": N_("Claim rejected"),
}

PAYOUT_TEXT = {
    "pending": N_("Being prepared"),
    "held": N_("On hold"),
    "signed": N_("Being sent"),
    "broadcast": N_("Sent, waiting for confirmation"),
    "exported": N_("Handed to the paying agent"),
    "confirmed": N_("Paid"),
    "failed": N_("Not delivered; we will try again or contact you"),
}

NETWORK_TEXT = {"tron": N_("TRON (TRC-20)"), "ethereum": N_("Ethereum (ERC-20)")}


def localize_status(view: dict[str, Any], lang: str) -> dict[str, Any]:
    """The domain's status view with words in ``lang`` beside every code."""
    tr = get_translations(DOMAIN, lang).gettext
    out = dict(view)
    out["status_text"] = tr(STATUS_TEXT.get(view["status"], view["status"]))
    network = view.get("payout_network")
    out["payout_network_text"] = tr(NETWORK_TEXT[network]) if network in NETWORK_TEXT else network
    out["timeline"] = [
        {**e, "text": tr(EVENT_TEXT.get(e["event"], e["event"]))} for e in view["timeline"]
    ]
    out["payouts"] = [
        {**p, "state_text": tr(PAYOUT_TEXT.get(p["state"], p["state"]))} for p in view["payouts"]
    ]
    return out


# ----------------------------------------------------------------------------- field errors

FIELD_LABEL = {
    "case_id": N_("Case code"),
    "full_name": N_("Full name"),
    "iin": N_("IIN (individual identification number)"),
    "date_of_birth": N_("Date of birth"),
    "email": N_("E-mail"),
    "phone": N_("Phone"),
    "language": N_("Language of messages"),
    "scheme_account": N_("Your account or login in the scheme"),
    "claimed_amount": N_("Amount lost (USDT)"),
    "evidence_tx_hashes": N_("Transaction hashes of your deposits"),
    "payout_network": N_("Payout network"),
    "payout_address": N_("Payout address (USDT)"),
    "consent": N_("Consent"),
    "reference": N_("Claim reference"),
    "access_token": N_("Access token"),
}

# When a validator's exact message has no translation: what to check, per field.
FIELD_HINT = {
    "case_id": N_("Choose the case of the scheme you invested in."),
    "full_name": N_("Enter your full name as in your identity document."),
    "iin": N_("Enter your 12-digit IIN exactly as in your identity document."),
    "date_of_birth": N_("Enter your date of birth as in your identity document (it must agree with your IIN)."),
    "email": N_("Enter a valid e-mail address, e.g. name@example.kz."),
    "phone": N_("Enter a Kazakhstan phone number: +7 followed by 10 digits."),
    "language": N_("Choose Kazakh, Russian or English."),
    "scheme_account": N_("Enter your account or login in the scheme, up to 100 characters, or leave it empty."),
    "claimed_amount": N_("Enter the amount in USDT with digits and at most 6 decimals after a point, e.g. 1500.25."),
    "evidence_tx_hashes": N_("Enter transaction hashes of 64 hexadecimal characters (Ethereum ones start with 0x), one per line."),
    "payout_network": N_("Choose TRON or Ethereum."),
    "payout_address": N_("Check the payout address character by character: it must be a valid address of the chosen network."),
    "consent": N_("You must agree to the processing of your personal data to file a claim."),
    "body": N_("The form could not be read; please fill it in again."),
}

# Validator messages (claims/validators/, claims/money.py, claims/cases.py) that have an exact
# translation; any other message falls back to FIELD_HINT.
KNOWN_MESSAGES = (
    N_("is required"),
    N_("must be true: the claimant must consent to the processing of their personal data"),
    N_("must be exactly 12 digits (0-9), nothing else"),
    N_("IIN check digit is wrong — check for a typo"),
    N_("is not a valid IIN: these digits cannot have a check digit"),
    N_("digits 1-6 of an IIN (birth date YYMMDD) are not a real date"),
    N_("the birth date in the IIN is in the future"),
    N_("does not match the birth date in the IIN"),
    N_("must be a date in the form YYYY-MM-DD"),
    N_("is not a real date"),
    N_("is in the future"),
    N_("is before 1800"),
    N_("must be tron or ethereum"),
    N_("must be kk, ru or en"),
    N_("this is an Ethereum address; the network is tron"),
    N_("this is a TRON address; the network is ethereum"),
    N_("this is a TRON address in hex form; give its base58 form starting with T"),
    N_("a TRON address starts with T"),
    N_("TRON address checksum does not match — check for a typo"),
    N_("is not a TRON address — check for a typo"),
    N_("this is the TRON zero address; it cannot receive payouts"),
    N_("an Ethereum address starts with 0x"),
    N_("an Ethereum address starts with 0x (lower-case x)"),
    N_("Ethereum address checksum (EIP-55 mixed case) does not match — check for a typo"),
    N_("this is the Ethereum zero address; it cannot receive payouts"),
    N_("is neither a TRON address (T…) nor an Ethereum address (0x…)"),
    N_("must be in international form: +7 followed by 10 digits (e.g. +7 701 234 5678)"),
    N_("must be a Kazakhstan number: +7 followed by 10 digits"),
    N_("may contain only +, digits, spaces, hyphens and parentheses"),
    N_("must not be negative"),
    N_("must not have a sign"),
    N_("must not use an exponent"),
    N_("must not use digit grouping"),
    N_("must not contain spaces"),
    N_("has more than 6 decimals (USDT has 6)"),
    N_("must not have leading zeros"),
    N_("must be greater than 0"),
    N_("is too large"),
    N_("needs digits on both sides of the decimal point"),
    N_("must be a decimal string such as \"12.5\", not a number"),
    N_("is not an amount (expected digits with at most 6 decimals, e.g. \"12.5\")"),
    N_("must contain letters"),
    N_("must not contain control characters"),
    N_("no open case has this code"),
    N_("this case is closed to new claims"),
    N_("the deadline for claims in this case has passed"),
    N_("must be a case code: 2-64 characters, lower-case letters, digits and hyphens, not starting with a hyphen"),
)

# Warnings the validators give (accepted, but worth a second look).
WARNING_HINT = {
    "payout_address": N_("The address is all lower or all upper case, so its checksum cannot be checked: make sure it is exactly right."),
}

MESSAGES = {
    "duplicate": N_("A claim with this IIN has already been filed in this case. If it is yours, use its reference and access token on the status page, or request a new token."),
    "rate_limited": N_("Too many attempts from your connection. Please wait a minute and try again."),
    "not_found": N_("No claim was found with this reference and access token. Check both and try again."),
    "fix_errors": N_("Please correct the fields marked below."),
    "reply_sent": N_("Thank you: your answer was received and your claim will be checked again."),
    "document_added": N_("Thank you: your document was received."),
    "unsupported_type": N_("Only PDF, JPEG and PNG files are accepted."),
    "too_large": N_("The file is too large: at most 10 MiB."),
    "not_now": N_("This is not possible for your claim at the moment."),
    "empty_reply": N_("Please write your answer."),
}


def localize_error(field: str, message: str, lang: str) -> str:
    """A validator's English ``message`` about ``field`` in ``lang``."""
    if lang == "en":
        return message
    tr = get_translations(DOMAIN, lang).gettext
    translated = tr(message)
    if translated != message:
        return translated
    hint = FIELD_HINT.get(field)
    return tr(hint) if hint else tr(N_("This field is not filled in correctly."))


def localize_warning(field: str, message: str, lang: str) -> str:
    if lang == "en":
        return message
    tr = get_translations(DOMAIN, lang).gettext
    hint = WARNING_HINT.get(field)
    return tr(hint) if hint else message
