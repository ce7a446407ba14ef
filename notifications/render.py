"""Render a victim's notification: subject, plain text and HTML in the claimant's language.

``render(kind, language, context, ...)`` → an :class:`email.message.EmailMessage`
(``multipart/alternative``: ``text/plain`` then ``text/html``) from the Jinja2 templates in
``templates/email/`` and the gettext domain ``emails`` (``templates/locale``).

Every email carries the claim reference, the anti-phishing notice and one link: the official
status page ``{PUBLIC_URL}/status?reference=REFERENCE&lang=LANG`` (a ``paid`` email adds the block
explorer's page of its transaction when the id is a transaction hash). Victims read plain words;
this module never receives internal flag codes.

Headers: From, To, Subject (RFC 2047 for non-ASCII), Date, ``Message-ID:
<notification-{id}@{domain}>`` (derived from the notification id only, so a retry resends the
same id and a receiver can drop the duplicate), ``Content-Language``,
``Auto-Submitted: auto-generated``, ``X-Auto-Response-Suppress: All``, ``X-Restitution-Kind``.

Bodies are 7bit when ASCII, 8bit UTF-8 when every line fits in 998 bytes (as the standard
library's default policy chooses; SMTP then announces ``BODY=8BITMIME`` and falls back to base64
for a server without it), base64 otherwise.

Speed: the standard library's email generator and parser cost more than the rest of a
message's work, so the message is composed here as bytes directly and the returned
:class:`RenderedMessage` carries them; :mod:`notifications.transport` sends those bytes unless
the message was changed after rendering (then the standard generator serializes it). The object is a complete
``EmailMessage``: headers, ``get_body()``, ``get_content()`` all work — its header list and parts
are built the first time they are used (a message that is only sent never needs them). The
templates are rendered once per (kind, language, which values are present) into a skeleton cut
into literal pieces and slots; a message joins the pieces with its values.

Context keys (all values ``str`` unless said; amounts are USDT decimal strings such as
``"12.5"`` or ``int`` micro-USDT, and are shown through :func:`claims.money.format_amount`):

=============================  ===============================================  =====================
kind                           required                                         optional
=============================  ===============================================  =====================
every kind                     ``reference``                                    ``name`` (greeting) [#]_
``received``                   —                                                —
``needs_info``                 ``request`` (the caseworker's words)             —
``approved``                   ``recognized_loss`` (amount)                     —
``rejected``                   ``reason`` (plain words)                         —
``dispute_received``           —                                                ``amount`` asked for
``dispute_settled``            ``amount`` (the settled recognized loss)         ``reason``
``address_change_requested``   ``code``, ``payout_network``, ``payout_address``  ``expires_minutes``
``address_changed``            ``payout_network``, ``payout_address``           —
``allocated``                  ``amount``, and ``rate_percent`` ("40", "25.5")  —
                               or ``rate`` (``Fraction`` or "0.4", of 1)
``paid``                       ``amount``, ``tx_id``                            ``payout_network``
``failed``                     —                                                ``amount``
``token_reset``                ``access_token``                                 —
=============================  ===============================================  =====================

.. [#] Used only when it is plainly a name (letters, spaces, hyphens, apostrophes; at most 80
   characters), otherwise the generic greeting: whoever files a claim types the name, and it
   must not carry a link into the inbox of the email's owner. For the same reason web addresses
   in the caseworker's words and in a custodian's transaction id are shown defanged
   (``evil[.]example/x``): the status page stays the only link.

Unknown keys are ignored. A notification that can never be rendered (unknown kind or language,
a missing key, a bad amount, a header with a line break) raises :class:`RenderError` (a
``ValueError``): record it as a permanent failure with ``str(error)`` as the reason.
"""

from __future__ import annotations

import base64
import binascii
import re
import threading
import time
from datetime import datetime, timezone
from email.message import EmailMessage
from email.policy import default as DEFAULT_POLICY
from email.utils import format_datetime, formataddr, getaddresses, parseaddr
from fractions import Fraction
from functools import lru_cache
from typing import Any, Mapping
from urllib.parse import quote, urlsplit

from jinja2 import Environment, StrictUndefined, Template
from markupsafe import Markup, escape

from claims.money import AmountError, format_amount, parse_amount, rate_percent
from notifications.i18n import LANGUAGES, TEMPLATES_DIR, make_env

EMAIL_TEMPLATES_DIR = TEMPLATES_DIR / "email"
DOMAIN = "emails"

from claims.outbox import KINDS  # noqa: E402  (one list of notification kinds)

# kind → (required keys, optional keys, keys that are amounts)
_SPECS: dict[str, tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]] = {
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
assert set(_SPECS) == set(KINDS)
# every key a template may look at (absent ones are None: the templates use StrictUndefined)
_ALL_KEYS = frozenset(
    {"reference", "name", "public_url", "status_url", "network_label", "explorer_url", "rate_percent"}
    | {key for spec in _SPECS.values() for key in spec[0] + spec[1]}
) - {"rate"}

NETWORK_LABELS = {"tron": "TRON (TRC-20)", "ethereum": "Ethereum (ERC-20)"}

_TRON_TX = re.compile(r"(?:0x)?([0-9a-fA-F]{64})")
_ETH_TX = re.compile(r"(?:0x)?([0-9a-fA-F]{64})")
_DOMAIN_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\]")
_ID_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")
_PERCENT_RE = re.compile(r"(0|[1-9][0-9]{0,2})(\.[0-9]{1,9})?")
_BARE_ADDRESS = re.compile(r"[^\s@<>()\[\],;:\"\\]+@[^\s@<>()\[\],;:\"\\]+")
_URL_IN_TEXT = re.compile(r"(?i)\b(?:[a-z][a-z0-9+.-]{1,15}://|www\.)[^\s<>\"']+")
_NAME_PUNCT = frozenset(" -'’")
_LINE_BREAKS = re.compile(r"\r\n?|[\x0b\x0c\x85\u2028\u2029]")
_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1f\x7f]")


class RenderError(ValueError):
    """A notification that cannot be rendered, with the reason in plain words."""


_BUILD_LOCK = threading.RLock()


class RenderedMessage(EmailMessage):
    """An ``EmailMessage`` that also holds its serialization, composed while rendering.

    ``wire_bytes()`` returns the message as bytes with ``\\n`` line ends (a Maildir file; SMTP
    turns them into CRLF). If headers or parts were changed after rendering, it falls back to
    the standard generator, so the bytes always describe the object.

    A rendered message is usually only sent, so its ``EmailMessage`` state (header list, the
    two parts) is built the first time anything reads or changes it, not while rendering;
    until then ``wire_bytes()`` and ``wire_message_id()`` answer from the composed bytes.
    """

    envelope_from: str
    envelope_to: list[str]
    smtputf8: bool
    #: a part is sent as 8bit UTF-8 (SMTP needs the server's 8BITMIME, else ``seven_bit_bytes``)
    eight_bit: bool

    @classmethod
    def _composed(cls, headers: list[tuple[str, str]], parts: list[tuple[str, str, str]], wire: bytes,
                  sources: tuple[str, str, str, str]) -> "RenderedMessage":
        msg = cls.__new__(cls)
        msg.__dict__.update(_pending=(headers, parts), _wire=wire, _sources=sources)
        return msg

    def __getattr__(self, name: str) -> Any:
        # Only called for an attribute the object does not have (yet): build the EmailMessage
        # state once (under a lock: another thread may look at the same message), then look again.
        if name.startswith("__"):
            raise AttributeError(name)
        with _BUILD_LOCK:
            pending = self.__dict__.pop("_pending", None)
            if pending is not None:
                self._build(*pending)
        if name in self.__dict__:
            return self.__dict__[name]
        raise AttributeError(name)

    def _build(self, headers: list[tuple[str, str]], parts: list[tuple[str, str, str]]) -> None:
        EmailMessage.__init__(self, policy=DEFAULT_POLICY)
        for key, value in headers:
            self.set_raw(key, value)
        payload = []
        for ctype, cte, body in parts:
            part = EmailMessage(policy=DEFAULT_POLICY)
            part.set_raw("Content-Type", ctype)
            part.set_raw("Content-Transfer-Encoding", cte)
            # 8bit bytes surrogate-escaped, as the email parser holds them
            part.set_payload(body.encode("utf-8").decode("ascii", "surrogateescape") if cte == "8bit" else body)
            payload.append(part)
        self.set_payload(payload)
        self._wire_snapshot = _snapshot(self)

    def _unchanged(self) -> bool:
        return "_pending" in self.__dict__ or _snapshot(self) == self._wire_snapshot

    def wire_bytes(self) -> bytes:
        wire = self.__dict__.get("_wire")
        if wire is not None and self._unchanged():
            return wire
        return self.as_bytes(policy=self.policy.clone(linesep="\n"))

    def wire_message_id(self) -> str | None:
        """The Message-ID as written."""
        pending = self.__dict__.get("_pending")
        if pending is not None:
            return next((v for k, v in pending[0] if k == "Message-ID"), None)
        for key, value in self.raw_items():
            if key.lower() == "message-id":
                return " ".join(str(value).split()) or None
        return None

    def seven_bit_bytes(self) -> bytes:
        """The same message with base64 parts, for an SMTP server without 8BITMIME."""
        sources = self.__dict__.get("_sources")
        if sources is None or not self._unchanged():
            return self.as_bytes(policy=self.policy.clone(linesep="\n", cte_type="7bit"))
        wire, _, _ = _compose(*sources, allow_8bit=False)
        return wire


def _snapshot(msg: EmailMessage) -> tuple[Any, ...]:
    payload = msg._payload  # type: ignore[attr-defined]
    if not isinstance(payload, list):
        return (tuple(msg._headers), payload)  # type: ignore[attr-defined]
    return (
        tuple(msg._headers),  # type: ignore[attr-defined]
        tuple((tuple(p._headers), p._payload) for p in payload),
    )


# --------------------------------------------------------------------------- environment


class _Slot(str):
    """Stands for a context value while a skeleton is rendered: ``\ue000key|filter\ue001``.

    Private-use characters pass unchanged through gettext formatting and HTML escaping; the
    filters below record themselves on a slot instead of transforming it.
    """

    key: str
    filters: tuple[str, ...]

    def __new__(cls, key: str, filters: tuple[str, ...] = ()) -> "_Slot":
        obj = super().__new__(cls, "\ue000" + key + "".join("|" + f for f in filters) + "\ue001")
        obj.key = key
        obj.filters = filters
        return obj


_SLOT_RE = re.compile("\ue000([a-z_]+)((?:\\|[a-z_0-9]+)*)\ue001")


def _quote_text(value: Any) -> str:
    if isinstance(value, _Slot):
        return _Slot(value.key, value.filters + ("quote_text",))
    return "\n".join("> " + line if line else ">" for line in str(value).split("\n"))


def _nl2br(value: Any) -> Markup | str:
    if isinstance(value, _Slot):
        return _Slot(value.key, value.filters + ("nl2br",))
    return Markup("<br>\n").join(escape(line) for line in str(value).split("\n"))


_FILTERS = {"quote_text": _quote_text, "nl2br": _nl2br}


@lru_cache(maxsize=None)
def _env(lang: str) -> Environment:
    env = make_env(EMAIL_TEMPLATES_DIR, DOMAIN, lang, undefined=StrictUndefined)
    env.filters["quote_text"] = _quote_text
    env.filters["nl2br"] = _nl2br
    # Every render copies the globals into a new context: keep only what the emails use.
    for name in ("range", "dict", "lipsum", "cycler", "joiner", "namespace", "pgettext", "npgettext"):
        env.globals.pop(name, None)
    return env


@lru_cache(maxsize=None)
def _templates(kind: str, lang: str) -> tuple[Template, Template]:
    env = _env(lang)
    return env.get_template(f"{kind}.txt"), env.get_template(f"{kind}.html")


def warm_up() -> None:
    """Load every catalog and compile every template now (before forking workers)."""
    for lang in LANGUAGES:
        for kind in KINDS:
            _templates(kind, lang)


# Rendering a template costs far more than the values it carries: a notification's kind and
# language, and which optional values it has, fix every word of it. So each combination is
# rendered once with slots in place of the values (a "skeleton", cached), and a notification is
# its skeleton with the slots filled: values escaped for HTML, filters applied. Values that
# steer the template (an optional value present or not, the number of a plural) are part of the
# cache key. `_render_direct` renders the templates as they are; the tests check both agree.


def _render_direct(
    kind: str, lang: str, ctx: Mapping[str, Any], title: str | None = None
) -> tuple[str, str, str]:
    """(subject, text, html) rendered by Jinja2 from the templates; the HTML's ``subject`` is
    ``title`` when given (a slot), else the rendered subject."""
    text_template, html_template = _templates(kind, lang)
    try:
        text_ctx = text_template.new_context(dict(ctx))
        subject = " ".join("".join(text_template.blocks["subject"](text_ctx)).split())
        text = "".join(text_template.root_render_func(text_ctx))
        html_ctx = html_template.new_context({**ctx, "subject": title if title is not None else subject})
        html = "".join(html_template.root_render_func(html_ctx))
    except RenderError:
        raise
    except Exception:
        text_template.environment.handle_exception()
    return subject, text, html


_STEERING = ("expires_minutes",)  # values whose number picks the words (plurals)


_Compiled = tuple[tuple[str, ...], tuple[tuple[str, tuple[str, ...]], ...]]


def _compile(skeleton: str) -> _Compiled:
    """A skeleton cut once into its literal pieces and its slots ``(key, filters)``:
    ``pieces[0] + value(slots[0]) + pieces[1] + … + pieces[-1]``."""
    parts = _SLOT_RE.split(skeleton)  # literal, key, filters, literal, key, filters, …, literal
    pieces = tuple(parts[0::3])
    slots = tuple((key, tuple(f for f in filters.split("|") if f)) for key, filters in zip(parts[1::3], parts[2::3]))
    return pieces, slots


@lru_cache(maxsize=2048)
def _skeleton(kind: str, lang: str, keys: tuple[str, ...], steering: tuple[Any, ...]) -> tuple[_Compiled, _Compiled, _Compiled]:
    ctx: dict[str, Any] = {key: _Slot(key) for key in keys}
    ctx.update(zip(_STEERING, steering))
    for key in _ALL_KEYS:
        ctx.setdefault(key, None)
    subject, text, html = _render_direct(kind, lang, ctx, title=_Slot("subject"))
    return _compile(subject), _compile(text), _compile(_pack_html(html, limit=600))


def _fill(compiled: _Compiled, values: Mapping[str, Any], html: bool) -> str:
    pieces, slots = compiled
    out = [pieces[0]]
    for (key, filters), piece in zip(slots, pieces[1:]):
        v = values[key]
        for name in filters:
            v = _FILTERS[name](v)
        out.append(escape(v) if html and not isinstance(v, Markup) else str(v))
        out.append(piece)
    return "".join(out)


def _render_bodies(kind: str, lang: str, ctx: dict[str, Any]) -> tuple[str, str, str]:
    """(subject, text, html) of a prepared context, from the cached skeleton."""
    keys = tuple(sorted(k for k, v in ctx.items() if v is not None and k not in _STEERING))
    steering = tuple(ctx.get(k) for k in _STEERING)
    subject_s, text_s, html_s = _skeleton(kind, lang, keys, steering)
    subject = " ".join(_fill(subject_s, ctx, html=False).split())
    text = _fill(text_s, ctx, html=False)
    ctx["subject"] = subject
    try:
        html = _fill(html_s, ctx, html=True)
    finally:
        del ctx["subject"]
    if "\ue000" in subject or "\ue000" in text or "\ue000" in html:
        # A value holding a private-use character (or a template using a value in a way a
        # slot cannot stand for): render the templates directly.
        subject, text, html = _render_direct(kind, lang, ctx)
        html = _pack_html(html)
    return subject, text, html


# --------------------------------------------------------------------------- values


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
    text = _CONTROL.sub("", _LINE_BREAKS.sub("\n", str(value))).strip()
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


def _prepare(kind: str, lang: str, context: Mapping[str, Any], public_url: str) -> dict[str, Any]:
    required, optional, amounts = _SPECS[kind]
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


# --------------------------------------------------------------------------- headers


@lru_cache(maxsize=64)
def _from_header(mail_from: str) -> tuple[str, str]:
    """(header value, envelope sender) for a configured sender such as ``Name <a@b>``."""
    if _LINE_BREAKS.search(mail_from) or "\n" in mail_from:
        raise RenderError("mail_from must be one line")
    name, addr = parseaddr(mail_from)
    if not addr or "@" not in addr:
        raise RenderError("mail_from is not an email address")
    if mail_from.isascii():
        return mail_from, addr
    return formataddr((name, addr), charset="utf-8"), addr


def _to_header(to: str) -> tuple[str, list[str], bool]:
    """(header value, envelope recipients, needs SMTPUTF8) for the recipient(s)."""
    if not to or "\n" in to or "\r" in to or "\x00" in to:
        raise RenderError("the recipient must be one line")
    if _BARE_ADDRESS.fullmatch(to):
        if to.isascii():
            return to, [to], False
        local, _, domain = to.rpartition("@")
        try:
            domain = domain.encode("idna").decode("ascii")
        except UnicodeError:
            pass
        addr = f"{local}@{domain}"
        return addr, [addr], not addr.isascii()
    pairs = getaddresses([to])
    rcpts = [addr for _, addr in pairs if addr] or [to]
    if to.isascii():
        return to, rcpts, False
    value = ", ".join(formataddr((n, a), charset="utf-8") if n else a for n, a in pairs)
    return value, rcpts, not value.isascii()


def _encode_subject(subject: str) -> str:
    if subject.isascii() and "=?" not in subject:
        if len(subject) <= 66:
            return subject
        lines: list[str] = []  # fold at spaces (unfolding gives the spaces back)
        for word in subject.split(" "):
            if lines and len(lines[-1]) + 1 + len(word) <= 66:
                lines[-1] += " " + word
            else:
                lines.append(word)
        if all(0 < len(line) <= 76 for line in lines):
            return "\n ".join(lines)
    # RFC 2047 encoded words of at most 42 UTF-8 bytes (56 base64 characters, so that even the
    # first line with "Subject: " stays within 78 characters), never splitting a
    # character, folded one word per line.
    raw = subject.encode("utf-8")
    words: list[str] = []
    start, end = 0, len(raw)
    while start < end:
        stop = min(start + 42, end)
        while stop < end and (raw[stop] & 0xC0) == 0x80:  # a continuation byte: back off
            stop -= 1
        words.append(f"=?utf-8?b?{base64.b64encode(raw[start:stop]).decode('ascii')}?=")
        start = stop
    return "\n ".join(words)


@lru_cache(maxsize=16)
def _id_domain(public_url: str) -> str:
    host = urlsplit(public_url).hostname
    if not host:
        raise RenderError("public_url has no host")
    return host


def _message_id_domain(host: str) -> str:
    if ":" in host and not host.startswith("["):
        return f"[{host}]"  # an IPv6 literal
    if not host.isascii():
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError:
            raise RenderError("domain_for_message_id is not a domain") from None
    if not _DOMAIN_RE.fullmatch(host):
        raise RenderError("domain_for_message_id is not a domain")
    return host


_now_cache: tuple[int, str] = (-1, "")


def _now_header() -> str:
    """The Date header for now (UTC), made once a second: the header has no finer unit."""
    global _now_cache
    second = int(time.time())
    cached = _now_cache
    if cached[0] != second:
        cached = _now_cache = (second, format_datetime(datetime.fromtimestamp(second, timezone.utc)))
    return cached[1]


def message_id(notification_id: int | str, domain: str) -> str:
    """``<notification-{id}@{domain}>``: the same notification always gets the same id."""
    return f"<notification-{notification_id}@{domain}>"


def _part(text: str, subtype: str, boundary: str, allow_8bit: bool = True) -> tuple[str, str, str]:
    """(Content-Type, Content-Transfer-Encoding, payload).

    7bit for plain ASCII, 8bit for UTF-8 text with lines of at most 998 bytes (readable files,
    smaller messages, fewer lines for a server to read; SMTP announces ``BODY=8BITMIME``), else
    base64.
    """
    if not text.endswith("\n"):
        text += "\n"
    ctype = f'text/{subtype}; charset="utf-8"'
    data = text.encode("utf-8")
    if ("--" + boundary) not in text and max(map(len, data.split(b"\n"))) <= 998:
        if len(data) == len(text):
            return ctype, "7bit", text
        if allow_8bit:
            return ctype, "8bit", text
    return ctype, "base64", _base64_lines(data)


def _pack_html(html: str, limit: int = 900) -> str:
    """Join the HTML's lines with spaces into lines of at most ``limit`` bytes.

    The templates have one element per line for people; a line break and a space are the same
    whitespace to HTML (no ``<pre>`` in emails), so this changes nothing on screen but sends
    far fewer lines (SMTP servers read and check a message line by line)."""
    lines = html.split("\n")
    out: list[str] = []
    size = limit + 1
    for line in lines:
        n = len(line.encode("utf-8")) if not line.isascii() else len(line)
        if out and size + 1 + n <= limit:
            out[-1] += " " + line
            size += 1 + n
        else:
            out.append(line)
            size = n
    return "\n".join(out)


_BASE64_LINE = re.compile(r".{1,76}")


def _base64_lines(data: bytes) -> str:
    """Base64 in lines of 76 characters, each ending with a newline (as ``encodebytes``)."""
    encoded = binascii.b2a_base64(data, newline=False).decode("ascii")
    return "\n".join(_BASE64_LINE.findall(encoded)) + "\n"


# --------------------------------------------------------------------------- render


def render(
    kind: str,
    language: str,
    context: Mapping[str, Any],
    *,
    public_url: str,
    mail_from: str,
    to: str,
    notification_id: int | str,
    domain_for_message_id: str | None = None,
    date: datetime | None = None,
) -> RenderedMessage:
    """Render one notification as a ``multipart/alternative`` email.

    ``domain_for_message_id`` defaults to the host of ``public_url``; ``date`` to now (UTC).
    Raises :class:`RenderError` for a notification that can never be rendered.
    """
    if kind not in _SPECS:
        raise RenderError(f"unknown notification kind {kind!r}")
    if language not in LANGUAGES:
        raise RenderError(f"unsupported language {language!r}")
    nid = str(notification_id)
    if not _ID_RE.fullmatch(nid):
        raise RenderError("notification_id must be 1-64 letters, digits, '.', '_' or '-'")
    public_url = public_url.rstrip("/")
    domain = _message_id_domain(domain_for_message_id or _id_domain(public_url))

    ctx = _prepare(kind, language, context, public_url)
    subject, text, html = _render_bodies(kind, language, ctx)

    from_value, envelope_from = _from_header(mail_from)
    to_value, envelope_to, smtputf8 = _to_header(to)
    boundary = f"==restitution-{nid}=="
    headers = [
        ("From", from_value),
        ("To", to_value),
        ("Subject", _encode_subject(subject)),
        ("Date", format_datetime(date) if date is not None else _now_header()),
        ("Message-ID", message_id(nid, domain)),
        ("Content-Language", language),
        ("Auto-Submitted", "auto-generated"),
        ("X-Auto-Response-Suppress", "All"),
        ("X-Restitution-Kind", kind),
        ("MIME-Version", "1.0"),
        ("Content-Type", f'multipart/alternative;\n boundary="{boundary}"'),
    ]

    head = "".join(f"{name}: {value}\n" for name, value in headers) + "\n"
    wire, parts, eight_bit = _compose(head, boundary, text, html, allow_8bit=True)
    msg = RenderedMessage._composed(headers, parts, wire, (head, boundary, text, html))
    msg.envelope_from = envelope_from
    msg.envelope_to = envelope_to
    msg.smtputf8 = smtputf8
    msg.eight_bit = eight_bit
    return msg


def _compose(head: str, boundary: str, text: str, html: str, *, allow_8bit: bool) -> tuple[bytes, list[tuple[str, str, str]], bool]:
    """(the message's bytes, its parts as (Content-Type, Content-Transfer-Encoding, payload),
    whether a part is 8bit)."""
    pieces = [head]
    parts = []
    eight_bit = False
    for body, subtype in ((text, "plain"), (html, "html")):
        ctype, cte, payload = _part(body, subtype, boundary, allow_8bit)
        eight_bit = eight_bit or cte == "8bit"
        parts.append((ctype, cte, payload))
        pieces.append(f"--{boundary}\nContent-Type: {ctype}\nContent-Transfer-Encoding: {cte}\n\n{payload}\n")
    pieces.append(f"--{boundary}--\n")
    return "".join(pieces).encode("utf-8"), parts, eight_bit
