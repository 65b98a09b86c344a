"""Architecture diagrams: each format's extraction, and diagrams found by the local tree walk."""

from __future__ import annotations

import base64
import shutil
import zlib
from pathlib import Path

import pytest

from conftest import write_tree
from repotune.records import Kind, record_id
from repotune.sources import diagrams
from repotune.sources.base import IngestStats
from repotune.sources.local import iter_tree

FIXTURES = Path(__file__).parent / "fixtures" / "diagrams"


def _text(name: str) -> str:
    text = (FIXTURES / name).read_text()
    fmt = diagrams.diagram_format(name, text)
    assert fmt is not None
    return diagrams.diagram_text(fmt, diagrams.extract(fmt, text))


def test_drawio_vertices_edges_custom_objects_and_edge_label_cells():
    assert _text("checkout.drawio") == (
        "draw.io diagram: Checkout\n"
        "Components: Web Storefront, Orders API, Orders DB\n"
        "Web Storefront -> Orders API: POST /orders\n"
        "Orders API -> Orders DB: SQL (read/write)"
    )


def test_compressed_drawio_pages_are_inflated():
    text = (FIXTURES / "payments.drawio.xml").read_text()
    assert 'compressed="true"' in text and "Payment Worker" not in text  # really compressed on disk
    assert _text("payments.drawio.xml") == (
        "draw.io diagram: Payments\n"
        "Components: Payments Queue, Payment Worker, Card Processor\n"
        "Payment Worker -> Payments Queue: consumes\n"
        "Payment Worker -> Card Processor: charge (HTTPS)"
    )


def test_drawio_svg_export_reads_the_embedded_diagram():
    source = (FIXTURES / "checkout.drawio").read_text()
    escaped = source.replace("&", "&amp;").replace('"', "&quot;").replace("<", "&lt;").replace(">", "&gt;")
    svg = f'<svg xmlns="http://www.w3.org/2000/svg" content="{escaped}"><text>Web Storefront</text></svg>'
    assert diagrams.diagram_format("arch.svg", svg) == "drawio"
    found = diagrams.extract("drawio", svg)
    assert ("Web Storefront", "Orders API", "POST /orders") in found[0].relations


def test_mermaid_flowchart_with_shapes_chains_groups_and_front_matter():
    assert _text("flow.mmd") == (
        "Mermaid diagram: Order flow\n"
        "Components: Mobile app, API Gateway, Auth Service, Orders Service, Event Bus, Billing, Postgres\n"
        "Mobile app -> API Gateway: HTTPS\n"
        "API Gateway -> Auth Service\n"
        "API Gateway -> Orders Service\n"
        "Orders Service -> Event Bus: publishes\n"
        "Event Bus -> Billing\n"
        "Orders Service -> Postgres"
    )


def test_mermaid_sequence_diagram_uses_participant_aliases():
    assert _text("login.mermaid") == (
        "Mermaid diagram\n"
        "Components: User, Web App, Auth Service\n"
        "User -> Web App: open /login\n"
        "Web App -> Auth Service: POST /token (password grant)\n"
        "Auth Service -> Web App: access token"
    )


def test_plantuml_c4_macros_keep_descriptions_and_technology():
    text = _text("c4-context.puml")
    assert text.startswith(
        "PlantUML diagram: Container diagram for Internet Banking\n"
        "Components: Personal Banking Customer, Single-Page App, API Application, Database, E-mail System\n"
        "Personal Banking Customer -> Single-Page App: Uses [HTTPS]\n"
        "Single-Page App -> API Application: Uses [async, JSON/HTTPS]\n"
        "Database -> API Application: Reads from and writes to [sync, JDBC]\n"
        "API Application -> E-mail System: Sends e-mail using\n"
    )
    assert (
        "API Application: Provides banking functionality via a JSON/HTTPS API [Java, Docker Container]"
        in text
    )


def test_plantuml_components_aliases_and_arrow_directions():
    assert _text("components.plantuml") == (
        "PlantUML diagram\n"
        "Components: Checkout, Cart Service, Pricing Engine, Orders DB, Shopper, order-events\n"
        "Shopper -> Cart Service: adds items\n"
        "Cart Service -> Pricing Engine: quote(items)\n"
        "Cart Service -> order-events: OrderPlaced\n"
        "Cart Service -> Orders DB: writes"
    )


def test_structurizr_dsl_with_hierarchical_identifiers_skips_views():
    text = _text("workspace.dsl")
    assert (
        "Components: Personal Banking Customer, Internet Banking System, Web Application, API Application"
        in text
    )
    assert "Personal Banking Customer -> Web Application: Visits bigbank.com/ib using [HTTPS]" in text
    assert "API Application -> Mainframe Banking System: Makes API calls to [XML/HTTPS]" in text
    assert "Sign In Controller: Allows users to sign in. [Spring MVC Rest Controller]" in text
    assert "Cylinder" not in text and "autolayout" not in text
    assert diagrams.diagram_format("jobs.dsl", "pipelineJob('build') {\n  definition {}\n}\n") is None


def test_excalidraw_bound_text_and_arrows():
    assert _text("deploy.excalidraw") == (
        "Excalidraw diagram\n"
        "Components: CI runner, Image registry, staging only\n"
        "CI runner -> Image registry: docker push"
    )


def test_graphviz_labels_chains_html_labels_and_subgraphs():
    assert _text("services.dot") == (
        "Graphviz diagram\n"
        "Components: Load Balancer, Web Frontend, Search API, Elasticsearch\n"
        "Load Balancer -> Web Frontend: gRPC\n"
        "Web Frontend -> Search API: gRPC\n"
        "Search API -> Elasticsearch: queries"
    )


def test_svg_text_labels_and_a_textless_svg():
    assert _text("topology.svg") == "SVG diagram: Cache topology\nComponents: Edge cache, Origin shield"
    assert diagrams.extract("svg", (FIXTURES / "icon.svg").read_text()) == []


def test_a_drawio_zip_bomb_is_refused():
    bomb = zlib.compressobj(9, zlib.DEFLATED, -15)
    data = bomb.compress(b"A" * (diagrams.MAX_INFLATED_BYTES + 10)) + bomb.flush()
    page = base64.b64encode(data).decode()
    with pytest.raises(ValueError, match="size limit"):
        diagrams.extract("drawio", f'<mxfile><diagram name="x">{page}</diagram></mxfile>')


def test_markdown_images_resolve_relative_paths(tmp_path):
    write_tree(
        tmp_path,
        {
            "docs/architecture.md": (
                '# Architecture\n\n![Request path](img/request-path.png "Request path")\n'
                '<img src="/assets/logo.svg" alt="Logo"> and ![](https://example.com/badge.svg)\n\n'
                "```mermaid\ngraph TD\n  api[Orders API] --> db[(Orders DB)]\n```\n\n"
                "~~~mermaid\nsequenceDiagram\n  Web->>API: GET /orders\n~~~\n"
            ),
            "docs/img/request-path.png": b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR",
        },
    )
    stats = IngestStats()
    records = list(iter_tree(tmp_path, source="demo", stats=stats))
    by_kind = {(r.kind, r.meta.get("block")): r for r in records}

    doc = by_kind[(Kind.DOC, None)]
    assert doc.meta["images"] == [
        {"path": "docs/img/request-path.png", "alt": "Request path"},
        {"path": "https://example.com/badge.svg", "alt": ""},
        {"path": "assets/logo.svg", "alt": "Logo"},
    ]
    first, second = by_kind[(Kind.DIAGRAM, 1)], by_kind[(Kind.DIAGRAM, 2)]
    assert first.file_path == "docs/architecture.md"
    assert first.id == record_id("demo", Kind.DIAGRAM, "docs/architecture.md#mermaid-1")
    assert first.content == "Mermaid diagram\nComponents: Orders API, Orders DB\nOrders API -> Orders DB\n"
    assert first.meta["line"] == 6
    assert second.content == "Mermaid diagram\nComponents: Web, API\nWeb -> API: GET /orders\n"
    assert stats.kept == {"doc": 1, "diagram": 2}
    assert stats.skipped == {"binary": 1}  # the PNG: an image without text


def test_tree_walk_makes_one_diagram_record_per_file(tmp_path):
    shutil.copytree(FIXTURES, tmp_path / "docs" / "arch")
    write_tree(
        tmp_path, {"src/app.py": "print('hi')\n", "config/beans.xml": "<beans><bean id='a'/></beans>\n"}
    )
    stats = IngestStats()
    records = {r.file_path: r for r in iter_tree(tmp_path, source="demo", stats=stats)}

    diagrams_found = {path: r for path, r in records.items() if r.kind == Kind.DIAGRAM}
    assert {path.rsplit("/", 1)[-1] for path in diagrams_found} == {
        "checkout.drawio",
        "payments.drawio.xml",
        "flow.mmd",
        "login.mermaid",
        "c4-context.puml",
        "components.plantuml",
        "workspace.dsl",
        "deploy.excalidraw",
        "services.dot",
        "topology.svg",
    }
    checkout = diagrams_found["docs/arch/checkout.drawio"]
    assert checkout.language == "drawio"
    assert checkout.meta["format"] == "drawio" and checkout.meta["components"] == 3
    assert checkout.meta["relations"] == 2
    assert records["config/beans.xml"].kind == Kind.CODE  # XML that is not draw.io stays code
    assert stats.skipped == {"image_without_text": 1}  # icon.svg
    assert stats.kept == {"diagram": 10, "code": 2}

    only_code = list(iter_tree(tmp_path, source="demo", stats=IngestStats(), kinds=frozenset({Kind.CODE})))
    assert all(r.kind == Kind.CODE for r in only_code)
