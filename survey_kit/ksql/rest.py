"""A client for ksqlDB's REST API (``POST /ksql``), spoken by real ksqlDB servers and the embedded engine.

>>> client = KsqlRestClient("http://127.0.0.1:8088")
>>> client.execute("SHOW STREAMS;")
[{'@type': 'streams', 'streams': [...], ...}]

Confluent Cloud authenticates with an API key and secret (HTTP basic auth).
"""

from __future__ import annotations

from typing import Any

import httpx

CONTENT_TYPE = "application/vnd.ksql.v1+json"


class KsqlServerError(RuntimeError):
    """The server refused a statement; ``message`` is its explanation, ``statement`` what was sent."""

    def __init__(self, message: str, statement: str = "", error_code: int | None = None):
        super().__init__(message)
        self.message = message
        self.statement = statement
        self.error_code = error_code


class KsqlRestClient:
    """Runs statements on a ksqlDB server."""

    def __init__(self, url: str, api_key: str | None = None, api_secret: str | None = None, timeout: float = 60.0):
        auth = (api_key, api_secret) if api_key and api_secret else None
        self.url = url.rstrip("/")
        self._http = httpx.Client(
            base_url=self.url,
            auth=auth,
            timeout=timeout,
            headers={"Accept": CONTENT_TYPE, "Content-Type": CONTENT_TYPE},
        )

    def execute(
        self,
        statements: str,
        properties: dict[str, str] | None = None,
        variables: dict[str, str] | None = None,
    ) -> list[dict[str, Any]]:
        """Run a semicolon-separated sequence of statements; returns the server's entities."""
        body: dict[str, Any] = {"ksql": statements, "streamsProperties": properties or {}}
        if variables:
            body["sessionVariables"] = variables
        try:
            response = self._http.post("/ksql", json=body)
        except httpx.HTTPError as exc:
            raise ConnectionError(f"cannot reach ksqlDB at {self.url}: {exc}") from None
        if response.status_code in (401, 403):
            raise KsqlServerError(f"ksqlDB at {self.url} refused the credentials: check ksqldb.api_key / api_secret")
        try:
            payload = response.json()
        except ValueError:
            payload = None
        if response.is_error and not (isinstance(payload, dict) and "@type" in payload):
            # ksqlDB's errors carry "@type" (statement_error, generic_error): this is some other server
            raise KsqlServerError(f"the server at {self.url} answered HTTP {response.status_code} to POST /ksql, not as "
                                  "ksqlDB does: check that ksqldb.url in survey-kit.yaml is a ksqlDB server's address")
        if payload is None:
            raise KsqlServerError(f"ksqlDB at {self.url} answered HTTP {response.status_code} without JSON")
        if response.is_error:
            raise KsqlServerError(
                payload.get("message", f"HTTP {response.status_code}"),
                statement=payload.get("statementText", statements),
                error_code=payload.get("error_code"),
            )
        return payload

    def source_names(self) -> set[str]:
        """Names (upper case) of the streams and tables the server knows."""
        names: set[str] = set()
        for entity in self.execute("SHOW STREAMS; SHOW TABLES;"):
            for source in entity.get("streams", []) + entity.get("tables", []):
                names.add(source["name"].upper())
        return names

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> KsqlRestClient:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
