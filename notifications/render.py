"""Render a victim's notification: subject, plain text and HTML in the claimant's language.

``render(kind, language, context, ...)`` → an :class:`email.message.EmailMessage`
(``multipart/alternative``: ``text/plain`` then ``text/html``) from the Jinja2 templates in
``templates/email/`` and the gettext domain ``emails`` (``templates/locale``).

Every email carries the claim reference, the anti-phishing notice and one link: the official
status page ``{PUBLIC_URL}/status?reference=REFERENCE&lang=LANG`` (a ``paid`` email adds the block
explorer's page of its transaction when the id is a transaction hash). Victims read plain words;
this module never receives internal flag codes.

The work is done in steps, each in its own module: :mod:`notifications.context` checks the
context against the kind (the table below) and makes its values safe to show;
:mod:`notifications.templating` renders the templates (once per shape, then filled per message);
:mod:`notifications.mime` builds the email — its headers (a ``Message-ID`` derived from the
notification id, so a retry resends the same id), its parts, and the bytes
:mod:`notifications.transport` sends.

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

from datetime import datetime
from typing import Any, Mapping

from claims.outbox import KINDS
from notifications.context import NETWORK_LABELS, SPECS, RenderError, explorer_url, prepare_context, status_url
from notifications.i18n import LANGUAGES
from notifications.mime import (
    RenderedMessage,
    build_message,
    message_id,
    message_id_domain,
    notification_id_text,
)
from notifications.templating import DOMAIN, EMAIL_TEMPLATES_DIR, render_bodies, warm_up

__all__ = [
    "DOMAIN", "EMAIL_TEMPLATES_DIR", "KINDS", "NETWORK_LABELS", "RenderError", "RenderedMessage",
    "explorer_url", "message_id", "render", "status_url", "warm_up",
]


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
    if kind not in SPECS:
        raise RenderError(f"unknown notification kind {kind!r}")
    if language not in LANGUAGES:
        raise RenderError(f"unsupported language {language!r}")
    nid = notification_id_text(notification_id)
    public_url = public_url.rstrip("/")
    domain = message_id_domain(domain_for_message_id, public_url)

    ctx = prepare_context(kind, language, context, public_url)
    subject, text, html = render_bodies(kind, language, ctx)
    return build_message(kind, language, subject, text, html, mail_from=mail_from, to=to, nid=nid,
                         domain=domain, date=date)
