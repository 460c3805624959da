"""Token buckets in Redis, shared by every proxy instance. Every operation goes through one script
(ratelimit.lua); the operations of concurrent requests share one EVALSHA (RedisStore batches them), and
the settles' reconciliations are coalesced further, per `settle_interval` (one per settle when it is 0).

The script calls go over one lean pipelined connection per worker (wire.ScriptChannel: under a third
of redis-py's CPU per call), which runs EVALSHA and loads the script again when Redis answers NOSCRIPT
(after a restart or a SCRIPT FLUSH); redis-py's `register_script` gives the script's SHA, and its
client serves everything off the request path. Redis errors and timeouts never reach the handlers:
the failure policy decides.

    fail_open (default): serve from the in-process limiter, log once per outage, count it.
    fail_closed: 503 service_unavailable.

After a failure Redis is left alone for `retry_interval` seconds (so an outage costs no timeout per
request), then the next request tries it again: recovery needs no restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Callable, Sequence
from importlib import resources
from typing import Any, Final

from redis.asyncio import BlockingConnectionPool, Redis, RedisCluster
from redis.asyncio.connection import SSLConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from fastproxy.core.errors import ServiceUnavailable
from fastproxy.core.limits import Admission
from fastproxy.core.schemas import BucketLevel, Principal, TokenUsage
from fastproxy.ratelimit import core
from fastproxy.ratelimit.buckets import EMPTY_PLAN, Bucket, Planner
from fastproxy.ratelimit.cluster import ClusterStore
from fastproxy.ratelimit.core import BucketAdmission, StoreUnavailable
from fastproxy.ratelimit.local import Clock, LocalLimiter
from fastproxy.ratelimit.replies import Taken
from fastproxy.ratelimit.settler import Settler
from fastproxy.server.wire import ChannelError, ReplyError, ScriptChannel, bulk, is_noscript, pack_evalsha

log = logging.getLogger("fastproxy.ratelimit")

# What the channel raises for an unavailable Redis (it maps OSError and timeouts to ChannelError).
_FAILURES: Final = (ChannelError, ReplyError)
# The redis-py client's connections per worker. Nothing on the request path uses them (the script calls
# go through wire.ScriptChannel): they serve operators' reads and tests, so a few are plenty.
POOL_SIZE: Final = 4
_POOL_WAIT: Final = 1.0
# Operations per script call: bounds the time one call holds Redis (which runs scripts one at a time).
_BATCH: Final = 128


def load_script() -> str:
    return resources.files("fastproxy.ratelimit").joinpath("ratelimit.lua").read_text()


def connect(url: str, timeout: float, pool_size: int = POOL_SIZE) -> Redis:
    """A client whose calls give up after `timeout` seconds and are never retried on their own.

    A retried script could take twice; the limiter's failure policy is the one place that decides.
    """
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=pool_size,
        timeout=_POOL_WAIT,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
        # RESP2: nothing here needs RESP3. (An earlier comment said its replies parse faster, citing a
        # benchmark that never measured RESP3: no figure backs that.)
        protocol=2,
    )
    return Redis.from_pool(pool)


# Packed bucket arguments remembered per worker (entries hold their bucket, so an id is never reused).
_PACKED_BUCKETS: Final = 8192
_MODES: Final = {mode: bulk(mode) for mode in ("take", "force", "peek")}


class _Op:
    __slots__ = ("args", "future", "keys")

    def __init__(self, keys: list[bytes], args: list[bytes], future: asyncio.Future[Any]) -> None:
        self.keys = keys
        self.args = args
        self.future = future


class RedisStore:
    """The BucketStore protocol over one Redis script, every operation batched with its neighbours.

    An operation is written at once while fewer than `pipeline` calls are out; otherwise it queues, and
    when a call's reply arrives everything queued goes in the next EVALSHA. Alone, an operation costs
    one round trip; under load, one round trip serves every request that arrived meanwhile. With one
    call out at most, a request arriving while a call is out at a moderate rate waits for that reply
    before its own call even starts; a few calls out at once spare it that wait (bench/RESULTS.md:
    full's median at half of saturation 2.8-3.3 ms with 1, 2.1-2.2 ms with 4). Each operation stays
    atomic on its own inside the script (see ratelimit.lua), and replies come back in the order the
    calls went, each to its own call's operations.
    Replies are handed out from the connection's own callback (wire.py), so a waiting request resumes
    one loop iteration after its reply arrives. A task (owned here, awaited by close) is needed only to
    connect or to load the script after NOSCRIPT.
    """

    def __init__(self, client: Redis, script: str, pipeline: int = 1) -> None:
        self.client = client
        self._sha = client.register_script(script).sha
        self._source = script
        pool = client.connection_pool
        params = pool.connection_kwargs
        self._channel = ScriptChannel(
            params, params.get("socket_timeout") or 1.0, tls=issubclass(pool.connection_class, SSLConnection)
        )
        self._queue: list[_Op] = []
        self._pipeline = max(1, pipeline)
        # The operations of each call out, by id of their list (a call's reply settles its own list).
        self._out: dict[int, list[_Op]] = {}
        self._slow: set[asyncio.Task[None]] = set()
        # id(bucket) -> (bucket, then its key, capacity and period packed): a plan's buckets are built
        # once, so packing their constant arguments once per worker takes that off the request path.
        self._packed: dict[int, tuple[Bucket, bytes, bytes, bytes]] = {}

    def _pack(self, bucket: Bucket) -> tuple[Bucket, bytes, bytes, bytes]:
        if len(self._packed) >= _PACKED_BUCKETS:
            self._packed.clear()
        entry = self._packed[id(bucket)] = (bucket, bulk(bucket.key), bulk(bucket.capacity), bulk(bucket.period))
        return entry

    def _submit(self, buckets: Sequence[Bucket], mode: str, costs: Sequence[int]) -> asyncio.Future[Any]:
        """Queue one operation; the future gets its reply, or StoreUnavailable."""
        keys: list[bytes] = []
        args = [_MODES[mode], bulk(len(buckets))]
        packed = self._packed
        for bucket, cost in zip(buckets, costs, strict=True):
            entry = packed.get(id(bucket)) or self._pack(bucket)
            keys.append(entry[1])
            args += (entry[2], entry[3], bulk(cost))
        future = asyncio.get_running_loop().create_future()
        self._queue.append(_Op(keys, args, future))
        if len(self._out) < self._pipeline:
            self._dispatch()
        return future

    def _dispatch(self) -> None:
        """Send what is queued (up to _BATCH operations) as one call."""
        ops: list[_Op] = []
        while self._queue and not ops:
            batch, self._queue = self._queue[:_BATCH], self._queue[_BATCH:]
            ops = [op for op in batch if not op.future.done()]  # skip requests cancelled while queued
        if not ops:
            return
        self._out[id(ops)] = ops
        keys: list[bytes] = []
        args = [bulk(len(ops))]
        for op in ops:
            keys += op.keys
            args += op.args
        packed = pack_evalsha(self._sha, keys, args)
        if not self._channel.submit(packed, functools.partial(self._replied, ops, packed)):
            self._send_slowly(ops, packed)

    def _replied(self, ops: list[_Op], packed: bytes, replies: Any) -> None:
        if is_noscript(replies):
            # After a restart or SCRIPT FLUSH: the slow path loads the script and sends the call again.
            self._send_slowly(ops, packed)
            return
        self._hand_out(ops, replies)

    def _hand_out(self, ops: list[_Op], replies: Any) -> None:
        self._out.pop(id(ops), None)
        if not isinstance(replies, _FAILURES) and (not isinstance(replies, list) or len(replies) != len(ops)):
            # Never expected from ratelimit.lua; if it happens, the waiters hear of it rather than hang.
            replies = ChannelError(f"unexpected reply from the rate-limit script: {replies!r:.200}")
        if isinstance(replies, _FAILURES):
            _fail(ops, replies)
        else:
            for op, reply in zip(ops, replies, strict=True):
                if not op.future.done():  # a request cancelled while its batch was out: nobody waits
                    op.future.set_result(reply)
        while self._queue and len(self._out) < self._pipeline:
            self._dispatch()

    def _send_slowly(self, ops: list[_Op], packed: bytes) -> None:
        task = asyncio.get_running_loop().create_task(self._call_slowly(ops, packed))
        self._slow.add(task)
        task.add_done_callback(self._slow.discard)

    async def _call_slowly(self, ops: list[_Op], packed: bytes) -> None:
        """The call of `packed` when the fast path cannot make it: connect, or load the script first."""
        try:
            replies = await self._channel.evalsha(packed, self._source)
        except _FAILURES as exc:
            self._hand_out(ops, exc)
        except BaseException as exc:
            self._out.pop(id(ops), None)
            _fail(ops, exc)  # cancelled (shutdown) or a bug: the waiters must hear of it, never hang
            raise
        else:
            self._hand_out(ops, replies)

    async def take(self, buckets: Sequence[Bucket], costs: Sequence[int]) -> Taken:
        reply = await self._submit(buckets, "take", costs)
        if reply[0] != 1:
            return Taken(
                ok=False,
                remaining=tuple(reply[4::2]),
                reset_ms=tuple(reply[5::2]),
                refused=int(reply[1]) - 1,
                level=int(reply[2]),
                retry_ms=int(reply[3]),
            )
        return Taken(ok=True, remaining=tuple(reply[1::2]), reset_ms=tuple(reply[2::2]))

    async def force(self, buckets: Sequence[Bucket], costs: Sequence[int]) -> None:
        await self._submit(buckets, "force", costs)

    async def peek(self, buckets: Sequence[Bucket]) -> list[tuple[float, int]]:
        reply = await self._submit(buckets, "peek", [0] * len(buckets))
        return [(float(reply[i]), int(reply[i + 1])) for i in range(0, len(reply), 2)]

    async def close(self) -> None:
        """Let the operations already queued reach Redis, then close the connections."""
        pending = [op.future for ops in (*self._out.values(), self._queue) for op in ops]
        if pending:
            await asyncio.wait(pending)
        for task in list(self._slow):
            with contextlib.suppress(Exception):
                await task
        self._channel.close()
        await self.client.aclose()


def _fail(ops: list[_Op], exc: BaseException) -> None:
    for op in ops:
        if not op.future.done():
            # One exception each: a shared instance would gather every waiter's traceback.
            op.future.set_exception(StoreUnavailable(f"{type(exc).__name__}: {exc}"))


class RedisLimiter:
    """The Limiter Protocol over a RedisStore, with the failure policy and the in-process fallback.

    `fallbacks` counts requests served without Redis (fail_open) or refused for its absence
    (fail_closed); the metrics get each one through `on_fallback`.
    """

    def __init__(
        self,
        planner: Planner,
        client: Redis | RedisCluster,
        *,
        fail_open: bool = True,
        retry_interval: float = 1.0,
        settle_interval: float = 0.0,
        pipeline: int = 1,
        clock: Clock = time.monotonic,
        on_fallback: Callable[[str], None] | None = None,
    ) -> None:
        self.planner = planner
        # Told "allowed" (served by in-process limits) or "rejected" (503) for each request Redis missed.
        self._on_fallback = on_fallback
        # A cluster gets one call per slot a request's buckets touch (cluster.py: what stays exact).
        self.store: RedisStore | ClusterStore = (
            ClusterStore(client, load_script(), client.connection_kwargs.get("socket_timeout") or 1.0)
            if isinstance(client, RedisCluster)
            else RedisStore(client, load_script(), pipeline)
        )
        # 0: one round trip per settle; otherwise reconciliations are coalesced (see settler.py).
        self.settler = Settler(self.store, settle_interval) if settle_interval > 0 else None
        self.fallback = LocalLimiter(planner, clock)
        self._fail_open = fail_open
        self._retry_interval = retry_interval
        self._clock = clock
        self._retry_at = 0.0
        self._degraded = False
        self.fallbacks = 0

    async def admit(self, principal: Principal, estimate: int, client_ip: str | None) -> Admission:
        plan = self.planner.plan(principal, client_ip)
        if plan is EMPTY_PLAN:
            return Admission(principal, estimate, [])
        core.check_sizes(plan, estimate)
        costs = core.costs_of(plan, estimate)
        if not self._degraded or self._clock() >= self._retry_at:
            try:
                taken = await self.store.take(plan.buckets, costs)
            except StoreUnavailable as exc:
                self._failed(exc)
            else:
                if self._degraded:
                    self._degraded = False
                    log.warning("Redis is back: rate limits are shared across instances again")
                return core.admitted(principal, estimate, plan, taken, self.store)
        self.fallbacks += 1
        if self._on_fallback is not None:
            self._on_fallback("allowed" if self._fail_open else "rejected")
        if not self._fail_open:
            raise ServiceUnavailable("The rate limiter is unavailable; please retry shortly.")
        taken = self.fallback.store.take_now(plan.buckets, costs)
        return core.admitted(principal, estimate, plan, taken, self.fallback.store)

    def _failed(self, exc: StoreUnavailable) -> None:
        self._retry_at = self._clock() + self._retry_interval
        if not self._degraded:
            self._degraded = True
            policy = "in-process limits (per instance)" if self._fail_open else "503 for limited requests"
            log.warning("Redis unavailable for rate limits (%s); until it is back: %s", exc, policy)

    async def settle(self, admission: Admission, usage: TokenUsage | None) -> None:
        todo = core.settlement(admission, usage)
        if todo is None:
            return
        tokens, delta = todo
        assert isinstance(admission, BucketAdmission)
        if admission.store is not self.store:
            await self.fallback.store.force(tokens, [delta] * len(tokens))
        elif self.settler is not None:
            self.settler.add(tokens, delta)
        else:
            try:
                await self.store.force(tokens, [delta] * len(tokens))
            except StoreUnavailable as exc:
                # The reservation stands in place of the real usage: an error bounded by the estimate.
                log.debug("rate-limit settle lost: %s", exc)

    async def levels(self, principal: Principal, client_ip: str | None = None) -> list[BucketLevel]:
        """Each applicable bucket's current level in Redis, without taking anything.

        Raises ServiceUnavailable when Redis does not answer (an operator should see that, not guesses).
        """
        try:
            if self.settler is not None:
                await self.settler.flush()  # this instance's pending reconciliations first
            return await core.levels_of(self.store, self.planner, principal, client_ip)
        except StoreUnavailable as exc:
            raise ServiceUnavailable("Redis is unavailable: bucket levels cannot be read.") from exc

    async def close(self) -> None:
        """Apply pending reconciliations, then close the connections."""
        if self.settler is not None:
            await self.settler.close()
        await self.store.close()
