"""Property-based requests from the OpenAPI document (schemathesis) against a real server.

Positive mode: schema-valid requests get documented answers whose bodies
match the document. Negative mode: schema-invalid requests (bad query
values, odd types) get a 4xx, never a 5xx.
"""

from __future__ import annotations

import httpx
import pytest
import schemathesis
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from .conftest import sleeper, web_server

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

EXAMPLES = 12


def fuzz(url: str, spec: dict, mode: GenerationMode) -> list[str]:
    """Run every operation's examples; the labels checked."""
    schema = schemathesis.openapi.from_dict(spec)
    checked = []
    for result in schema.get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=EXAMPLES, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        def check(case) -> None:
            if mode is GenerationMode.POSITIVE:
                case.call_and_validate(base_url=url)
                return
            response = case.call(base_url=url)
            assert response.status_code < 500, (case.method, case.formatted_path,
                                                case.query, response.text)
            kind = response.headers.get("content-type") or [""]  # schemathesis: lists
            if (kind[0] if isinstance(kind, list) else kind).startswith("application/json"):
                assert response.status_code < 400 or response.json()["success"] is False

        try:
            check()
        except Unsatisfiable:  # negative mode: nothing in this operation can be wrong
            assert mode is GenerationMode.NEGATIVE
            continue
        checked.append(operation.label)
    return checked


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
async def test_generated_requests(tmp_path, mode):
    async with web_server(tmp_path, sleeper("a") + sleeper("b", autostart=False),
                          server="control_rate = 1000") as srv:
        async with httpx.AsyncClient(base_url=srv.url) as http:
            spec = (await http.get("/openapi.json")).json()
        # A generated id may be "a": then a valid scale runs that many sleepers.
        spec["components"]["schemas"]["ScaleRequest"]["properties"]["instances"][
            "maximum"] = 3
        with trio.fail_after(100):
            checked = await trio.to_thread.run_sync(fuzz, srv.url, spec, mode)
    if mode is GenerationMode.POSITIVE:
        assert len(checked) == sum(len(ops) for ops in spec["paths"].values())
    else:  # the operations with constrained parameters
        assert {"GET /api/components/{cid}/logs", "GET /api/history"} <= set(checked)
