"""The REST API fuzzed from its own OpenAPI document (schemathesis).

Against a live `python -m core` over HTTP: for every documented operation,
generated requests (valid and not) must never get a 5xx, and every response
must match the document (status code listed, content type, body schema,
headers). Runs with and without a token, with a bounded number of examples
so the whole file stays well under a minute.
"""

from __future__ import annotations

import http.client
import json
from typing import Any

import hypothesis
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, settings
from schemathesis import GenerationMode

from .conftest import component_table

#: Examples per operation; 12 operations.
EXAMPLES = 50
TOKEN = "fuzz-token-0123456789"
FUZZ_SETTINGS = settings(max_examples=EXAMPLES, deadline=None, database=None,
                         derandomize=True, phases=[Phase.explicit, Phase.generate],
                         suppress_health_check=list(HealthCheck))


def _components() -> str:
    # One running sleeper, one that is not started: both states get exercised.
    return component_table("a") + component_table("b", autostart=False)


def _fuzz(base_url: str, headers: dict[str, str],
          spec: dict[str, Any] | None = None) -> dict[str, int]:
    """Run every operation's strategies; the number of cases per operation.

    `spec` replaces the server's document (to prove the checks can fail).
    """
    if spec is None:
        spec = _served_document(base_url)
        # A valid scale of a real id runs that many processes: up to 3 here,
        # not the 1,000 the document allows (50 examples of that would spawn
        # tens of thousands of children and time out).
        scale = spec["components"]["schemas"]["ScaleRequest"]["properties"]["instances"]
        scale["maximum"] = 3
    schema = schemathesis.openapi.from_dict(spec)
    counts: dict[str, int] = {}
    failures: list[str] = []
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= (10 if spec is None else 1), [op.label for op in operations]
    for operation in operations:
        label = operation.label
        counts[label] = 0
        try:
            _fuzz_one(operation, base_url, headers, counts)
        # schemathesis' FailureGroup is a BaseExceptionGroup. Collect every
        # operation's failures, not just the first.
        except (Exception, BaseExceptionGroup) as exc:
            failures.append(f"{label}: {exc}")
    assert not failures, "\n\n".join(failures)
    return counts


def _fuzz_one(operation: Any, base_url: str, headers: dict[str, str],
              counts: dict[str, int]) -> None:
    """Valid data, invalid data (must get a 4xx), and valid data on real ids."""
    strategies = [operation.as_strategy()]
    if any(p.location == "query" for p in operation.iter_parameters()):
        # Only query parameters can be invalid here (any text is a valid id).
        strategies.append(operation.as_strategy(generation_mode=GenerationMode.NEGATIVE))
    if "{cid}" in operation.path:
        strategies += [operation.as_strategy(path_parameters={"cid": cid})
                       for cid in ("a", "b")]
    for strategy in strategies:
        @FUZZ_SETTINGS
        @hypothesis.given(case=strategy)
        def run(case: schemathesis.Case) -> None:
            counts[operation.label] += 1
            case.call_and_validate(base_url=base_url, headers=headers, timeout=10)

        run()


def _served_document(base_url: str) -> dict[str, Any]:
    host, port = base_url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    try:
        conn.request("GET", "/openapi.json")
        return json.loads(conn.getresponse().read())
    finally:
        conn.close()


def _assert_alive(base_url: str) -> None:
    host, port = base_url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    try:
        conn.request("GET", "/healthz")
        resp = conn.getresponse()
        assert resp.status == 200 and json.loads(resp.read()) == {"status": "ok"}
    finally:
        conn.close()


@pytest.mark.slow
def test_fuzz_every_operation_without_token(core_servers):
    srv = core_servers.start(_components(), interval=0.5, control_rate=1000.0)
    counts = _fuzz(srv.url, {})
    assert all(n >= 1 for n in counts.values()), counts
    _assert_alive(srv.url)
    assert "Traceback" not in srv.output(), srv.output()


@pytest.mark.slow
def test_fuzz_every_operation_with_token(core_servers):
    # Default control rate: the 429 answers must match the document too.
    srv = core_servers.start(_components(), interval=0.5, token=TOKEN)
    counts = _fuzz(srv.url, {"Authorization": f"Bearer {TOKEN}"})
    assert all(n >= 1 for n in counts.values()), counts
    _assert_alive(srv.url)
    assert "Traceback" not in srv.output(), srv.output()


def test_fuzz_reports_a_response_that_breaks_the_document(core_servers):
    # The checks must be able to fail: a document that demands a field
    # /healthz does not send gets /healthz reported, and nothing else.
    srv = core_servers.start(_components(), interval=0.5)
    host, port = srv.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    conn.request("GET", "/openapi.json")
    spec = json.loads(conn.getresponse().read())
    conn.close()
    spec["paths"] = {"/healthz": spec["paths"]["/healthz"],
                     "/api/history": spec["paths"]["/api/history"]}
    ok = spec["paths"]["/healthz"]["get"]["responses"]["200"]["content"]["application/json"]
    ok["schema"] = {"type": "object", "required": ["uptime"]}
    with pytest.raises(AssertionError) as failed:
        _fuzz(srv.url, {}, spec)
    assert "GET /healthz" in str(failed.value) and "uptime" in str(failed.value)
    assert "GET /api/history" not in str(failed.value)
