"""Architecture diagrams in a repository, reduced to what a model can learn from: names and relations.

Each diagram becomes text in one shape, whatever its format::

    draw.io diagram: Overview
    Components: API Gateway, Orders Service, Orders DB
    API Gateway -> Orders Service: REST /orders
    Orders Service -> Orders DB

followed, for elements that carry one (C4 and Structurizr), by ``Name: description [technology]``
lines. Formats, by file name or content (``diagram_format``):

- draw.io / diagrams.net (``.drawio``, ``.drawio.xml``, ``.xml`` with an ``mxfile`` root, and ``.svg``
  exports that embed one): vertices with labels are components, edges with a source and a target are
  relations; compressed pages (raw deflate, base64, URL-encoded) are decoded. XML is parsed with
  ``defusedxml``: a repository is untrusted input.
- Mermaid (``.mmd``, ``.mermaid``, and ```` ```mermaid ```` blocks in Markdown): flowcharts, sequence,
  class, state, ER and C4 diagrams, line by line.
- PlantUML (``.puml``, ``.plantuml``, ``.pu``, ``.iuml``) including the C4-PlantUML macros.
- Structurizr DSL (``.dsl`` that declares a ``workspace``).
- Excalidraw (``.excalidraw``): shapes with their bound text, arrows bound at both ends.
- Graphviz (``.dot``, ``.gv``): nodes with labels, edges (chains too), in any (sub)graph.
- SVG: the text labels only (there is no reliable way to read arrows out of drawn paths).

Mermaid, PlantUML, Structurizr and Graphviz are read by line-oriented patterns, not full parsers:
what they miss (unusual syntax) is left out of the relations, never invented. No well-kept Python
parser exists for the first three; for Graphviz, pydot's parser prints its errors to stdout and
takes most of a second to build, which a tree walk over many files cannot afford.
"""

from __future__ import annotations

import base64
import itertools
import json
import re
import zlib
from dataclasses import dataclass, field
from urllib.parse import unquote

from defusedxml import ElementTree
from defusedxml.common import DefusedXmlException

FORMAT_NAMES = {
    "drawio": "draw.io",
    "mermaid": "Mermaid",
    "plantuml": "PlantUML",
    "structurizr": "Structurizr",
    "excalidraw": "Excalidraw",
    "graphviz": "Graphviz",
    "svg": "SVG",
}
_BY_SUFFIX = {
    ".drawio": "drawio",
    ".dio": "drawio",
    ".mmd": "mermaid",
    ".mermaid": "mermaid",
    ".puml": "plantuml",
    ".plantuml": "plantuml",
    ".pu": "plantuml",
    ".iuml": "plantuml",
    ".excalidraw": "excalidraw",
    ".dot": "graphviz",
    ".gv": "graphviz",
    ".svg": "svg",
}
MAX_COMPONENTS = 500  # per diagram; past this a "diagram" is a data dump, and the text stops growing
MAX_INFLATED_BYTES = 20_000_000  # a compressed draw.io page may not inflate past this (a zip bomb)


@dataclass
class Diagram:
    """What one diagram says: its components (in order of appearance) and relations between them."""

    title: str = ""
    components: dict[str, str] = field(default_factory=dict)  # name -> detail ("" when none)
    relations: list[tuple[str, str, str]] = field(default_factory=list)  # (from, to, label)

    def add(self, name: str, detail: str = "") -> None:
        name = _clean(name)
        if not name or (len(self.components) >= MAX_COMPONENTS and name not in self.components):
            return
        if detail or name not in self.components:
            self.components[name] = _clean(detail) or self.components.get(name, "")

    def relate(self, source: str, target: str, label: str = "") -> None:
        source, target = _clean(source), _clean(target)
        if not source or not target:
            return
        self.add(source)
        self.add(target)
        relation = (source, target, _clean(label))
        if relation not in self.relations and len(self.relations) < MAX_COMPONENTS * 4:
            self.relations.append(relation)

    def text(self, format_name: str) -> str:
        if not self.components:
            return ""
        lines = [f"{format_name} diagram" + (f": {self.title}" if self.title else "")]
        lines.append("Components: " + ", ".join(self.components))
        lines.extend(f"{a} -> {b}" + (f": {label}" if label else "") for a, b, label in self.relations)
        lines.extend(f"{name}: {detail}" for name, detail in self.components.items() if detail)
        return "\n".join(lines)


def diagram_format(name: str, text: str) -> str | None:
    """The diagram format of a file named ``name`` with content ``text``, or ``None``."""
    lower = name.lower()
    suffix = lower[lower.rfind(".") :] if "." in lower else ""
    # An SVG exported from draw.io embeds the diagram (escaped) in its `content` attribute.
    if lower.endswith(".drawio.svg") or (suffix == ".svg" and "mxfile" in text[:200_000]):
        return "drawio"
    if suffix in _BY_SUFFIX:
        return _BY_SUFFIX[suffix]
    head = text[:2000].lstrip()
    if suffix == ".xml" and re.match(r"(<\?xml[^>]*>\s*)?<mxfile\b", head):
        return "drawio"
    if (
        suffix == ".dsl"
        and re.search(r"^\s*workspace\b", text, re.MULTILINE)
        and re.search(r"\bmodel\s*\{", text)
    ):
        return "structurizr"
    return None


def extract(fmt: str, text: str) -> list[Diagram]:
    """The diagrams in ``text`` (a draw.io file may hold several pages); empty ones are left out.

    Raises ``ValueError`` when the file is not valid in its format (broken XML or JSON).
    """
    diagrams = _EXTRACTORS[fmt](text)
    return [diagram for diagram in diagrams if diagram.components]


def diagram_text(fmt: str, diagrams: list[Diagram]) -> str:
    return "\n\n".join(d.text(FORMAT_NAMES[fmt]) for d in diagrams if d.components)


def mermaid_blocks(markdown: str) -> list[tuple[int, str]]:
    """``(line number, source)`` of each fenced ```` ```mermaid ```` block in a Markdown text."""
    blocks = []
    for match in re.finditer(
        r"^(?P<fence>```+|~~~+)[ \t]*mermaid[^\n]*\n(?P<body>.*?)^(?P=fence)[ \t]*$",
        markdown,
        re.MULTILINE | re.DOTALL,
    ):
        blocks.append((markdown.count("\n", 0, match.start()) + 1, match["body"]))
    return blocks


_IMAGE_RE = re.compile(r"!\[(?P<alt>[^\]]*)\]\((?P<src><[^>]+>|[^)\s]+)(?:\s+[\"'][^)]*[\"'])?\)")
_HTML_IMG_RE = re.compile(r"<img\b[^>]*>", re.IGNORECASE)


def markdown_images(markdown: str, limit: int = 50) -> list[dict[str, str]]:
    """Images a Markdown text embeds: ``{"path", "alt"}`` each (Markdown and HTML ``<img>``), in order."""
    found: list[dict[str, str]] = []
    for match in _IMAGE_RE.finditer(markdown):
        found.append({"path": match["src"].strip("<>"), "alt": match["alt"].strip()})
    for tag in _HTML_IMG_RE.findall(markdown):
        src = re.search(r"\bsrc\s*=\s*[\"']([^\"']+)", tag)
        alt = re.search(r"\balt\s*=\s*[\"']([^\"']*)", tag)
        if src:
            found.append({"path": src.group(1), "alt": alt.group(1).strip() if alt else ""})
    return found[:limit]


def _clean(text: str) -> str:
    """One line of plain text: HTML tags and entities out, whitespace collapsed, quotes trimmed."""
    text = re.sub(r"<br\s*/?>", " ", text, flags=re.IGNORECASE)
    text = re.sub(r"<[^>]+>", "", text)
    text = text.replace("&nbsp;", " ").replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">")
    text = text.replace("&quot;", '"').replace("&#39;", "'").replace("\\n", " ")
    return " ".join(text.split()).strip().strip("\"'`").strip()


def _drawio(text: str) -> list[Diagram]:
    try:
        root = ElementTree.fromstring(text)
    except (ElementTree.ParseError, DefusedXmlException) as exc:
        raise ValueError(f"not valid XML: {exc}") from None
    if _local(root.tag) == "svg":
        content = root.get("content") or ""
        if "<mxfile" not in content:
            raise ValueError("an SVG without an embedded draw.io diagram")
        return _drawio(content)
    pages = [root] if _local(root.tag) == "mxGraphModel" else root.findall("diagram")
    diagrams = []
    for page in pages:
        model = page if _local(page.tag) == "mxGraphModel" else page.find("mxGraphModel")
        if model is None and (page.text or "").strip():
            try:
                model = ElementTree.fromstring(_inflate(page.text.strip()))
            except (ElementTree.ParseError, DefusedXmlException) as exc:
                raise ValueError(f"a compressed page is not valid XML: {exc}") from None
        if model is None:
            continue
        diagram = Diagram(title=page.get("name", "") if page is not root else "")
        cells: dict[str, dict[str, str]] = {}
        for element in model.iter():
            tag = _local(element.tag)
            if tag in ("object", "UserObject"):
                # A cell with custom properties: the wrapper holds id and label, the child mxCell the rest.
                cell = element.find("mxCell")
                if cell is not None:
                    cells[element.get("id", "")] = {
                        **cell.attrib,
                        "value": element.get("label", ""),
                        "id": element.get("id", ""),
                    }
            elif tag == "mxCell" and element.get("id") is not None and element.get("id") not in cells:
                cells[element.get("id")] = dict(element.attrib)
        edge_labels: dict[str, list[str]] = {}
        for cell in cells.values():
            # An edge's label is often its own child vertex with style "edgeLabel".
            parent = cells.get(cell.get("parent", ""))
            if parent is not None and parent.get("edge") == "1" and cell.get("value"):
                edge_labels.setdefault(parent["id"], []).append(cell["value"])
        for cell in cells.values():
            parent = cells.get(cell.get("parent", ""))
            is_edge_label = parent is not None and parent.get("edge") == "1"
            if cell.get("vertex") == "1" and cell.get("value") and not is_edge_label:
                diagram.add(cell["value"])
        for cell in cells.values():
            if cell.get("edge") != "1":
                continue
            source, target = cells.get(cell.get("source", "")), cells.get(cell.get("target", ""))
            if source is None or target is None:
                continue
            label = " ".join(filter(None, [cell.get("value", ""), *edge_labels.get(cell["id"], [])]))
            diagram.relate(_label_of(source, cells), _label_of(target, cells), label)
        diagrams.append(diagram)
    return diagrams


def _label_of(cell: dict[str, str], cells: dict[str, dict[str, str]]) -> str:
    # An edge may attach to an unlabeled child shape (a port or icon); its labeled container names it.
    for _ in range(5):
        if _clean(cell.get("value", "")):
            return cell["value"]
        parent = cells.get(cell.get("parent", ""))
        if parent is None:
            break
        cell = parent
    return ""


def _inflate(data: str) -> str:
    raw = base64.b64decode(data)
    inflater = zlib.decompressobj(-15)  # raw deflate, no zlib header: how draw.io compresses pages
    xml = inflater.decompress(raw, MAX_INFLATED_BYTES)
    if inflater.unconsumed_tail or not inflater.eof:
        raise ValueError("a compressed draw.io page inflates past the size limit")
    return unquote(xml.decode("utf-8"))


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


# A node id: word characters, with `.`, `:` and `-` only between them, so `A-->B` is A, an arrow, B.
_ID = r"(?:[\w$]|[.:-](?=[\w$]))+"
_MERMAID_SHAPE = re.compile(
    rf"(?P<id>{_ID})\s*(?:\[\[(?P<a>[^\]]*)\]\]|\[\((?P<b>[^)]*)\)\]|\(\((?P<c>[^)]*)\)\)|\(\[(?P<d>[^\]]*)\]\)"
    rf"|\[(?P<e>[^\]]*)\]|\((?P<f>[^)]*)\)|\{{\{{(?P<g>[^}}]*)\}}\}}|\{{(?P<h>[^}}]*)\}}|>(?P<i>[^\]]*)\])"
)
_MERMAID_ARROW = re.compile(
    r"\s*(?:--|==|-\.)\s*(?P<text>[^-=.>|]+?)\s*(?:--+|==+|\.-+)[>ox]?\s*"
    r"|\s*(?:<)?(?:--+|==+|-\.+-?)(?:[>ox])?\s*(?:\|(?P<pipe>[^|]*)\|)?\s*"
)
_MERMAID_SEQUENCE = re.compile(
    rf"^(?P<a>{_ID})\s*(?:-{{1,2}}>>|-{{1,2}}>|-{{1,2}}x|-{{1,2}}\)|<<-{{1,2}}>>)\s*[+-]?(?P<b>{_ID})\s*:\s*(?P<label>.*)$"
)
_MERMAID_CLASS_REL = re.compile(
    rf"^(?P<a>{_ID})\s*(?:\"[^\"]*\"\s*)?(?P<op><\|--|--\|>|\*--|--\*|o--|--o|-->|<--|\.\.>|<\.\.|\.\.\|>|<\|\.\.|--|\.\.)"
    rf"\s*(?:\"[^\"]*\"\s*)?(?P<b>{_ID})\s*(?::\s*(?P<label>.*))?$"
)
_MERMAID_ER = re.compile(
    rf"^(?P<a>{_ID})\s*[|}}o][|o]?(?:--|\.\.)[|o][|{{o]?\s*(?P<b>{_ID})\s*:\s*(?P<label>.*)$"
)
_C4_ELEMENT = re.compile(
    r"^\s*(?P<macro>Person|Person_Ext|System|System_Ext|SystemDb|SystemDb_Ext|SystemQueue|SystemQueue_Ext|"
    r"Container|Container_Ext|ContainerDb|ContainerDb_Ext|ContainerQueue|ContainerQueue_Ext|Component|"
    r"Component_Ext|ComponentDb|ComponentQueue|Boundary|System_Boundary|Container_Boundary|Enterprise_Boundary|"
    r"Deployment_Node|Node)\s*\((?P<args>.*)\)\s*\{?\s*$"
)
_C4_REL = re.compile(r"^\s*(?:Bi)?Rel(?:_[A-Za-z]+)?\s*\((?P<args>.*)\)\s*$")


def _args(text: str) -> list[str]:
    """Macro arguments: split at commas outside double quotes; quotes removed, ``$key=value`` dropped."""
    values: list[str] = []
    current: list[str] = []
    quoted = False
    for char in text:
        if char == '"':
            quoted = not quoted
        elif char == "," and not quoted:
            values.append("".join(current).strip())
            current = []
        else:
            current.append(char)
    values.append("".join(current).strip())
    return [value for value in values if value and not value.startswith("$")]


def _c4_line(diagram: Diagram, line: str, aliases: dict[str, str]) -> bool:
    element = _C4_ELEMENT.match(line)
    if element:
        args = _args(element["args"])
        if len(args) >= 2:
            alias, label = args[0], args[1]
            aliases[alias] = label
            if "Boundary" not in element["macro"]:
                # Container(alias, label, technology, description); Person/System(alias, label, description)
                has_tech = element["macro"].startswith(("Container", "Component", "Deployment", "Node"))
                tech = args[2] if has_tech and len(args) > 2 else ""
                description = (
                    args[3]
                    if has_tech and len(args) > 3
                    else args[2]
                    if not has_tech and len(args) > 2
                    else ""
                )
                diagram.add(label, (description + (f" [{tech}]" if tech else "")).strip())
        return True
    relation = _C4_REL.match(line)
    if relation:
        args = _args(relation["args"])
        if len(args) >= 2:
            label = args[2] if len(args) > 2 else ""
            tech = args[3] if len(args) > 3 else ""
            diagram.relate(
                aliases.get(args[0], args[0]),
                aliases.get(args[1], args[1]),
                label + (f" [{tech}]" if tech else ""),
            )
        return True
    return False


def _mermaid(text: str) -> list[Diagram]:
    diagram = Diagram()
    names: dict[str, str] = {}
    # YAML front matter (`---` ... `---`) holds the title and config, not nodes.
    front = re.match(r"\s*---\n(?P<yaml>.*?)\n---\s*\n", text, re.DOTALL)
    if front:
        text = text[front.end() :]
        named = re.search(r"^title:\s*(.+)$", front["yaml"], re.MULTILINE)
        diagram.title = _clean(named.group(1)) if named else ""
    lines = [re.sub(r"%%.*$", "", line).strip() for line in text.splitlines()]
    kind = next((line.split()[0] for line in lines if line and not line.startswith("---")), "")
    title = re.search(r"^\s*title\s*:?\s*(.+)$", text, re.MULTILINE)
    if title and not diagram.title:
        diagram.title = _clean(title.group(1))
    for line in lines:
        if not line or line.split()[0] in (
            "flowchart",
            "graph",
            "classDiagram",
            "stateDiagram",
            "stateDiagram-v2",
            "erDiagram",
            "sequenceDiagram",
            "style",
            "classDef",
            "class",
            "click",
            "linkStyle",
            "end",
            "direction",
            "title",
            "note",
            "Note",
            "autonumber",
        ):
            if line.startswith("class ") and kind == "classDiagram":
                diagram.add(line.split()[1].rstrip("{"))
            continue
        if kind.startswith("C4") and _c4_line(diagram, line, names):
            continue
        if kind == "sequenceDiagram":
            declared = re.match(rf"^(?:participant|actor)\s+(?P<id>{_ID})(?:\s+as\s+(?P<label>.+))?$", line)
            if declared:
                names[declared["id"]] = declared["label"] or declared["id"]
                diagram.add(names[declared["id"]])
                continue
            message = _MERMAID_SEQUENCE.match(line)
            if message:
                diagram.relate(
                    names.get(message["a"], message["a"]),
                    names.get(message["b"], message["b"]),
                    message["label"],
                )
            continue
        if kind == "classDiagram":
            relation = _MERMAID_CLASS_REL.match(line)
            if relation:
                diagram.relate(relation["a"], relation["b"], relation["label"] or "")
            continue
        if kind == "erDiagram":
            relation = _MERMAID_ER.match(line)
            if relation:
                diagram.relate(relation["a"], relation["b"], relation["label"])
            elif re.match(rf"^{_ID}\s*\{{$", line):
                diagram.add(line.rstrip("{").strip())
            continue
        if line.startswith("subgraph"):
            continue
        _mermaid_flow_line(diagram, line.rstrip(";"), names)
    return [diagram]


def _mermaid_flow_line(diagram: Diagram, line: str, names: dict[str, str]) -> None:
    """One flowchart/state line: node shapes (``A[Label]``) and edges, chains and ``&`` groups included."""
    position = 0
    groups: list[list[str]] = []
    labels: list[str] = []
    while position < len(line):
        group: list[str] = []
        while True:
            shape = _MERMAID_SHAPE.match(line, position)
            if shape:
                label = next(
                    (value for key, value in shape.groupdict().items() if key != "id" and value is not None),
                    None,
                )
                node_id = shape["id"]
                if label is not None and _clean(label):
                    names[node_id] = label
                position = shape.end()
            else:
                plain = re.compile(rf"(?P<id>{_ID})").match(line, position)
                if not plain:
                    return _finish_flow(diagram, groups, labels, names)
                node_id = plain["id"]
                position = plain.end()
            group.append(node_id)
            diagram.add(names.get(node_id, node_id))
            amp = re.compile(r"\s*&\s*").match(line, position)
            if not amp:
                break
            position = amp.end()
        groups.append(group)
        state_label = re.compile(r"\s*:\s*(?P<label>.+)$").match(line, position)
        if state_label:  # stateDiagram: `A --> B : event`
            labels.append(state_label["label"])
            position = len(line)
            break
        arrow = _MERMAID_ARROW.match(line, position)
        if not arrow or arrow.end() == position:
            break
        labels.append(arrow["pipe"] or arrow["text"] or "")
        position = arrow.end()
    _finish_flow(diagram, groups, labels, names)


def _finish_flow(diagram: Diagram, groups: list[list[str]], labels: list[str], names: dict[str, str]) -> None:
    for index in range(len(groups) - 1):
        label = labels[index] if index < len(labels) else ""
        for a in groups[index]:
            for b in groups[index + 1]:
                if a not in ("[*]",) and b not in ("[*]",):
                    diagram.relate(names.get(a, a), names.get(b, b), label)
    if len(groups) == 2 and len(labels) == 2:  # `A --> B : label` (a state transition)
        for a in groups[0]:
            for b in groups[1]:
                diagram.relate(names.get(a, a), names.get(b, b), labels[1])


_PUML_ELEMENT = re.compile(
    r"^(?P<kind>actor|agent|artifact|boundary|card|cloud|collections|component|control|database|entity|file|"
    r"folder|frame|hexagon|interface|label|node|package|participant|person|queue|rectangle|stack|storage|"
    r"usecase|class|abstract|enum|object|state|system)\s+(?:\"(?P<quoted>[^\"]+)\"|\[(?P<bracket>[^\]]+)\]|"
    r"(?P<bare>[\w.:$-]+))(?:\s+as\s+(?P<alias>[\w.:$-]+|\"[^\"]+\"))?",
    re.IGNORECASE,
)
_PUML_REL = re.compile(
    r"^(?P<a>\[[^\]]+\]|\"[^\"]+\"|[\w.:$-]+|\(\)\s*\"?[^\"]*\"?)\s*"
    r"(?P<arrow>[<*o#x}+^]*[-.=~]+(?:\[[^\]]*\]|left|right|up|down|le|ri|do|[-.=~])*[-.=~]*[>*o#x{+^]*)\s*"
    r"(?P<b>\[[^\]]+\]|\"[^\"]+\"|[\w.:$-]+)\s*(?::\s*(?P<label>.*))?$"
)


def _plantuml(text: str) -> list[Diagram]:
    diagram = Diagram()
    aliases: dict[str, str] = {}
    title = re.search(r"^\s*title\s+(.+)$", text, re.MULTILINE | re.IGNORECASE)
    if title:
        diagram.title = _clean(title.group(1))
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(
            (
                "'",
                "@",
                "!",
                "skinparam",
                "title",
                "note",
                "end",
                "hide",
                "show",
                "legend",
                "left to",
                "top to",
                "}",
                "LAYOUT_",
                "SHOW_",
                "AddElementTag",
                "AddRelTag",
                "UpdateElementStyle",
            )
        ):
            continue
        if _c4_line(diagram, line, aliases):
            continue
        bracketed = re.match(r"^\[(?P<label>[^\]]+)\](?:\s+as\s+(?P<alias>[\w.:$-]+))?\s*$", line)
        if bracketed:
            if bracketed["alias"]:
                aliases[bracketed["alias"]] = bracketed["label"]
            diagram.add(bracketed["label"])
            continue
        element = _PUML_ELEMENT.match(line)
        if element and not _PUML_REL.match(line.split(" ", 1)[1] if " " in line else ""):
            label = element["quoted"] or element["bracket"] or element["bare"]
            alias = (element["alias"] or "").strip('"')
            if alias:
                aliases[alias] = label
            aliases.setdefault(label, label)
            diagram.add(label)
            continue
        relation = _PUML_REL.match(line)
        if relation:
            a, b = (_puml_name(relation[side], aliases) for side in ("a", "b"))
            diagram.relate(a, b, relation["label"] or "")
    return [diagram]


def _puml_name(token: str, aliases: dict[str, str]) -> str:
    token = token.strip()
    if token.startswith("[") and token.endswith("]"):
        return token[1:-1]
    token = token.strip('"')
    return aliases.get(token, token)


_DSL_ELEMENT = re.compile(
    r"^(?:(?P<id>[\w.-]+)\s*=\s*)?(?P<kind>person|softwareSystem|softwaresystem|container|component|"
    r"deploymentNode|infrastructureNode|element)\s+\"(?P<name>[^\"]+)\"(?P<rest>[^{]*)(?P<open>\{)?\s*$"
)
_DSL_REL = re.compile(
    r"^(?:(?P<id>[\w.-]+)\s*=\s*)?(?P<a>[\w.-]+)?\s*->\s*(?P<b>[\w.-]+)(?P<rest>.*?)(?P<open>\{)?\s*$"
)


def _structurizr(text: str) -> list[Diagram]:
    diagram = Diagram()
    names: dict[str, str] = {}
    stack: list[str | None] = []  # the element each open brace belongs to (None: a non-element block)
    in_views = 0
    for raw in text.splitlines():
        line = re.sub(r"(^|\s)(#|//).*$", "", raw).strip()
        if not line:
            continue
        if line.startswith("views") and line.endswith("{"):
            in_views = len(stack) + 1
        if in_views:
            stack.extend([None] * line.count("{"))
            for _ in range(line.count("}")):
                if stack:
                    stack.pop()
            if len(stack) < in_views:
                in_views = 0
            continue
        element = _DSL_ELEMENT.match(line)
        if element:
            quoted = re.findall(r"\"([^\"]*)\"", element["rest"])
            description = quoted[0] if quoted else ""
            tech = quoted[1] if len(quoted) > 1 and element["kind"] in ("container", "component") else ""
            name = element["name"]
            if element["id"]:
                names[element["id"]] = name
                parent = next((s for s in reversed(stack) if s), None)
                if parent:
                    names[f"{parent}.{element['id']}"] = name  # `!identifiers hierarchical`
            diagram.add(name, (description + (f" [{tech}]" if tech else "")).strip())
            if element["open"]:
                stack.append(element["id"] or name)
            continue
        relation = _DSL_REL.match(line)
        if relation:
            source = relation["a"] or next((s for s in reversed(stack) if s), None)
            quoted = re.findall(r"\"([^\"]*)\"", relation["rest"])
            label = quoted[0] if quoted else ""
            if len(quoted) > 1:
                label += f" [{quoted[1]}]"
            if source:
                diagram.relate(names.get(source, source), names.get(relation["b"], relation["b"]), label)
            if relation["open"]:
                stack.append(None)
            continue
        stack.extend([None] * line.count("{"))
        for _ in range(line.count("}")):
            if stack:
                stack.pop()
    return [diagram]


def _excalidraw(text: str) -> list[Diagram]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("elements"), list):
        raise ValueError("not an Excalidraw scene (no elements)")
    elements = {e.get("id"): e for e in data["elements"] if isinstance(e, dict) and not e.get("isDeleted")}
    bound_text: dict[str, str] = {}
    for element in elements.values():
        if element.get("type") == "text" and element.get("containerId"):
            bound_text[element["containerId"]] = element.get("originalText") or element.get("text") or ""
    diagram = Diagram()
    for element in elements.values():
        kind = element.get("type")
        if kind in ("rectangle", "ellipse", "diamond", "frame") and (
            bound_text.get(element["id"]) or element.get("name")
        ):
            diagram.add(bound_text.get(element["id"]) or element.get("name") or "")
        elif kind == "text" and not element.get("containerId"):
            diagram.add(element.get("originalText") or element.get("text") or "")
    for element in elements.values():
        if element.get("type") not in ("arrow", "line"):
            continue
        start = elements.get((element.get("startBinding") or {}).get("elementId"))
        end = elements.get((element.get("endBinding") or {}).get("elementId"))
        if start is None or end is None:
            continue
        name = lambda e: bound_text.get(e["id"]) or e.get("name") or e.get("text") or ""  # noqa: E731
        diagram.relate(name(start), name(end), bound_text.get(element["id"], ""))
    return [diagram]


_DOT_TOKEN = re.compile(
    r'\s+|//[^\n]*|#[^\n]*|/\*.*?\*/|(?P<string>"(?:[^"\\]|\\.)*")|(?P<html><(?:[^<>]|<[^<>]*>)*>)'
    r"|(?P<edge>->|--)|(?P<punct>[\[\]{};,=:])|(?P<id>[\w.]+)",
    re.DOTALL,
)
_DOT_KEYWORDS = frozenset({"graph", "digraph", "subgraph", "node", "edge", "strict"})


def _graphviz(text: str) -> list[Diagram]:
    tokens: list[tuple[str, str]] = []
    for match in _DOT_TOKEN.finditer(text):
        for kind in ("string", "html", "edge", "punct", "id"):
            if match[kind] is not None:
                value = match[kind]
                if kind == "string":
                    value = value[1:-1].replace('\\"', '"')
                elif kind == "html":
                    value = value[1:-1]
                tokens.append((kind, value))
                break
    diagram = Diagram()
    labels: dict[str, str] = {}
    statements: list[list[tuple[str, str]]] = [[]]
    for token in tokens:
        if token[0] == "punct" and token[1] in ";{}":
            statements.append([])
        else:
            statements[-1].append(token)
    edges: list[tuple[list[str], str]] = []
    for statement in statements:
        attrs_at = next((i for i, t in enumerate(statement) if t == ("punct", "[")), len(statement))
        head, attrs = statement[:attrs_at], _dot_attrs(statement[attrs_at:])
        ids = [value for kind, value in head if kind in ("id", "string", "html")]
        if not ids or ids[0] in _DOT_KEYWORDS:
            continue  # `digraph G`, `subgraph x`, `node [...]`, `edge [...]`
        if any(kind == "edge" for kind, _ in head):
            chain = [value for kind, value in head if kind in ("id", "string")]
            edges.append((chain, attrs.get("label", "")))
        elif len(head) >= 3 and head[1] == ("punct", "="):
            continue  # a graph attribute such as `rankdir=LR`
        else:
            labels[ids[0]] = attrs.get("label", labels.get(ids[0], ids[0]))
            diagram.add(_dot_label(labels[ids[0]], ids[0]))
    for chain, label in edges:
        for a, b in itertools.pairwise(chain):
            diagram.relate(_dot_label(labels.get(a, a), a), _dot_label(labels.get(b, b), b), label)
    return [diagram]


def _dot_attrs(tokens: list[tuple[str, str]]) -> dict[str, str]:
    attrs: dict[str, str] = {}
    for index in range(len(tokens) - 2):
        if tokens[index][0] == "id" and tokens[index + 1] == ("punct", "="):
            attrs[tokens[index][1]] = tokens[index + 2][1]
    return attrs


def _dot_label(label: str, node_id: str) -> str:
    # Record shapes ("{a|b}"), escapes (\n, \l) and HTML labels reduce to their text.
    text = re.sub(r"\\[nlr]", " ", label).replace("{", " ").replace("}", " ").replace("|", " ")
    return _clean(text) or node_id


def _svg(text: str) -> list[Diagram]:
    try:
        root = ElementTree.fromstring(text)
    except (ElementTree.ParseError, DefusedXmlException) as exc:
        raise ValueError(f"not valid XML: {exc}") from None
    diagram = Diagram()
    for element in root.iter():
        tag = _local(element.tag)
        if tag == "title" and not diagram.title:
            diagram.title = _clean("".join(element.itertext()))
        elif tag == "text":
            diagram.add("".join(element.itertext()))
        elif tag == "foreignObject":  # draw.io and others put HTML labels here
            diagram.add(" ".join(element.itertext()))
    if diagram.title in diagram.components and len(diagram.components) == 1:
        diagram.title = ""
    return [diagram]


_EXTRACTORS = {
    "drawio": _drawio,
    "mermaid": _mermaid,
    "plantuml": _plantuml,
    "structurizr": _structurizr,
    "excalidraw": _excalidraw,
    "graphviz": _graphviz,
    "svg": _svg,
}
