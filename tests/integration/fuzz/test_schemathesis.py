"""Schemathesis against a live proxy: Granian, real PostgreSQL and Redis, the mock upstream behind it.

Every operation of the OpenAPI document (fastproxy/contract) gets positive, negative (schema-violating) and
credential-less cases, a bounded number of each. Each answer must not be a 500, must come within a timeout
(no hangs), must carry its operation's error body when it is an error (`Op.error`: OpenAI's format, Anthropic's
on /v1/messages), and must conform to the document (status, content type, body schema; negative cases refused
with a 4xx; no credentials: 401). The counts per endpoint are printed.

FASTPROXY_FUZZ_EXAMPLES raises the examples per operation and mode (default 20); FASTPROXY_FUZZ_RANDOM=1
draws new cases each run instead of the same derandomized ones.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import msgspec
import pytest
import requests
import schemathesis
from cryptography.fernet import Fernet
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode, checks

from fastproxy.contract.document import build
from fastproxy.contract.spec import ADMIN, KEY, OPERATIONS, SESSION
from fastproxy.core.schemas import ErrorBody
from tests.integration.servers import Server, start_proxy

ADMIN_KEY = "admin-fuzz-secret-0001"
JWT_SECRET = "fuzz-jwt-secret-that-is-long-enough-0001"
EXAMPLES = int(os.environ.get("FASTPROXY_FUZZ_EXAMPLES", "20"))
RANDOM = os.environ.get("FASTPROXY_FUZZ_RANDOM") == "1"
# A hang is an answer that takes longer than this (the mock answers in milliseconds).
TIMEOUT = 10.0
# A schema-violating request must be refused with one of these.
REFUSED = [400, 401, 403, 404, 405, 408, 409, 413, 429]
# The pass whose cases carry no credentials at all: every one must be a 401.
UNAUTHENTICATED = "none"
CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_schema_conformance,
    checks.negative_data_rejection,
]


@pytest.fixture(scope="module")
def fuzzed(
    mock_upstream: Server, postgres_admin_dsn: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:

    name = f"fptest_fuzz_{os.getpid()}"
    dsn = postgres_admin_dsn.rsplit("/", 1)[0] + "/" + name

    async def create() -> None:
        admin = await asyncpg.connect(postgres_admin_dsn)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{name}"')
        await admin.close()

    async def drop() -> None:
        admin = await asyncpg.connect(postgres_admin_dsn)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()

    asyncio.run(create())
    journal: Path = tmp_path_factory.mktemp("fuzz-journal")
    server = start_proxy(
        mock_upstream.url + "/v1",
        FASTPROXY_AUTH="keys",
        FASTPROXY_DATABASE_URL=dsn,
        FASTPROXY_REDIS_URL=redis_url,
        FASTPROXY_REDIS_PREFIX=f"fptest:fuzz:{os.getpid()}:",
        FASTPROXY_ADMIN_KEY=ADMIN_KEY,
        FASTPROXY_JWT_SECRETS=JWT_SECRET,
        FASTPROXY_SIGNUP="true",
        FASTPROXY_SIWE_ORIGIN="http://console.fuzz.test",
        FASTPROXY_SECRET_KEYS=Fernet.generate_key().decode(),
        FASTPROXY_CACHE="true",
        FASTPROXY_AUTH_ATTEMPTS_PER_IP="100000",
        FASTPROXY_AUTH_ATTEMPTS_PER_ACCOUNT="100000",
        FASTPROXY_USAGE_JOURNAL_DIR=str(journal),
        FASTPROXY_ACCESS_LOG="false",
        FASTPROXY_LOG_LEVEL="warning",
    )
    try:
        yield server
    finally:
        server.stop_proc_only()
        log = server.log()
        server.stop()
        asyncio.run(drop())
        assert "Traceback" not in log, log[-5000:]


def _credentials(server: Server) -> dict[str, str]:
    """A fastproxy key for /v1, the admin key, and a session for /api: each operation gets its own."""
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    with httpx.Client(base_url=server.url, timeout=30) as http:
        key = http.post("/admin/keys", json={"name": "fuzz"}, headers=admin).json()["key"]
        account = {"email": "fuzz@example.com", "password": "a-long-unusual-fuzz-passphrase"}
        assert http.post("/api/auth/register", json=account).status_code == 201
        session = http.post("/api/auth/login", json=account).json()["access_token"]
    return {KEY: f"Bearer {key}", ADMIN: f"Bearer {ADMIN_KEY}", SESSION: f"Bearer {session}"}


def _error_problem(error_type: type[Any], status: int, body: bytes, content_type: str) -> str | None:
    """Why an error answer is not in the operation's error format (OpenAI's, or Anthropic's on /v1/messages),
    or None."""
    if status < 400:
        return None
    if not content_type.startswith("application/json"):
        return f"error with content type {content_type!r}"
    try:
        msgspec.json.decode(body, type=error_type)
    except msgspec.DecodeError as exc:
        return f"error body is not {error_type.__name__} ({exc}): {body[:200]!r}"
    if error_type is ErrorBody and not {"param", "code"} <= set(json.loads(body)["error"]):
        return f"error body lacks param/code: {body[:200]!r}"
    return None


def _without_security(doc: dict[str, Any]) -> dict[str, Any]:
    """The document with no security requirements: each case carries the right credentials, so negative cases
    are about the request itself (missing and bad credentials get their own pass, UNAUTHENTICATED)."""
    for methods in doc["paths"].values():
        for operation in methods.values():
            operation.pop("security", None)
    return doc


@pytest.mark.timeout(900)  # bounded by the examples; the default run takes ~35 s, a deep one minutes
def test_fuzz_every_operation(fuzzed: Server, mock_upstream: Server, capsys: pytest.CaptureFixture[str]) -> None:
    config = schemathesis.Config.from_dict({"checks": {"negative_data_rejection": {"expected-statuses": REFUSED}}})
    schema = schemathesis.openapi.from_dict(_without_security(build()), config=config)
    security = {(op.method.lower(), op.path): op.security for op in OPERATIONS}
    errors = {(op.method.lower(), op.path): op.error for op in OPERATIONS}
    auth = _credentials(fuzzed)
    counts: collections.Counter[str] = collections.Counter()
    statuses: dict[str, collections.Counter[int]] = collections.defaultdict(collections.Counter)
    failures: list[str] = []
    session = requests.Session()
    started = time.monotonic()

    for result in schema.get_all_operations():
        operation = result.ok()  # type: ignore[union-attr]  # the document is checked by tests/unit/test_openapi.py
        scheme = security[(operation.method.lower(), operation.path)]
        passes = [(GenerationMode.POSITIVE, auth.get(scheme or "")), (GenerationMode.NEGATIVE, auth.get(scheme or ""))]
        if scheme is not None:
            passes.append((GenerationMode.POSITIVE, UNAUTHENTICATED))
        for mode, credentials in passes:
            error_type = errors[(operation.method.lower(), operation.path)]
            fuzz = _Fuzz(operation, mode, fuzzed.url, mock_upstream.url, credentials, error_type, session)
            fuzz.run()
            counts[fuzz.label] += fuzz.sent
            statuses[fuzz.label].update(fuzz.statuses)
            failures.extend(fuzz.failures)

    elapsed = time.monotonic() - started
    with capsys.disabled():
        total = sum(counts.values())
        print(f"\nfuzz: {total} generated requests in {elapsed:.1f}s, {EXAMPLES} examples per operation and pass")
        for label in sorted(counts):
            spread = " ".join(f"{s}:{n}" for s, n in sorted(statuses[label].items()))
            print(f"  {counts[label]:4d}  {label:40s} {spread}")
    assert not failures, f"{len(failures)} failures:\n\n" + "\n\n".join(failures[:30])
    assert all(500 not in by_status for by_status in statuses.values())


class _Fuzz:
    """The cases of one operation in one generation mode, sent and checked; what happened, counted."""

    def __init__(
        self, operation: Any, mode: GenerationMode, base_url: str, mock_url: str, credentials: str | None,
        error_type: type[Any], session: requests.Session,
    ) -> None:  # fmt: skip
        self.operation = operation
        self.error_type = error_type
        self.mode = mode
        self.label = f"{operation.method.upper()} {operation.path}"
        self.base_url = base_url
        self.mock_url = mock_url
        self.unauthenticated = credentials == UNAUTHENTICATED
        self.headers = {"Authorization": credentials} if credentials and not self.unauthenticated else {}
        self.session = session
        self.sent = 0
        self.statuses: collections.Counter[int] = collections.Counter()
        self.failures: list[str] = []

    def run(self) -> None:
        @given(case=self.operation.as_strategy(generation_mode=self.mode))
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            derandomize=not RANDOM,
            suppress_health_check=list(HealthCheck),
            phases=[Phase.generate],
            report_multiple_bugs=False,
        )
        def each(case: Any) -> None:
            self.one(case)

        # Unsatisfiable: nothing in this operation can be made invalid (no parameters, no body).
        with contextlib.suppress(Unsatisfiable):
            each()

    def one(self, case: Any) -> None:
        # Providers created by the fuzzer point at the mock: a generated base_url must never leave this machine.
        if case.path.startswith("/admin/providers") and isinstance(case.body, dict) and "base_url" in case.body:
            case.body["base_url"] = self.mock_url + "/v1"
        self.sent += 1
        where = f"{self.label} [{'no credentials' if self.unauthenticated else self.mode.value}]"
        try:
            response = case.call(base_url=self.base_url, session=self.session, headers=self.headers, timeout=TIMEOUT)
        except requests.Timeout:
            self.failures.append(f"{where}: no answer within {TIMEOUT}s (hang)\n{case.as_curl_command()}")
            return
        except requests.ConnectionError as exc:
            self.failures.append(f"{where}: connection error {exc}\n{case.as_curl_command()}")
            return
        self.statuses[response.status_code] += 1
        content_type = (response.headers.get("content-type") or [""])[0]
        problem = _error_problem(self.error_type, response.status_code, response.content, content_type)
        if problem is None and self.unauthenticated:
            # A path that names no resource the API could have (an id of the wrong shape) is 404 before any
            # credential is looked at.
            allowed = (401, 404) if "{" in self.operation.path else (401,)
            if response.status_code not in allowed:
                problem = f"{response.status_code} without credentials, expected 401"
        elif problem is None:
            try:
                case.validate_response(response, checks=CHECKS)
            except (Exception, BaseExceptionGroup) as exc:  # schemathesis raises its failures as one group
                problem = str(exc)[:800]
        if problem is not None:
            self.failures.append(f"{where} {response.status_code}: {problem}\n{case.as_curl_command()}")
