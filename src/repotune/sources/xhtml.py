"""Confluence storage format (XHTML with ``ac:``/``ri:`` elements) to Markdown.

The plain HTML (headings, lists, tables, links, emphasis) goes through ``markdownify``. Confluence's own
elements are rewritten into plain HTML first, so markdownify sees nothing it does not know:

- ``ac:structured-macro`` ``code`` and ``noformat``: a ``<pre>`` block, fenced with the macro's
  ``language`` parameter;
- ``info``, ``note``, ``tip``, ``warning`` and ``panel``: a block quote led by the panel's kind (and title);
- ``expand``: its title in bold, then its body; ``status``: its title in brackets; ``jira``: the issue key;
- ``toc``, ``children``, ``attachments`` and other macros that only render something else: dropped;
- ``ac:image`` and links to attachments: dropped, each counted (an image has no text to learn from);
- ``ac:link`` to a page: its text or the page title; to a user: ``@user`` (names are not kept);
- ``ac:task-list``: ``- [x]``/``- [ ]`` items; ``ac:emoticon``: dropped; ``time``: its date.
"""

from __future__ import annotations

from collections import Counter

from bs4 import BeautifulSoup, Tag
from markdownify import ATX, MarkdownConverter

PANELS = {"info": "Info", "note": "Note", "tip": "Tip", "warning": "Warning", "panel": "Panel"}
CODE_MACROS = frozenset({"code", "noformat"})
# Macros that render other content (navigation, listings, embeds) and hold no text of their own.
DROPPED_MACROS = frozenset(
    {
        "toc",
        "toc-zone",
        "children",
        "pagetree",
        "attachments",
        "gallery",
        "viewfile",
        "view-file",
        "recently-updated",
        "contentbylabel",
        "livesearch",
        "include",
        "excerpt-include",
        "anchor",
        "multimedia",
        "widget",
        "profile",
        "roadmap",
        "drawio",
        "gliffy",
    }
)


class _Converter(MarkdownConverter):
    class Options(MarkdownConverter.DefaultOptions):
        heading_style = ATX
        bullets = "-"
        escape_underscores = False
        escape_asterisks = False
        table_infer_header = True
        # HTML whitespace rules (a newline in a paragraph is a space), without re-wrapping lines.
        wrap = True
        wrap_width = None
        code_language_callback = staticmethod(lambda el: el.get("data-language") or None)


_CONVERTER = _Converter()


def storage_to_markdown(xhtml: str, skipped: Counter[str] | None = None) -> str:
    """Markdown for one page (or comment) body in storage format.

    Images and attachment links are removed; each one adds to ``skipped["attachment"]`` when given.
    """
    soup = BeautifulSoup(xhtml, "html.parser")
    _rewrite(soup, soup, skipped if skipped is not None else Counter())
    text = _CONVERTER.convert_soup(soup)
    lines = [line.rstrip() for line in text.strip().splitlines()]
    out: list[str] = []
    for line in lines:
        if line or (out and out[-1]):  # at most one blank line in a row
            out.append(line)
    return "\n".join(out).strip()


def _rewrite(soup: BeautifulSoup, root: Tag, skipped: Counter[str]) -> None:
    # Innermost first, so a code macro inside a panel is already a <pre> when the panel is rewritten.
    for element in reversed(root.find_all(True)):
        if element.decomposed or (not element.name.startswith(("ac:", "ri:")) and element.name != "time"):
            continue
        name = element.name
        if name == "ac:structured-macro" or name == "ac:macro":
            _macro(soup, element, skipped)
        elif name == "ac:image":
            skipped["attachment"] += 1
            element.decompose()
        elif name == "ac:link":
            _link(soup, element, skipped)
        elif name == "ac:task-list":
            _task_list(soup, element)
        elif name in ("ac:emoticon", "ac:placeholder"):
            element.decompose()
        elif name == "time":
            element.replace_with(element.get("datetime") or element.get_text())


def _macro(soup: BeautifulSoup, macro: Tag, skipped: Counter[str]) -> None:
    name = (macro.get("ac:name") or "").lower()
    params = {
        (p.get("ac:name") or ""): p.get_text()
        for p in macro.find_all("ac:parameter", recursive=False)
        if isinstance(p, Tag)
    }
    if name in CODE_MACROS:
        body = macro.find("ac:plain-text-body")
        code = "".join(str(part) for part in body.contents) if body is not None else ""
        pre = soup.new_tag("pre")
        language = params.get("language", "").strip().lower()
        if language:
            pre["data-language"] = language
        if params.get("title"):
            caption = soup.new_tag("p")
            caption.append(soup.new_tag("strong"))
            caption.strong.string = params["title"]
            macro.insert_before(caption)
        pre.string = code
        macro.replace_with(pre)
        return
    body = macro.find("ac:rich-text-body")
    if name in PANELS:
        quote = soup.new_tag("blockquote")
        lead = soup.new_tag("p")
        strong = soup.new_tag("strong")
        strong.string = PANELS[name] + (f": {params['title']}" if params.get("title") else "")
        lead.append(strong)
        quote.append(lead)
        if body is not None:
            quote.extend(list(body.contents))
        macro.replace_with(quote)
    elif name in ("expand", "details", "section", "column", "excerpt", "ui-expand"):
        block = soup.new_tag("div")
        if params.get("title"):
            lead = soup.new_tag("p")
            lead.append(soup.new_tag("strong"))
            lead.strong.string = params["title"]
            block.append(lead)
        if body is not None:
            block.extend(list(body.contents))
        macro.replace_with(block)
    elif name == "status":
        macro.replace_with(f"[{params.get('title') or params.get('colour') or 'status'}]")
    elif name == "jira":
        macro.replace_with(params.get("key") or "")
    elif name in DROPPED_MACROS or body is None:
        if name in ("viewfile", "view-file", "multimedia", "gallery", "drawio", "gliffy"):
            skipped["attachment"] += 1
        macro.decompose()
    else:
        # An unknown macro with a rich-text body: keep the body's text, the macro's look is lost.
        block = soup.new_tag("div")
        block.extend(list(body.contents))
        macro.replace_with(block)


def _link(soup: BeautifulSoup, link: Tag, skipped: Counter[str]) -> None:
    text_body = link.find(["ac:plain-text-link-body", "ac:link-body"])
    text = text_body.get_text() if text_body is not None else ""
    if link.find("ri:user") is not None:
        link.replace_with("@user")
        return
    if link.find("ri:attachment") is not None:
        skipped["attachment"] += 1
        link.replace_with(text)
        return
    target = link.find(["ri:page", "ri:blog-post", "ri:space"])
    if not text and target is not None:
        text = target.get("ri:content-title") or target.get("ri:space-key") or ""
    anchor = link.get("ac:anchor")
    if not text and anchor:
        text = anchor
    link.replace_with(text)


def _task_list(soup: BeautifulSoup, tasks: Tag) -> None:
    listing = soup.new_tag("ul")
    for task in tasks.find_all("ac:task", recursive=False):
        status = task.find("ac:task-status")
        body = task.find("ac:task-body")
        item = soup.new_tag("li")
        item.append("[x] " if status is not None and status.get_text().strip() == "complete" else "[ ] ")
        if body is not None:
            item.extend(list(body.contents))
        listing.append(item)
    tasks.replace_with(listing)
