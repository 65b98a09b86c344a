"""A Confluence REST API (v1) stand-in on 127.0.0.1, in Data Center or Cloud shape.

Shapes follow Atlassian's REST documentation: content objects with ``_expandable`` for what was not
asked to expand, ``expand`` honoured per field (``body.storage``, ``ancestors``, ``metadata.labels``,
``version``, ``history``, ``space``), list answers with ``results``/``start``/``limit``/``size`` and
``_links`` (``base``, ``context``, ``next``). Data Center pages with ``start``/``limit`` next links
under a context path (``/confluence``); Cloud under ``/wiki`` with opaque ``cursor`` next links. The
``limit`` a client asks for is capped (``page_cap``), as Confluence caps it, so a client that stops at
a short page instead of following ``next`` loses pages.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from service_fake import Answer, FakeService, Request


@dataclass
class Page:
    id: str
    title: str
    body: str  # storage-format XHTML
    created: str  # ISO 8601 with offset, as Confluence writes it
    modified: str
    version: int = 1
    space: str = "ENG"
    ancestors: list[str] = field(default_factory=list)  # page ids, root first
    labels: list[str] = field(default_factory=list)
    author: str = "Ada Lovelace"
    editor: str = "Grace Hopper"
    comments: list[tuple[str, str, str]] = field(default_factory=list)  # (display name, when, storage body)


@dataclass
class Space:
    key: str
    name: str
    forbidden: bool = False  # the account may not view it: Confluence answers 404, not 403


class FakeConfluence(FakeService):
    def __init__(
        self,
        spaces: list[Space],
        pages: list[Page],
        *,
        cloud: bool = False,
        accepted: set[str] | None = None,
        page_cap: int = 25,
    ) -> None:
        super().__init__(accepted)
        self.cloud = cloud
        self.context = "/wiki" if cloud else "/confluence"
        self.spaces = {space.key: space for space in spaces}
        self.pages = {page.id: page for page in pages}
        self.page_cap = page_cap

    @property
    def site(self) -> str:
        """The URL a user configures: the server plus its context path."""
        return self.url + self.context

    def unauthorized(self) -> Answer:
        if self.cloud:
            return 401, {}, {"code": 401, "message": "Unauthorized; scope does not match"}
        # Data Center answers a failed Basic/Bearer login with a plain page, not JSON.
        return (
            401,
            {"Content-Type": "text/html;charset=UTF-8"},
            "Basic Authentication Failure - Reason : AUTHENTICATED_FAILED",
        )

    def route(self, request: Request) -> Answer | None:
        if not request.path.startswith(self.context + "/rest/api/"):
            return None
        path = request.path[len(self.context) :]
        query = request.query
        match = re.fullmatch(r"/rest/api/space/([^/]+)", path)
        if match:
            space = self.spaces.get(match[1])
            if space is None or space.forbidden:
                return self._not_found(f"No space found with key : {match[1]}")
            return 200, {}, self._space(space)
        if path == "/rest/api/content":
            pages = [
                p
                for p in self.pages.values()
                if p.space == query.get("spaceKey")
                and query.get("type", "page") == "page"
                and not self.spaces[p.space].forbidden
            ]
            return 200, {}, self._list(path, query, [self._content(p, query) for p in pages])
        if path == "/rest/api/content/search":
            pages = self._cql(query.get("cql", ""))
            if pages is None:
                return (
                    400,
                    {},
                    {"statusCode": 400, "message": "Could not parse cql : " + query.get("cql", "")},
                )
            return 200, {}, self._list(path, query, [self._content(p, query) for p in pages], total=True)
        match = re.fullmatch(r"/rest/api/content/([^/]+)/child/comment", path)
        if match and match[1] in self.pages:
            page = self.pages[match[1]]
            comments = [self._comment(page, i, query) for i in range(len(page.comments))]
            return 200, {}, self._list(path, query, comments)
        return None

    def _not_found(self, message: str) -> Answer:
        return (
            404,
            {},
            {
                "statusCode": 404,
                "data": {
                    "authorized": False,
                    "valid": True,
                    "allowedInReadOnlyMode": True,
                    "errors": [],
                    "successful": False,
                },
                "message": message,
                "reason": "Not Found",
            },
        )

    def _cql(self, cql: str) -> list[Page] | None:
        space = re.search(r'space\s*=\s*"?([\w~.-]+)"?', cql)
        if space is None:
            return None
        pages = [p for p in self.pages.values() if p.space == space[1] and not self.spaces[p.space].forbidden]
        after = re.search(r'lastmodified\s*>=\s*"(\d{4})/(\d{2})/(\d{2}) (\d{2}):(\d{2})"', cql)
        if after:
            bound = f"{after[1]}-{after[2]}-{after[3]}T{after[4]}:{after[5]}"
            pages = [p for p in pages if p.modified[:16] >= bound]
        if re.search(r"order by lastmodified desc", cql, re.IGNORECASE):
            pages.sort(key=lambda p: p.modified, reverse=True)
        else:
            pages.sort(key=lambda p: p.created)
        return pages

    def _list(
        self, path: str, query: dict[str, str], items: list[dict[str, Any]], total: bool = False
    ) -> dict:
        limit = min(int(query.get("limit", 25)), self.page_cap)
        if self.cloud and "cursor" in query:
            start = int(base64.b64decode(query["cursor"]).decode().split(":")[1])
        else:
            start = int(query.get("start", 0))
        chunk = items[start : start + limit]
        links = {
            "base": self.site,
            "context": self.context,
            "self": f"{self.site}{path}?{urlencode(query)}",
        }
        if start + limit < len(items):
            rest = {k: v for k, v in query.items() if k not in ("start", "cursor")}
            if self.cloud:
                cursor = base64.b64encode(f"_sa_WyJcdDM0NTIxIl0=:{start + limit}".encode()).decode()
                links["next"] = f"{path}?{urlencode({**rest, 'next': 'true', 'cursor': cursor})}"
            else:
                links["next"] = f"{path}?{urlencode({**rest, 'start': start + limit})}"
        answer: dict[str, Any] = {
            "results": chunk,
            "start": start,
            "limit": limit,
            "size": len(chunk),
            "_links": links,
        }
        if total:
            answer["totalSize"] = len(items)
            answer["cqlQuery"] = query.get("cql", "")
        return answer

    def _space(self, space: Space) -> dict[str, Any]:
        return {
            "id": 98306 + len(space.key),
            "key": space.key,
            "name": space.name,
            "type": "global",
            "status": "current",
            "_links": {"webui": f"/spaces/{space.key}", "self": f"{self.site}/rest/api/space/{space.key}"},
            "_expandable": {"homepage": f"/rest/api/content/{space.key}-home", "description": ""},
        }

    def _user(self, name: str) -> dict[str, Any]:
        account = "5b10ac8d82e05b22cc7d4e" + format(abs(hash(name)) % 1000, "03d")
        user: dict[str, Any] = {
            "type": "known",
            "displayName": name,
            "profilePicture": {"path": "/images/icons/profilepics/default.svg"},
        }
        if self.cloud:
            user.update({"accountId": account, "accountType": "atlassian", "email": ""})
        else:
            user.update({"username": name.split()[0].lower(), "userKey": account})
        return user

    def _content(self, page: Page, query: dict[str, str]) -> dict[str, Any]:
        expand = set(filter(None, query.get("expand", "").split(",")))
        content: dict[str, Any] = {
            "id": page.id,
            "type": "page",
            "status": "current",
            "title": page.title,
            "extensions": {"position": 0},
            "_links": {
                "webui": f"/spaces/{page.space}/pages/{page.id}"
                if self.cloud
                else f"/display/{page.space}/{page.title.replace(' ', '+')}",
                "edit": f"/pages/resumedraft.action?draftId={page.id}",
                "tinyui": "/x/" + page.id[-4:],
                "self": f"{self.site}/rest/api/content/{page.id}",
            },
        }
        expandable: dict[str, str] = {
            "container": f"/rest/api/space/{page.space}",
            "operations": "",
            "children": f"/rest/api/content/{page.id}/child",
            "descendants": f"/rest/api/content/{page.id}/descendant",
        }
        if "body.storage" in expand:
            content["body"] = {
                "storage": {
                    "value": page.body,
                    "representation": "storage",
                    "_expandable": {"content": f"/rest/api/content/{page.id}"},
                },
                "_expandable": {
                    "editor": "",
                    "view": "",
                    "export_view": "",
                    "styled_view": "",
                    "anonymous_export_view": "",
                },
            }
        else:
            expandable["body"] = ""
        if "ancestors" in expand:
            content["ancestors"] = [
                {"id": a, "type": "page", "status": "current", "title": self.pages[a].title}
                for a in page.ancestors
            ]
        else:
            expandable["ancestors"] = ""
        if "metadata.labels" in expand:
            labels = [
                {"prefix": "global", "name": name, "id": str(1000 + i), "label": name}
                for i, name in enumerate(page.labels)
            ]
            content["metadata"] = {
                "labels": {"results": labels, "start": 0, "limit": 200, "size": len(labels)}
            }
        else:
            expandable["metadata"] = ""
        if "version" in expand:
            content["version"] = {
                "by": self._user(page.editor),
                "when": page.modified,
                "friendlyWhen": "yesterday at 4:12 PM",
                "message": "",
                "number": page.version,
                "minorEdit": False,
            }
        else:
            expandable["version"] = ""
        if "history" in expand:
            content["history"] = {
                "latest": True,
                "createdBy": self._user(page.author),
                "createdDate": page.created,
            }
        else:
            expandable["history"] = f"/rest/api/content/{page.id}/history"
        if "space" in expand:
            content["space"] = self._space(self.spaces[page.space])
        else:
            expandable["space"] = f"/rest/api/space/{page.space}"
        content["_expandable"] = expandable
        return content

    def _comment(self, page: Page, index: int, query: dict[str, str]) -> dict[str, Any]:
        name, when, body = page.comments[index]
        expand = set(filter(None, query.get("expand", "").split(",")))
        comment: dict[str, Any] = {
            "id": f"{page.id}{index + 1:03d}",
            "type": "comment",
            "status": "current",
            "title": f"Re: {page.title}",
            "extensions": {"location": "footer"},
            "_links": {"webui": f"/display/{page.space}?focusedCommentId={page.id}{index + 1:03d}"},
        }
        if "body.storage" in expand:
            comment["body"] = {"storage": {"value": body, "representation": "storage"}}
        if "version" in expand:
            comment["version"] = {"by": self._user(name), "when": when, "number": 1, "minorEdit": False}
        return comment
