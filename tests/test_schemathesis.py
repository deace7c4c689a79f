"""The whole HTTP API, fuzzed from its own OpenAPI document (Schemathesis) against a real
server on PostgreSQL (the stricter back end: 32-bit integer parameters).

For every operation a bounded number of generated requests, sent with an organizer token so
that the organizers' routes are reached too, on a database holding the demo cycle so that
some ids exist. Valid requests (as the schema describes them): every answer below 500, with
a documented status code and content type, matching the documented schema. Invalid ones
(Schemathesis's negative mode): still never a 500, and only documented status codes.
About a minute in all.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.live_server import cli, fresh_database, running, server_env

EXAMPLES = 30  # valid requests per operation
NEGATIVE_EXAMPLES = 10  # invalid ones
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
NEGATIVE_CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance]


@pytest.fixture(scope="module")
def live_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, str]]]:
    data: Path = tmp_path_factory.mktemp("schemathesis")
    with fresh_database("postgres", data) as url:
        env = server_env(data, url, SCHEDULER_FEEDS_ALLOWED_HOSTS="feeds.example.org")
        cli(env, "migrate")
        cli(env, "demo")
        token = cli(env, "organizer", "create", "--name", "Fuzzer", "--process", "gcm")
        auth = {"Authorization": f"Bearer {token.split()[-1]}"}
        with running(env) as server:
            yield server.base_url, auth


def _details(exc: BaseException) -> str:
    """The checks that failed, with the request that shows it (curl), for the report."""
    if isinstance(exc, BaseExceptionGroup):
        return "\n".join(_details(e) for e in exc.exceptions)
    return str(getattr(exc, "message", "") or exc)[:1500]


def _exercise(
    operation: Any,
    mode: GenerationMode,
    examples: int,
    checks: list[Any],
    base: str,
    auth: dict[str, str],
) -> None:
    """One Hypothesis run over ``operation``: ``examples`` requests of that mode, checked."""

    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case: schemathesis.Case) -> None:
        case.call_and_validate(base_url=base, headers=auth, checks=checks, timeout=30)

    run()


def test_every_operation_answers_as_documented(live_api: tuple[str, dict[str, str]]) -> None:
    """Each operation gets its own Hypothesis runs; every failure is collected, then shown."""
    base, auth = live_api
    api = schemathesis.openapi.from_url(f"{base}/schema/openapi.json")
    failures: list[str] = []
    operations = 0
    # Revoking a token may revoke the fuzzer's own, after which only 401s come back: last.
    every = sorted(
        (result.ok() for result in api.get_all_operations()),
        key=lambda op: op.method.upper() == "DELETE" and op.path.startswith("/api/tokens/"),
    )
    for operation in every:
        operations += 1
        runs = [
            (GenerationMode.POSITIVE, EXAMPLES, CHECKS),
            (GenerationMode.NEGATIVE, NEGATIVE_EXAMPLES, NEGATIVE_CHECKS),
        ]
        for mode, examples, checks in runs:
            try:
                _exercise(operation, mode, examples, checks, base, auth)
            except Unsatisfiable:
                # Some operations have no invalid form Schemathesis can build (a lone string
                # path parameter, no parameters at all): nothing to send in that mode.
                assert mode is GenerationMode.NEGATIVE, operation.label
            except (Exception, BaseExceptionGroup) as exc:  # try every operation, report all
                failures.append(f"{operation.label} ({mode.value}): {exc}\n{_details(exc)}")
    assert operations > 60
    assert not failures, "\n\n".join(failures)
