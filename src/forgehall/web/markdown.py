"""Markdown to safe HTML for issue descriptions and comments.

Two layers, so a bug in one is not an XSS: markdown-it renders CommonMark with raw HTML
turned off (``<script>`` arrives as text) and its link validation on; then nh3 (the
ammonia sanitiser) keeps only an allow-list of tags and attributes and only http(s)
and mailto URLs, so event handlers, ``style`` and ``javascript:`` links cannot survive.
Oversized input is cut before rendering so one huge comment cannot stall a page.
"""

from __future__ import annotations

from functools import lru_cache

import nh3
from markdown_it import MarkdownIt
from markupsafe import Markup

#: More than this many characters is shown cut, with a note (the API has the full text).
MAX_RENDERED = 50_000

_TAGS = {
    "a", "p", "br", "hr", "em", "strong", "del", "s", "code", "pre", "blockquote",
    "ul", "ol", "li", "h1", "h2", "h3", "h4", "h5", "h6", "table", "thead", "tbody",
    "tr", "th", "td", "img",
}  # fmt: skip
_ATTRIBUTES = {
    "a": {"href", "title"},
    "img": {"src", "alt", "title"},
    "ol": {"start"},
    "th": {"align"},
    "td": {"align"},
    "code": {"class"},
}


@lru_cache(maxsize=1)
def _parser() -> MarkdownIt:
    return MarkdownIt("commonmark", {"html": False, "linkify": False}).enable("table")


#: Texts up to this size are kept rendered (an issue page with 200 comments renders
#: them all on every view); 1,024 of them cost a few MB at most.
CACHED_BELOW = 8_000


def render_markdown(text: str | None) -> Markup:
    """Sanitised HTML for ``text`` (CommonMark plus tables)."""
    if not text:
        return Markup("")
    if len(text) < CACHED_BELOW:
        return _render_cached(text)
    return _render(text)


@lru_cache(maxsize=1024)
def _render_cached(text: str) -> Markup:
    return _render(text)


def _render(text: str) -> Markup:
    cut = len(text) > MAX_RENDERED
    html = _parser().render(text[:MAX_RENDERED] if cut else text)
    clean = nh3.clean(
        html,
        tags=_TAGS,
        attributes=_ATTRIBUTES,
        url_schemes={"http", "https", "mailto"},
        link_rel="noopener noreferrer nofollow",
    )
    if cut:
        clean += f'<p class="muted">… cut at {MAX_RENDERED:,} characters.</p>'
    return Markup(clean)  # noqa: S704 — sanitised by nh3 above
