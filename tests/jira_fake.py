"""A Jira REST API stand-in on 127.0.0.1, in Data Center (REST v2) or Cloud (REST v3) shape.

Data Center answers ``GET /rest/api/2/search`` with ``startAt``/``maxResults``/``total`` and bodies in
wiki markup. Cloud answers ``GET /rest/api/3/search/jql`` with ``nextPageToken`` (absent on the last
page, as Jira Cloud does: JRACLOUD-92184) and ``isLast``, bodies in ADF, and refuses the removed
``/rest/api/{2,3}/search`` with 410 as Cloud does since 2025. ``maxResults`` is capped
(``page_cap``). The search embeds at most ``comments_in_search`` comments per issue with their
``total``, so a client must read the rest from ``/issue/KEY/comment``.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass, field
from typing import Any

from service_fake import Answer, FakeService, Request


@dataclass
class Comment:
    author: str  # display name
    created: str
    body: Any  # wiki markup (str) on Data Center, an ADF document (dict) on Cloud


@dataclass
class Issue:
    key: str
    summary: str
    description: Any
    created: str  # "2024-01-02T09:00:00.000+0000"
    updated: str
    issue_type: str = "Bug"
    status: str = "Open"
    status_category: str = "new"
    priority: str | None = "Medium"
    resolution: str | None = None
    resolved: str | None = None
    labels: list[str] = field(default_factory=list)
    components: list[str] = field(default_factory=list)
    reporter: str = "Margaret Hamilton"
    comments: list[Comment] = field(default_factory=list)
    links: list[tuple[str, str, str]] = field(default_factory=list)  # (type name, "inward"|"outward", key)


LINK_TYPES = {
    "Blocks": ("is blocked by", "blocks"),
    "Duplicate": ("is duplicated by", "duplicates"),
    "Relates": ("relates to", "relates to"),
}


class FakeJira(FakeService):
    def __init__(
        self,
        projects: dict[str, str],
        issues: list[Issue],
        *,
        cloud: bool = False,
        accepted: set[str] | None = None,
        page_cap: int = 20,
        comments_in_search: int = 2,
    ) -> None:
        super().__init__(accepted)
        self.cloud = cloud
        self.projects = projects  # key -> name
        self.issues = {issue.key: issue for issue in issues}
        self.page_cap = page_cap
        self.comments_in_search = comments_in_search

    def unauthorized(self) -> Answer:
        if self.cloud:
            return 401, {}, "Client must be authenticated to access this resource."
        return (
            401,
            {"Content-Type": "text/html;charset=UTF-8"},
            "<html><title>Unauthorized (401)</title></html>",
        )

    def route(self, request: Request) -> Answer | None:
        path, query = request.path, request.query
        api = 3 if self.cloud else 2
        if path == "/rest/api/2/serverInfo":
            return 200, {}, self._server_info()
        match = re.fullmatch(r"/rest/api/(2|3)/project/([^/]+)", path)
        if match:
            if match[2] not in self.projects:
                return (
                    404,
                    {},
                    {"errorMessages": [f"No project could be found with key '{match[2]}'."], "errors": {}},
                )
            return 200, {}, self._project(match[2], int(match[1]))
        if re.fullmatch(r"/rest/api/(2|3)/search", path):
            if self.cloud:
                return (
                    410,
                    {},
                    {
                        "errorMessages": [
                            "The requested API has been removed. "
                            "Please migrate to the /rest/api/3/search/jql API. "
                            "A full migration guideline is available at https://developer.atlassian.com/changelog/#CHANGE-2046"
                        ],
                        "errors": {},
                    },
                )
            return self._search_offsets(query)
        if path == "/rest/api/3/search/jql" and self.cloud:
            return self._search_tokens(query)
        match = re.fullmatch(rf"/rest/api/{api}/issue/([^/]+)/comment", path)
        if match and match[1] in self.issues:
            issue = self.issues[match[1]]
            start, limit = int(query.get("startAt", 0)), min(int(query.get("maxResults", 50)), 100)
            chunk = issue.comments[start : start + limit]
            return (
                200,
                {},
                {
                    "startAt": start,
                    "maxResults": limit,
                    "total": len(issue.comments),
                    "comments": [self._comment(issue, start + i, c) for i, c in enumerate(chunk)],
                },
            )
        return None

    def _server_info(self) -> dict[str, Any]:
        if self.cloud:
            return {
                "baseUrl": self.url,
                "displayUrl": self.url,
                "version": "1001.0.0-SNAPSHOT",
                "versionNumbers": [1001, 0, 0],
                "deploymentType": "Cloud",
                "buildNumber": 100280,
                "buildDate": "2025-03-05T04:40:42.000+0000",
                "serverTime": "2025-03-06T10:02:11.123+0000",
                "scmInfo": "0a39b1c4c2a3b1f4c5d3e2f1a0b9c8d7e6f5a4b3",
                "serverTitle": "Jira",
                "defaultLocale": {"locale": "en_US"},
                "serverTimeZone": "Etc/UTC",
            }
        return {
            "baseUrl": self.url,
            "version": "9.12.14",
            "versionNumbers": [9, 12, 14],
            "deploymentType": "Server",
            "buildNumber": 9120014,
            "buildDate": "2024-10-01T00:00:00.000+0000",
            "serverTime": "2025-03-06T10:02:11.123+0000",
            "scmInfo": "3e2b4f5a1c8d9e0f7a6b5c4d3e2f1a0b9c8d7e6f",
            "serverTitle": "Acme Jira",
        }

    def _project(self, key: str, api: int) -> dict[str, Any]:
        return {
            "expand": "description,lead,issueTypes,url,projectKeys,permissions,insight",
            "self": f"{self.url}/rest/api/{api}/project/{10000 + len(key)}",
            "id": str(10000 + len(key)),
            "key": key,
            "name": self.projects[key],
            "projectTypeKey": "software",
            "archived": False,
        }

    def _matching(self, jql: str) -> list[Issue] | None:
        project = re.search(r'project\s*=\s*"?(\w+)"?', jql, re.IGNORECASE)
        if project is None:
            return None
        issues = [i for i in self.issues.values() if i.key.split("-")[0] == project[1]]
        after = re.search(r'updated\s*>=\s*"(\d{4})/(\d{2})/(\d{2}) (\d{2}):(\d{2})"', jql)
        if after:
            bound = f"{after[1]}-{after[2]}-{after[3]}T{after[4]}:{after[5]}"
            issues = [i for i in issues if i.updated[:16] >= bound]
        order = re.search(r"order by (\w+)\s*(asc|desc)?", jql, re.IGNORECASE)
        field_name = order[1].lower() if order else "created"
        descending = bool(order) and (order[2] or "asc").lower() == "desc"
        issues.sort(
            key=lambda i: (getattr(i, field_name, i.created), int(i.key.split("-")[1])), reverse=descending
        )
        return issues

    def _bad_jql(self, jql: str) -> Answer:
        return (
            400,
            {},
            {"errorMessages": [f"Error in the JQL Query: the query is not bounded ({jql})."], "errors": {}},
        )

    def _search_offsets(self, query: dict[str, str]) -> Answer:
        issues = self._matching(query.get("jql", ""))
        if issues is None:
            return self._bad_jql(query.get("jql", ""))
        start, limit = int(query.get("startAt", 0)), min(int(query.get("maxResults", 50)), self.page_cap)
        fields = query.get("fields", "*all")
        return (
            200,
            {},
            {
                "expand": "schema,names",
                "startAt": start,
                "maxResults": limit,
                "total": len(issues),
                "issues": [self._issue(i, fields) for i in issues[start : start + limit]],
            },
        )

    def _search_tokens(self, query: dict[str, str]) -> Answer:
        issues = self._matching(query.get("jql", ""))
        if issues is None:
            return self._bad_jql(query.get("jql", ""))
        start = int(base64.b64decode(query["nextPageToken"]).decode()) if "nextPageToken" in query else 0
        limit = min(int(query.get("maxResults", 50)), self.page_cap)
        answer: dict[str, Any] = {
            "issues": [self._issue(i, query.get("fields", "*all")) for i in issues[start : start + limit]]
        }
        if start + limit < len(issues):
            answer["nextPageToken"] = base64.b64encode(str(start + limit).encode()).decode()
            answer["isLast"] = False
        else:
            answer["isLast"] = True
        return 200, {}, answer

    def _user(self, name: str) -> dict[str, Any]:
        if self.cloud:
            account = "712020:" + format(abs(hash(name)) % 10**12, "012d")
            return {
                "accountId": account,
                "displayName": name,
                "active": True,
                "accountType": "atlassian",
                "timeZone": "Europe/London",
            }
        login = name.split()[0].lower()
        return {
            "name": login,
            "key": f"JIRAUSER{abs(hash(name)) % 100000}",
            "displayName": name,
            "emailAddress": f"{login}@example.com",
            "active": True,
        }

    def _comment(self, issue: Issue, index: int, comment: Comment) -> dict[str, Any]:
        api = 3 if self.cloud else 2
        comment_id = str(10100 + index + 100 * int(issue.key.split("-")[1]))
        return {
            "self": f"{self.url}/rest/api/{api}/issue/{issue.key}/comment/{comment_id}",
            "id": comment_id,
            "author": self._user(comment.author),
            "body": comment.body,
            "updateAuthor": self._user(comment.author),
            "created": comment.created,
            "updated": comment.created,
            "jsdPublic": True,
        }

    def _issue(self, issue: Issue, fields: str) -> dict[str, Any]:
        wanted = set(fields.split(","))
        api = 3 if self.cloud else 2
        number = int(issue.key.split("-")[1])
        all_fields: dict[str, Any] = {
            "summary": issue.summary,
            "description": issue.description,
            "issuetype": {
                "self": f"{self.url}/rest/api/{api}/issuetype/1",
                "id": "1",
                "name": issue.issue_type,
                "subtask": False,
            },
            "status": {
                "name": issue.status,
                "id": "3",
                "statusCategory": {
                    "id": 4,
                    "key": issue.status_category,
                    "name": issue.status_category.title(),
                },
            },
            "priority": {"name": issue.priority, "id": "3"} if issue.priority else None,
            "resolution": {"name": issue.resolution, "id": "10000", "description": "Work has been completed."}
            if issue.resolution
            else None,
            "resolutiondate": issue.resolved,
            "labels": issue.labels,
            "components": [{"id": str(10200 + i), "name": name} for i, name in enumerate(issue.components)],
            "issuelinks": [self._link(issue, i, link) for i, link in enumerate(issue.links)],
            "created": issue.created,
            "updated": issue.updated,
            "reporter": self._user(issue.reporter),
            "fixVersions": [],
            "comment": {
                "comments": [
                    self._comment(issue, i, c)
                    for i, c in enumerate(issue.comments[: self.comments_in_search])
                ],
                "self": f"{self.url}/rest/api/{api}/issue/{10000 + number}/comment",
                "maxResults": self.comments_in_search,
                "total": len(issue.comments),
                "startAt": 0,
            },
        }
        selected = all_fields if "*all" in wanted else {k: v for k, v in all_fields.items() if k in wanted}
        return {
            "expand": "operations,versionedRepresentations,editmeta,changelog,renderedFields",
            "id": str(10000 + number),
            "self": f"{self.url}/rest/api/{api}/issue/{10000 + number}",
            "key": issue.key,
            "fields": selected,
        }

    def _link(self, issue: Issue, index: int, link: tuple[str, str, str]) -> dict[str, Any]:
        name, direction, other_key = link
        inward, outward = LINK_TYPES[name]
        other = self.issues.get(other_key)
        linked = {
            "id": str(10000 + int(other_key.split("-")[1])),
            "key": other_key,
            "fields": {
                "summary": other.summary if other else "",
                "status": {"name": other.status if other else "Open"},
            },
        }
        entry: dict[str, Any] = {
            "id": str(20000 + index),
            "type": {"id": "10000", "name": name, "inward": inward, "outward": outward},
        }
        entry["outwardIssue" if direction == "outward" else "inwardIssue"] = linked
        return entry
