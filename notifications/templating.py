"""The emails' templates: loaded once, rendered once per shape, filled per message.

Each kind has ``templates/email/<kind>.txt`` (its ``subject`` block and the plain text) and
``<kind>.html``, translated through the gettext domain ``emails`` (:mod:`notifications.i18n`).

Rendering a template costs far more than the values it carries: a notification's kind and
language, and which optional values it has, fix every word of it. So each combination is
rendered once with slots in place of the values (a "skeleton", cached), and a notification is
its skeleton with the slots filled: values escaped for HTML, filters applied. Values that steer
the template (an optional value present or not, the number of a plural) are part of the cache
key. :func:`render_direct` renders the templates as they are; the tests check both agree.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any, Mapping

from jinja2 import Environment, StrictUndefined, Template
from markupsafe import Markup, escape

from claims.outbox import KINDS
from notifications.context import TEMPLATE_KEYS, RenderError
from notifications.i18n import LANGUAGES, TEMPLATES_DIR, make_env

EMAIL_TEMPLATES_DIR = TEMPLATES_DIR / "email"
DOMAIN = "emails"


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


def render_direct(
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
    for key in TEMPLATE_KEYS:
        ctx.setdefault(key, None)
    subject, text, html = render_direct(kind, lang, ctx, title=_Slot("subject"))
    return _compile(subject), _compile(text), _compile(pack_html(html, limit=600))


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


def render_bodies(kind: str, lang: str, ctx: dict[str, Any]) -> tuple[str, str, str]:
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
        subject, text, html = render_direct(kind, lang, ctx)
        html = pack_html(html)
    return subject, text, html


def pack_html(html: str, limit: int = 900) -> str:
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
