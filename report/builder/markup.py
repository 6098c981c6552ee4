"""Typst escaping and a small Markdown-to-Typst converter."""
from __future__ import annotations

import re


# Characters that start markup in Typst (strong, emph, raw, math, code, labels, references,
# content blocks, escapes, non-breaking space, comments, headings, lists, dashes).
_TYPST_SPECIAL = set("\\#$*_`<>@[]~/=-+")


def escape_typst(text: str) -> str:
    """Plain text -> Typst markup that shows exactly this text."""
    out = "".join("\\" + ch if ch in _TYPST_SPECIAL else ch for ch in str(text))
    # "1. " at the start of a line would open a numbered list.
    return re.sub(r"(?m)^(\s*\d+)\.", r"\1\\.", out)


def typst_string(text: str) -> str:
    """A Typst string literal."""
    return '"' + str(text).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


_INLINE = re.compile(
    r"(?P<code>`[^`]+`)"
    r"|(?P<image>!\[[^\]]*\]\([^)]*\))"
    r"|(?P<link>\[(?P<link_text>[^\]]+)\]\((?P<link_url>[^)\s]+)(?:\s+\"[^\"]*\")?\))"
    r"|(?P<strong>\*\*(?P<strong_text>.+?)\*\*|__(?P<strong_text2>.+?)__)"
    r"|(?P<emph>(?<![\w*])\*(?P<emph_text>[^*\s](?:[^*]*[^*\s])?)\*(?![\w*])"
    r"|(?<![\w_])_(?P<emph_text2>[^_\s](?:[^_]*[^_\s])?)_(?![\w_]))"
)


def inline_markdown(text: str) -> str:
    """Inline Markdown (code, bold, italic, links) -> Typst markup; everything else escaped."""
    out, pos = [], 0

    def plain(segment: str) -> str:
        escaped = escape_typst(segment)
        # Right after "#strong[...]" etc., "(", "[", "." or ";" would continue the expression.
        if out and out[-1].startswith("#") and escaped[:1] in ("(", "[", ".", ";"):
            escaped = "\\" + escaped
        return escaped

    for match in _INLINE.finditer(text):
        out.append(plain(text[pos:match.start()]))
        pos = match.end()
        if match.group("code"):
            code = match.group("code")[1:-1]
            if len(code) > 20:  # long paths: allow line breaks after separators
                code = re.sub(r"([/_.])", "\\1\u200b", code)
            out.append(f"#raw({typst_string(code)})")
        elif match.group("image"):
            continue  # images are handled as blocks
        elif match.group("link"):
            out.append(inline_markdown(match.group("link_text")))
        elif match.group("strong"):
            inner = match.group("strong_text") or match.group("strong_text2")
            out.append(f"#strong[{inline_markdown(inner)}]")
        else:
            inner = match.group("emph_text") or match.group("emph_text2")
            out.append(f"#emph[{inline_markdown(inner)}]")
    out.append(plain(text[pos:]))
    return "".join(out)


_IMAGE_LINE = re.compile(r"^\s*!\[(?P<alt>[^\]]*)\]\((?P<path>[^)\s]+)(?:\s+\"[^\"]*\")?\)\s*$")
_LIST_ITEM = re.compile(r"^(?P<indent>\s*)(?P<marker>[-*+]|\d+[.)])\s+(?P<text>.*)$")
_HEADING = re.compile(r"^(?P<hashes>#{1,6})\s+(?P<text>.*?)\s*#*\s*$")


def markdown_to_typst(markdown: str, image_block=None) -> str:
    """A Markdown document -> Typst markup for the body of a report section.

    Headings become bold run-in lines (the section heading is the report's), paragraphs,
    bullet and numbered lists, fenced code, pipe tables and inline markup are converted;
    every other character is escaped. ``image_block(alt, path)`` returns Typst markup for an
    image line (or "" to drop it).
    """
    lines = markdown.replace("\r\n", "\n").split("\n")
    blocks: list[str] = []
    paragraph: list[str] = []
    i = 0

    def flush():
        if paragraph:
            blocks.append(inline_markdown(" ".join(s.strip() for s in paragraph)))
            paragraph.clear()

    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        if stripped.startswith("```") or stripped.startswith("~~~"):
            flush()
            fence, code = stripped[:3], []
            i += 1
            while i < len(lines) and not lines[i].strip().startswith(fence):
                code.append(lines[i])
                i += 1
            blocks.append(f"#raw(block: true, {typst_string(chr(10).join(code))})")
            i += 1
            continue
        if not stripped:
            flush()
            i += 1
            continue
        heading = _HEADING.match(stripped)
        if heading:
            flush()
            if not (len(heading.group("hashes")) == 1 and not blocks):  # drop a leading title
                blocks.append(f"#heading(level: 2, numbering: none, outlined: false)[{inline_markdown(heading.group('text'))}]")
            i += 1
            continue
        image = _IMAGE_LINE.match(line)
        if image:
            flush()
            if image_block is not None:
                block = image_block(image.group("alt"), image.group("path"))
                if block:
                    blocks.append(block)
            i += 1
            continue
        if stripped.startswith("|"):
            flush()
            rows = []
            while i < len(lines) and lines[i].strip().startswith("|"):
                cells = [c.strip() for c in lines[i].strip().strip("|").split("|")]
                if not all(re.fullmatch(r":?-{2,}:?", c) for c in cells if c):
                    rows.append(cells)
                i += 1
            if rows:
                ncols = max(len(r) for r in rows)
                cells = []
                for r, row in enumerate(rows):
                    for c in range(ncols):
                        text = inline_markdown(row[c]) if c < len(row) else ""
                        cells.append(f"[#strong[{text}]]" if r == 0 else f"[{text}]")
                blocks.append(f"#md-table({ncols}, {', '.join(cells)})")
            continue
        item = _LIST_ITEM.match(line)
        # A bullet list may interrupt a paragraph, a numbered one only when it starts at 1 (CommonMark).
        if item and paragraph and (item.group("marker")[0] in "-*+" or item.group("marker")[:-1] == "1"):
            flush()
        if item and not paragraph:
            items = []
            while i < len(lines):
                current = _LIST_ITEM.match(lines[i])
                if current:
                    marker = "+" if current.group("marker")[0].isdigit() else "-"
                    depth = len(current.group("indent").expandtabs(4)) // 2
                    items.append([depth, marker, current.group("text")])
                elif lines[i].strip() and lines[i].startswith((" ", "\t")) and items:
                    items[-1][2] += " " + lines[i].strip()  # continuation of an item
                else:
                    break
                i += 1
            blocks.append("\n".join("  " * depth + f"{marker} {inline_markdown(text)}" for depth, marker, text in items))
            continue
        paragraph.append(line)
        i += 1
    flush()
    return "\n\n".join(blocks)
