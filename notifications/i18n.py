"""Gettext catalogs and Jinja2 environments, shared by emails and web pages.

Catalogs live in ``templates/locale/<lang>/LC_MESSAGES/<domain>.mo`` and are compiled ahead of
time (``make translations``), never at run time. Two domains exist: ``emails`` (the templates in
``templates/email/``, owned by :mod:`notifications.templating`) and ``pages`` (the web pages).

Use::

    from notifications.i18n import get_env, get_translations, TEMPLATES_DIR

    env = get_env(TEMPLATES_DIR / "pages", "pages", "ru")   # cached, one per language
    html = env.get_template("status.html").render(...)

    _ = get_translations("pages", "kk").gettext           # for strings built in Python

One environment per (template directory, domain, language): the gettext callables are installed
into the environment (``jinja2.ext.i18n``, new-style gettext with ``%(name)s`` placeholders and
autoescaping of the placeholders' values), so an environment is safe to share between threads
and its compiled templates are cached for the life of the process. Translation blocks are
``trimmed`` (whitespace inside ``{% trans %}`` collapses), matching the extraction option in the
Babel configs.

Two speed-ups, same output as the stock extension: ``_("literal")`` without placeholders is
translated when the template compiles (:class:`ConstantGettext`), and the runtime gettext
callables call the catalog directly instead of through three ``Context.call`` hops.

This module imports only Jinja2 and Babel and knows nothing of the database.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

from babel.support import NullTranslations, Translations
from jinja2 import Environment, FileSystemLoader, pass_eval_context, select_autoescape
from jinja2.ext import Extension
from jinja2.lexer import Token, TokenStream
from jinja2.nodes import EvalContext
from markupsafe import Markup

TEMPLATES_DIR = Path(__file__).resolve().parent.parent / "templates"
LOCALE_DIR = TEMPLATES_DIR / "locale"

#: The claimant's languages (docs/api.md: ``language`` is ``kk``, ``ru`` or ``en``); Kazakh is
#: written in Cyrillic.
LANGUAGES: tuple[str, ...] = ("kk", "ru", "en")
#: The pages' default: Kazakh.
DEFAULT_LANGUAGE = "kk"
#: The language the msgids are written in: it needs no catalog entries.
SOURCE_LANGUAGE = "en"


class UnknownLanguage(ValueError):
    """A language the program does not speak."""


def check_language(lang: str) -> str:
    if lang not in LANGUAGES:
        raise UnknownLanguage(f"unsupported language {lang!r} (expected one of {', '.join(LANGUAGES)})")
    return lang


@lru_cache(maxsize=None)
def get_translations(domain: str, lang: str, locale_dir: str | None = None) -> NullTranslations:
    """The compiled catalog of ``domain`` for ``lang`` (cached for the process).

    Raises :class:`UnknownLanguage` for a language outside :data:`LANGUAGES` and
    :class:`FileNotFoundError` when a translated language has no compiled ``.mo`` (a missing
    catalog would silently send English to a Kazakh reader). The source language may have no
    catalog: its msgids are the text.
    """
    check_language(lang)
    directory = Path(locale_dir) if locale_dir is not None else LOCALE_DIR
    mo = directory / lang / "LC_MESSAGES" / f"{domain}.mo"
    if not mo.is_file():
        if lang == SOURCE_LANGUAGE:
            return NullTranslations()
        raise FileNotFoundError(f"no compiled catalog {mo} (run `make translations`)")
    with mo.open("rb") as fh:
        return Translations(fh, domain=domain)


def make_env(
    template_dir: str | Path,
    domain: str,
    lang: str,
    *,
    locale_dir: str | None = None,
    **options: Any,
) -> Environment:
    """A new Jinja2 environment for one language with ``jinja2.ext.i18n`` installed.

    Autoescaping is on for ``.html``/``.htm``/``.xml`` templates and off for others (``.txt``)
    unless ``autoescape`` is given. Other keyword ``options`` go to :class:`jinja2.Environment`
    (``undefined=StrictUndefined`` is a good choice). The environment's globals get ``lang``.
    """
    settings: dict[str, Any] = {
        "loader": FileSystemLoader(str(template_dir)),
        "autoescape": select_autoescape(("html", "htm", "xml"), default_for_string=False),
        "trim_blocks": True,
        "lstrip_blocks": True,
        "keep_trailing_newline": True,
        "auto_reload": False,
        "cache_size": 1000,
    }
    settings.update(options)
    extensions = list(settings.pop("extensions", ()))
    if "jinja2.ext.i18n" not in extensions:
        extensions.append("jinja2.ext.i18n")
    extensions.append(ConstantGettext)
    env = Environment(extensions=extensions, **settings)
    env.policies["ext.i18n.trimmed"] = True
    translations = get_translations(domain, lang, locale_dir)
    env.extend(constant_gettext=translations.gettext)
    env.install_gettext_translations(translations, newstyle=True)  # type: ignore[attr-defined]
    env.globals.update(_direct_callables(translations))
    env.globals["lang"] = lang
    return env


class ConstantGettext(Extension):
    """Translate ``_("text")`` / ``gettext("text")`` with a literal and no arguments when the
    template is compiled, not each time it renders.

    The environment belongs to one language (see :func:`make_env`), so the call is replaced by
    the string literal of its translation (``%%`` → ``%`` as new-style gettext does). Calls with
    placeholders, plurals, ``{% trans %}`` blocks and translations holding markup (``<``, ``>``,
    ``&``) are left to the runtime callables. Babel's
    extraction reads the template source, so it still finds every string.
    """

    _NAMES = frozenset({"_", "gettext"})

    def filter_stream(self, stream: TokenStream) -> Any:
        translate = getattr(self.environment, "constant_gettext", None)
        tokens = list(stream)
        if translate is None:
            return iter(tokens)
        out: list[Token] = []
        i, n = 0, len(tokens)
        while i < n:
            tok = tokens[i]
            if (
                tok.type == "name"
                and tok.value in self._NAMES
                and i + 3 < n
                and tokens[i + 1].type == "lparen"
                and tokens[i + 2].type == "string"
                and tokens[i + 3].type == "rparen"
                and (not out or out[-1].type != "dot")  # not an attribute such as x._("...")
            ):
                text = translate(tokens[i + 2].value) % {}
                # Markup in a translation must stay markup: leave such strings to the runtime
                # callables (a folded literal would be escaped in an autoescaped template).
                if not any(c in text for c in "<>&"):
                    out.append(Token(tok.lineno, "string", text))
                    i += 4
                    continue
            out.append(tok)
            i += 1
        return iter(out)


def _direct_callables(translations: NullTranslations) -> dict[str, Any]:
    """New-style gettext callables that call the catalog directly.

    Same behaviour as the ones ``jinja2.ext.i18n`` installs with ``newstyle=True`` (``%(name)s``
    placeholders filled from keyword arguments, the translation trusted and the values escaped
    in autoescaped templates, ``num`` set for plurals) but one function call instead of three
    ``Context.call`` indirections per string (those indirections were most of an email's
    rendering).
    """
    gettext = translations.gettext
    ngettext = translations.ngettext
    pgettext = translations.pgettext
    npgettext = translations.npgettext

    @pass_eval_context
    def _gettext(eval_ctx: EvalContext, __string: str, **variables: Any) -> str:
        rv = gettext(__string)
        if eval_ctx.autoescape:
            rv = Markup(rv)
        return rv % variables  # type: ignore[no-any-return]

    @pass_eval_context
    def _ngettext(eval_ctx: EvalContext, __singular: str, __plural: str, __num: int, **variables: Any) -> str:
        variables.setdefault("num", __num)
        rv = ngettext(__singular, __plural, __num)
        if eval_ctx.autoescape:
            rv = Markup(rv)
        return rv % variables  # type: ignore[no-any-return]

    @pass_eval_context
    def _pgettext(eval_ctx: EvalContext, __context: str, __string: str, **variables: Any) -> str:
        variables.setdefault("context", __context)
        rv = pgettext(__context, __string)
        if eval_ctx.autoescape:
            rv = Markup(rv)
        return rv % variables  # type: ignore[no-any-return]

    @pass_eval_context
    def _npgettext(
        eval_ctx: EvalContext, __context: str, __singular: str, __plural: str, __num: int, **variables: Any
    ) -> str:
        variables.setdefault("context", __context)
        variables.setdefault("num", __num)
        rv = npgettext(__context, __singular, __plural, __num)
        if eval_ctx.autoescape:
            rv = Markup(rv)
        return rv % variables  # type: ignore[no-any-return]

    return {"_": _gettext, "gettext": _gettext, "ngettext": _ngettext, "pgettext": _pgettext, "npgettext": _npgettext}


@lru_cache(maxsize=None)
def get_env(template_dir: str | Path, domain: str, lang: str) -> Environment:
    """:func:`make_env` with the defaults, cached per (directory, domain, language)."""
    return make_env(template_dir, domain, lang)

