"""What a notification may say: each kind's values, checked and made safe to show.

:data:`SPECS` names, per kind, the context values it requires, those it may carry and those that
are amounts; :func:`prepare_context` turns a stored context into the values the templates read
(every key of :data:`TEMPLATE_KEYS`, absent ones ``None``) or raises :class:`RenderError`.

What the victim reads comes from outside the program (a caseworker's words, a custodian's
transaction id, the name typed when the claim was filed), so it is checked here: one-line values
stay one line, web addresses in free text are defanged, a "name" that is not plainly a name gives
the generic greeting, amounts and rates are shown through :mod:`claims.money`. The only links an
email carries are made here too: the status page (:func:`status_url`) and, for a ``paid``
notice, the block explorer's page of its transaction (:func:`explorer_url`).
"""

from __future__ import annotations

import re
from fractions import Fraction
from typing import Any, Mapping
from urllib.parse import quote

from claims.money import AmountError, format_amount, parse_amount, rate_percent
from claims.outbox import KINDS


class RenderError(ValueError):
    """A notification that cannot be rendered, with the reason in plain words."""


#: kind → (required keys, optional keys, keys that are amounts)
SPECS: dict[str, tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]] = {
    "received": ((), (), ()),
    "needs_info": (("request",), (), ()),
    "approved": (("recognized_loss",), (), ("recognized_loss",)),
    "rejected": (("reason",), (), ()),
    "dispute_received": ((), ("amount",), ("amount",)),
    "dispute_settled": (("amount",), ("reason",), ("amount",)),
    "address_change_requested": (("code", "payout_network", "payout_address"), ("expires_minutes",), ()),
    "address_changed": (("payout_network", "payout_address"), (), ()),
    "allocated": (("amount",), ("rate_percent", "rate"), ("amount",)),
    "paid": (("amount", "tx_id"), ("payout_network",), ("amount",)),
    "failed": ((), ("amount",), ("amount",)),
    "token_reset": (("access_token",), (), ()),
}
assert set(SPECS) == set(KINDS)
#: every key a template may look at (absent ones are None: the templates use StrictUndefined)
TEMPLATE_KEYS = frozenset(
    {"reference", "name", "public_url", "status_url", "network_label", "explorer_url", "rate_percent"}
    | {key for spec in SPECS.values() for key in spec[0] + spec[1]}
) - {"rate"}

NETWORK_LABELS = {"tron": "TRON (TRC-20)", "ethereum": "Ethereum (ERC-20)"}

#: line breaks other than ``\n`` (a value's lines are joined with ``\n``; a header has none)
LINE_BREAKS = re.compile(r"\r\n?|[\x0b\x0c\x85\u2028\u2029]")

_TRON_TX = re.compile(r"(?:0x)?([0-9a-fA-F]{64})")
_ETH_TX = re.compile(r"(?:0x)?([0-9a-fA-F]{64})")
_PERCENT_RE = re.compile(r"(0|[1-9][0-9]{0,2})(\.[0-9]{1,9})?")
_URL_IN_TEXT = re.compile(r"(?i)\b(?:[a-z][a-z0-9+.-]{1,15}://|www\.)[^\s<>\"']+")
_NAME_PUNCT = frozenset(" -'’")
_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1f\x7f]")


def explorer_url(network: str | None, tx_id: str) -> str | None:
    """The public block explorer's page of a transaction, or ``None`` when ``tx_id`` is not a
    transaction hash of a known network (a custodian's own id)."""
    tx = tx_id.strip()
    if network == "tron":
        m = _TRON_TX.fullmatch(tx)
        return f"https://tronscan.org/#/transaction/{m.group(1).lower()}" if m else None
    if network == "ethereum":
        m = _ETH_TX.fullmatch(tx)
        return f"https://etherscan.io/tx/0x{m.group(1).lower()}" if m else None
    return None


def status_url(public_url: str, reference: str, lang: str) -> str:
    """The official status page of a claim, the only link an email may carry besides an explorer's."""
    return f"{public_url.rstrip('/')}/status?reference={quote(reference, safe='')}&lang={lang}"


def _text(value: Any, key: str) -> str:
    if value is None:
        raise RenderError(f"context value {key!r} is missing")
    text = _CONTROL.sub("", LINE_BREAKS.sub("\n", str(value))).strip()
    if not text:
        raise RenderError(f"context value {key!r} is empty")
    return text


def _defang(text: str) -> str:
    """Free text from outside (a caseworker's words, a custodian's id) must not add links:
    ``https://x.example/a`` is shown as ``x[.]example/a``."""
    def neuter(m: re.Match[str]) -> str:
        url = m.group(0)
        rest = url.split("://", 1)[1] if "://" in url else url
        return rest.replace(".", "[.]")

    return _URL_IN_TEXT.sub(neuter, text)


def _greeting_name(value: Any) -> str | None:
    """The claimant's name for the greeting, or ``None`` (the generic greeting) when it is not
    plainly a name: the name is typed by whoever filed the claim, so a "name" carrying a web
    address or other text must not reach the inbox of the email's owner."""
    if value in (None, ""):
        return None
    name = " ".join(str(value).split())
    if len(name) > 80 or not all(ch.isalpha() or ch in _NAME_PUNCT for ch in name):
        return None
    return name


def _one_line(value: Any, key: str) -> str:
    text = _text(value, key)
    if "\n" in text:
        raise RenderError(f"context value {key!r} must be one line")
    return text


def _amount(value: Any, key: str) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        return format_amount(value)
    try:
        return format_amount(parse_amount(value))
    except AmountError as exc:
        raise RenderError(f"context value {key!r} {exc}") from None


def _rate_percent(ctx: Mapping[str, Any]) -> str:
    if ctx.get("rate_percent") is not None:
        text = str(ctx["rate_percent"])
        m = _PERCENT_RE.fullmatch(text)
        if m is None or Fraction(text) > 100:
            raise RenderError("context value 'rate_percent' must be a percentage such as \"40\" or \"25.5\"")
        return text
    rate = ctx.get("rate")
    if rate is None:
        raise RenderError("context value 'rate_percent' (or 'rate') is missing")
    if isinstance(rate, float) or isinstance(rate, bool):
        raise RenderError("context value 'rate' must be a Fraction or a decimal string, not a float")
    try:
        fraction = Fraction(rate)
    except (TypeError, ValueError, ZeroDivisionError):
        raise RenderError("context value 'rate' is not a number") from None
    if not 0 <= fraction <= 1:
        raise RenderError("context value 'rate' must be between 0 and 1")
    return rate_percent(fraction)


def prepare_context(kind: str, lang: str, context: Mapping[str, Any], public_url: str) -> dict[str, Any]:
    """The values the templates of ``kind`` read, from a stored ``context``: required ones present,
    amounts formatted, free text defanged, one-line values one line, plus the status page's
    link, the network's label and a paid notice's explorer link. Raises :class:`RenderError`."""
    required, optional, amounts = SPECS[kind]
    reference = _one_line(context.get("reference"), "reference")
    ctx: dict[str, Any] = {
        "reference": reference,
        "name": _greeting_name(context.get("name")),
        "public_url": public_url,
        "status_url": status_url(public_url, reference, lang),
        "network_label": None,
        "explorer_url": None,
    }
    for key in required:
        if key in ("rate_percent", "rate"):
            continue
        if context.get(key) in (None, ""):
            raise RenderError(f"context value {key!r} is missing for a {kind!r} notification")
    for key in required + optional:
        value = context.get(key)
        if key in amounts:
            ctx[key] = None if value in (None, "") else _amount(value, key)
        elif key in ("rate_percent", "rate"):
            continue
        elif key == "expires_minutes":
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise RenderError("context value 'expires_minutes' must be a positive integer")
            ctx[key] = value
        elif key in ("request", "reason"):
            ctx[key] = None if value in (None, "") else _defang(_text(value, key))
        else:
            ctx[key] = None if value in (None, "") else _one_line(value, key)
    if kind == "allocated":
        ctx["rate_percent"] = _rate_percent(context)
    network = ctx.get("payout_network")
    if network is not None:
        ctx["network_label"] = NETWORK_LABELS.get(network, network)
    if kind == "paid":
        ctx["explorer_url"] = explorer_url(network, ctx["tx_id"])
        if ctx["explorer_url"] is None:
            ctx["tx_id"] = _defang(ctx["tx_id"])
    return ctx
