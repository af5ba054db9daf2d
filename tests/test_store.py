"""The job stores in process, with a fake clock: each test runs against both backends, the
SQLite store's JobStore (on an in-memory journal, which can be made to fail as a full disk
does) and the RedisStore (on the session's real Redis, made to refuse writes by a maxmemory it
is over). The SQLite journal's own tests (restarts, large values, group commits) follow."""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
from pathlib import Path

import orjson
import pytest

from api_server.config import Endpoint, load_endpoints
from api_server.store import (
    JobIdConflict,
    JobStore,
    MemoryJournal,
    QueueFull,
    SqliteJournal,
    StoreUnavailable,
    WorkerReport,
)
from api_server.store.model import INLINE_VALUE_MAX_BYTES
from api_server.store.redis_store import RedisStore, connect
from jobhive.protocol import JobStatus

REPO = Path(__file__).resolve().parents[1]
DISK_FULL = OSError(28, "No space left on device")


class FakeClock:
    def __init__(self) -> None:
        self.ms = 1_000_000

    def __call__(self) -> int:
        return self.ms

    def advance(self, seconds: float) -> None:
        self.ms += round(seconds * 1000)


@pytest.fixture(scope="module")
def echo() -> Endpoint:
    endpoint = load_endpoints(REPO / "endpoints")["echo"]
    settings = dataclasses.replace(
        endpoint.endpoint, lease_s=10, max_attempts=2, result_ttl_s=60, job_timeout_s=100,
        max_queue_length=5, max_queue_bytes=100_000,
    )
    return dataclasses.replace(endpoint, endpoint=settings)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def journal() -> MemoryJournal:
    return MemoryJournal()


class Backend:
    """Makes stores of one backend over the same durable state, and makes it refuse writes."""

    def __init__(self, name: str, journal: MemoryJournal, clock: FakeClock, redis_url: str):
        self.name, self.journal, self.clock, self.redis_url = name, journal, clock, redis_url
        self.opened: list = []

    async def store(self, endpoints):
        if self.name == "memory":
            store = JobStore(endpoints, self.journal, self.clock)
        else:
            store = RedisStore(endpoints, connect(self.redis_url), clock=self.clock)
        await store.open()
        self.opened.append(store)
        return store

    async def refuse_writes(self, refuse: bool = True) -> None:
        """A full disk (memory), a Redis over its maxmemory (noeviction: writes refused)."""
        if self.name == "memory":
            self.journal.failure = DISK_FULL if refuse else None
        else:
            import redis.asyncio

            async with redis.asyncio.Redis.from_url(self.redis_url) as client:
                await client.config_set("maxmemory", 1 if refuse else 0)


@pytest.fixture(params=["memory", "redis"])
async def backend(request, journal, clock):
    redis_url = request.getfixturevalue("redis_url") if request.param == "redis" else ""
    backend = Backend(request.param, journal, clock, redis_url)
    yield backend
    if request.param == "redis":
        await backend.refuse_writes(False)
    for store in backend.opened:
        await store.close()


@pytest.fixture
async def store(backend, echo):
    return await backend.store({"echo": echo})


def inputs(text: str = "hi") -> bytes:
    return orjson.dumps({"text": text})


async def submit(store, echo, job_id=None, text="hi", owner=""):
    job, _created = await store.submit(echo, job_id, inputs(text), owner)
    return job


async def claim(store, echo, worker="w", max_batch=1):
    return await store.claim([echo], max_batch, worker, timeout_s=0)


def result(grant, outputs=None, error=None, release=False):
    return WorkerReport(grant.job_id, grant.lease_id, outputs_json=outputs, error=error,
                        release=release)


async def test_submit_claim_result(store, echo, backend, clock):
    job = await submit(store, echo)
    assert (job.status, job.queue_position) == (JobStatus.QUEUED, 0)
    (grant,) = await claim(store, echo)
    assert (grant.job_id, grant.attempt, orjson.loads(orjson.dumps(grant.inputs))) == (
        job.id, 1, {"text": "hi"})
    assert orjson.loads(orjson.dumps(grant.to_json()))["lease_expires_at_ms"] == (
        clock() + 10_000)  # (JSON as the worker gets it: a whole number of ms)
    assert (await store.get(job.id)).status is JobStatus.RUNNING
    (answer,) = await store.report_results([result(grant, outputs=b'{"text":"hi"}')])
    assert answer.ok
    done = await store.get(job.id)
    assert (done.status, done.progress, orjson.loads(done.outputs_json)) == (
        JobStatus.DONE, 100.0, {"text": "hi"})
    again = await backend.store({"echo": echo})  # what another server (or a restart) reads
    assert (await again.get(job.id)).status is JobStatus.DONE


async def test_a_repeated_result_is_accepted_and_another_refused(store, echo):
    await submit(store, echo)
    (grant,) = await claim(store, echo)
    outputs = b'{"text":"x"}'
    assert (await store.report_results([result(grant, outputs=outputs)]))[0].ok
    again = (await store.report_results([result(grant, outputs=outputs)]))[0]
    assert (again.ok, again.status) == (True, 200)
    other = (await store.report_results([result(grant, outputs=b'{"text":"y"}')]))[0]
    assert (other.ok, other.status) == (False, 409)


async def test_idempotent_submit(store, echo):
    first = await submit(store, echo, job_id="mine")
    again, created = await store.submit(echo, "mine", inputs(), "")
    assert (again.id, created) == (first.id, False)
    with pytest.raises(JobIdConflict):
        await store.submit(echo, "mine", inputs("other"), "")
    with pytest.raises(JobIdConflict):
        await store.submit(echo, "mine", inputs(), "someone else")


async def test_concurrent_submits_of_one_id_make_one_job(store, echo):
    results = await asyncio.gather(*(store.submit(echo, "same", inputs(), "") for _ in range(5)))
    assert [created for _, created in results].count(True) == 1
    assert (await store.stats())["endpoints"]["echo"]["queued"] == 1


async def test_expired_lease_requeues_then_fails_after_max_attempts(store, echo, clock):
    job = await submit(store, echo)
    (first,) = await claim(store, echo, "w1")
    clock.advance(11)
    await store.sweep()
    seen = await store.get(job.id)
    assert (seen.status, seen.queue_position, seen.attempts) == (JobStatus.QUEUED, 0, 1)
    (second,) = await claim(store, echo, "w2")
    assert second.attempt == 2 and second.lease_id != first.lease_id
    # The first worker's lease is gone: its result is refused.
    late = (await store.report_results([result(first, outputs=b"{}")]))[0]
    assert (late.ok, late.status) == (False, 409)
    clock.advance(11)
    await store.sweep()
    failed = await store.get(job.id)
    assert failed.status is JobStatus.FAILED
    assert "max_attempts = 2" in failed.error


async def test_progress_renews_the_lease(store, echo, clock):
    job = await submit(store, echo)
    (grant,) = await claim(store, echo)
    for _ in range(3):
        clock.advance(8)
        (answer,) = await store.report_progress(
            [WorkerReport(grant.job_id, grant.lease_id, progress=50, outputs={"step": 1})])
        assert answer.ok
        await store.sweep()
    seen = await store.get(job.id)
    assert (seen.status, seen.progress, seen.progress_outputs) == (
        JobStatus.RUNNING, 50, {"step": 1})


async def test_a_lapsed_lease_nobody_took_is_resumed(store, echo, clock):
    job = await submit(store, echo)
    (grant,) = await claim(store, echo)
    clock.advance(11)
    await store.sweep()
    assert (await store.get(job.id)).status is JobStatus.QUEUED
    (answer,) = await store.report_progress([WorkerReport(grant.job_id, grant.lease_id, 10)])
    assert answer.ok
    assert (await store.get(job.id)).status is JobStatus.RUNNING
    assert await claim(store, echo) == []


async def test_job_timeout(store, echo, clock):
    job = await submit(store, echo)
    (grant,) = await claim(store, echo)
    for _ in range(12):  # progress keeps the lease, but not past job_timeout_s
        clock.advance(9)
        await store.report_progress([WorkerReport(grant.job_id, grant.lease_id, 1)])
        await store.sweep()
    seen = await store.get(job.id)
    assert seen.status is JobStatus.FAILED and "job_timeout_s" in seen.error


async def test_release_hands_back_without_counting(store, echo):
    job = await submit(store, echo)
    (grant,) = await claim(store, echo)
    assert (await store.report_results([result(grant, release=True)]))[0].ok
    seen = await store.get(job.id)
    assert (seen.status, seen.attempts) == (JobStatus.QUEUED, 0)


async def test_cancel_queued_and_running(store, echo):
    queued = await submit(store, echo, text="a")
    running = await submit(store, echo, text="b")
    assert (await store.cancel(queued.id)).status is JobStatus.CANCELED
    (grant,) = await claim(store, echo)
    assert grant.job_id == running.id
    assert (await store.cancel(running.id)).status is JobStatus.CANCELED
    (answer,) = await store.report_progress([WorkerReport(grant.job_id, grant.lease_id, 5)])
    assert answer.canceled
    assert (await store.stats())["endpoints"]["echo"] | {"workers": 0} == {
        "queued": 0, "queued_bytes": 0, "running": 0, "workers": 0}


async def test_results_expire_after_their_ttl(store, echo, clock, backend):
    job = await submit(store, echo)
    (grant,) = await claim(store, echo)
    await store.report_results([result(grant, outputs=b"{}")])
    clock.advance(59)
    await store.sweep()
    assert await store.get(job.id) is not None
    clock.advance(2)
    await store.sweep()
    assert await store.get(job.id) is None
    assert await (await backend.store({"echo": echo})).get(job.id) is None


async def test_queue_length_limit(store, echo):
    for i in range(5):
        await submit(store, echo, text=str(i))
    with pytest.raises(QueueFull, match="5 jobs"):
        await submit(store, echo, text="one too many")


async def test_queue_bytes_limit(echo, backend):
    small = dataclasses.replace(echo, endpoint=dataclasses.replace(echo.endpoint,
                                                                   max_queue_bytes=50))
    store = await backend.store({"echo": small})
    await store.submit(small, None, inputs("x" * 20), "")
    with pytest.raises(QueueFull, match="50 bytes"):
        await store.submit(small, None, inputs("x" * 20), "")


async def test_a_store_that_refuses_writes_changes_nothing(store, echo, backend):
    """Disk full (or Redis out of memory): the submit is refused and leaves no trace; a claim
    leaves the job queued; a result is not taken (the worker tries again); reads go on."""
    kept = await submit(store, echo, text="kept")
    await backend.refuse_writes()
    with pytest.raises(StoreUnavailable) as refused:
        await store.submit(echo, "refused", inputs(), "")
    assert refused.value.status == 507
    assert await store.get("refused") is None
    with pytest.raises(StoreUnavailable):
        await claim(store, echo)
    assert (await store.get(kept.id)).queue_position == 0
    await backend.refuse_writes(False)
    (grant,) = await claim(store, echo)
    await backend.refuse_writes()
    with pytest.raises(StoreUnavailable):
        await store.report_results([result(grant, outputs=b'{"text":"kept"}')])
    assert (await store.get(kept.id)).status is JobStatus.RUNNING
    with pytest.raises(StoreUnavailable):
        await store.cancel(kept.id)
    await backend.refuse_writes(False)
    assert (await store.report_results([result(grant, outputs=b'{"text":"kept"}')]))[0].ok
    assert (await store.get(kept.id)).status is JobStatus.DONE
    # The refused id is free: a retry of that submit makes the job.
    assert (await store.submit(echo, "refused", inputs(), ""))[1] is True


async def test_a_journal_io_error_is_a_503(echo, journal, clock):
    store = JobStore({"echo": echo}, journal, clock)
    await store.open()
    journal.failure = OSError(5, "Input/output error")
    with pytest.raises(StoreUnavailable) as failed:
        await submit(store, echo)
    assert failed.value.status == 503


async def test_a_refused_write_during_sweep_is_tried_again(store, echo, backend, clock):
    job = await submit(store, echo)
    await claim(store, echo)
    clock.advance(11)
    await backend.refuse_writes()
    with pytest.raises(StoreUnavailable):
        await store.sweep()
    assert (await store.get(job.id)).status is JobStatus.RUNNING
    await backend.refuse_writes(False)
    await store.sweep()
    assert (await store.get(job.id)).status is JobStatus.QUEUED


async def test_wait_for_change_hands_back_a_snapshot(store, echo):
    job = await submit(store, echo)
    waiting = asyncio.ensure_future(store.wait_for_change(job.id, job.version, 5))
    await asyncio.sleep(0)
    (grant,) = await claim(store, echo)
    changed = await waiting
    assert changed.status is JobStatus.RUNNING and changed.version > job.version
    await store.report_results([result(grant, outputs=b"{}")])
    assert changed.status is JobStatus.RUNNING  # a snapshot: it does not change under us
    assert job.status is JobStatus.QUEUED


async def test_a_new_store_on_the_same_state_serves_on(store, echo, backend):
    """What a restarted server (SQLite) or another server of the deployment (Redis) sees:
    results, running jobs still leased to their workers, queued jobs in their order."""
    done = await submit(store, echo, text="done")
    running = await submit(store, echo, text="running")
    queued = await submit(store, echo, text="queued")
    (g1,) = await claim(store, echo)
    await store.report_results([result(g1, outputs=b'{"text":"done"}')])
    (g2,) = await claim(store, echo)
    other = await backend.store({"echo": echo})
    assert orjson.loads((await other.get(done.id)).outputs_json) == {"text": "done"}
    assert (await other.get(running.id)).status is JobStatus.RUNNING
    assert (await other.get(queued.id)).queue_position == 0
    (answer,) = await other.report_results([result(g2, outputs=b'{"text":"ok"}')])
    assert answer.ok
    (g3,) = await claim(other, echo)
    assert g3.job_id == queued.id
    _repeat, created = await other.submit(echo, running.id, inputs("running"), "")
    assert not created


async def test_workers_seen_and_goodbye(store, echo):
    await store.worker_seen("w1", "key-hash", ["echo"], "10.0.0.1", {"model": "tiny"})
    job = await submit(store, echo)
    await claim(store, echo, "w1")
    stats = await store.stats(with_addresses=True)
    (worker,) = stats["workers"]
    assert (worker["worker_id"], worker["address"], worker["info"], worker["running"]) == (
        "w1", "10.0.0.1", {"model": "tiny"}, 1)
    assert stats["endpoints"]["echo"]["workers"] == 1
    assert "address" not in (await store.stats())["workers"][0]
    assert not await store.worker_goodbye("w1", "another key")
    assert await store.worker_goodbye("w1", "key-hash")
    assert (await store.stats())["workers"] == []
    assert (await store.get(job.id)).status is JobStatus.RUNNING  # (its lease runs out)


async def test_restart_replays_the_journal(tmp_path, echo, clock):
    """SQLite: queued jobs stay queued in order, running ones keep their lease, results stay;
    large inputs and outputs come back from disk, not from memory."""
    path = tmp_path / "jobs.sqlite3"
    big = "x" * (2 * INLINE_VALUE_MAX_BYTES)
    store = JobStore({"echo": echo}, SqliteJournal(path), clock)
    await store.open()
    done = await submit(store, echo, text="done")
    running = await submit(store, echo, text=big)
    queued = await submit(store, echo, text="queued")
    (g1,) = await claim(store, echo)
    await store.report_results([result(g1, outputs=orjson.dumps({"text": big}))])
    (g2,) = await claim(store, echo)
    await store.close()

    store = JobStore({"echo": echo}, SqliteJournal(path), clock)
    await store.open()
    try:
        assert orjson.loads((await store.get(done.id)).outputs_json) == {"text": big}
        assert store._jobs[done.id].outputs_json is None  # large: read from disk when asked
        assert (await store.get(running.id)).status is JobStatus.RUNNING
        assert (await store.get(queued.id)).queue_position == 0
        (answer,) = await store.report_results([result(g2, outputs=b'{"text":"ok"}')])
        assert answer.ok  # the worker of a running job reports to the restarted server
        (g3,) = await claim(store, echo)
        assert g3.job_id == queued.id
        _repeat, created = await store.submit(echo, running.id, inputs(big), "")
        assert not created
    finally:
        await store.close()


async def test_a_removed_endpoints_jobs_fail_and_keep_their_owner(tmp_path, echo, clock):
    path = tmp_path / "jobs.sqlite3"
    store = JobStore({"echo": echo}, SqliteJournal(path), clock)
    await store.open()
    job = await submit(store, echo, owner="owner-hash")
    await store.close()
    store = JobStore({}, SqliteJournal(path), clock)
    await store.open()
    try:
        await store.sweep()
        seen = await store.get(job.id)
        assert (seen.status, seen.owner) == (JobStatus.FAILED, "owner-hash")
        assert "removed" in seen.error
    finally:
        await store.close()


class FailingSqliteJournal(SqliteJournal):
    """The real SQLite journal whose next commit fails as a full disk's does."""

    fail_next = False
    commits: list[list[str]]

    def _commit(self, ops):
        self.commits.append([sql.split()[0] for sql, _ in ops])
        if self.fail_next:
            self.fail_next = False
            raise sqlite3.OperationalError("database or disk is full")
        super()._commit(ops)


@pytest.fixture
async def sqlite_store(tmp_path, echo):
    journal = FailingSqliteJournal(tmp_path / "jobs.sqlite3")
    journal.commits = []
    store = JobStore({"echo": echo}, journal)
    await store.open()
    yield store, journal
    await store.close()


async def test_a_waiting_worker_takes_jobs_in_the_commit_that_writes_them(sqlite_store, echo):
    store, journal = sqlite_store
    claim = asyncio.ensure_future(store.claim([echo], 8, "w", timeout_s=5))
    await asyncio.sleep(0.01)  # the worker waits
    submits = [asyncio.ensure_future(submit(store, echo, text=str(i))) for i in range(3)]
    grants = await claim
    jobs = await asyncio.gather(*submits)
    assert [g.job_id for g in grants] == [j.id for j in jobs]
    assert journal.commits[-1] == ["INSERT"] * 3 + ["UPDATE"] * 3  # one commit for all
    for job in jobs:
        seen = await store.get(job.id)
        assert (seen.status, seen.queue_position) == (JobStatus.RUNNING, None)
    assert (await store.stats())["endpoints"]["echo"]["queued"] == 0


async def test_a_refused_commit_grants_nothing_that_it_held(sqlite_store, echo):
    store, journal = sqlite_store
    claim = asyncio.ensure_future(store.claim([echo], 8, "w", timeout_s=5))
    await asyncio.sleep(0.01)
    journal.fail_next = True
    with pytest.raises(StoreUnavailable):
        await submit(store, echo, job_id="refused")
    with pytest.raises(StoreUnavailable):
        await claim  # its lease was in the same commit
    assert await store.get("refused") is None
    assert await store.claim([echo], 8, "w", timeout_s=0) == []
    kept = await submit(store, echo, job_id="kept")
    (grant,) = await store.claim([echo], 8, "w", timeout_s=0)
    assert grant.job_id == kept.id


# ----- the Redis store's own cases (what its events and scripts must get right)


async def until(condition, timeout_s: float = 5.0) -> None:
    """Waits (on the event loop) until condition() holds; fails the test past timeout_s."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


@pytest.fixture
async def redis_store(echo, clock, redis_url):
    store = RedisStore({"echo": echo}, connect(redis_url), clock=clock)
    await store.open()
    yield store
    await store.close()


async def test_redis_one_sweep_forgets_every_result_due(redis_store, echo, clock):
    """Past the scripts' batch size: one sweep goes on until none is due (a results TTL is
    kept however many jobs a second finish)."""
    store = redis_store
    for n in range(240):  # (5 at a time: the queue's limit here)
        await asyncio.gather(*(submit(store, echo, job_id=f"j{n}-{i}") for i in range(5)))
        grants = await store.claim([echo], 5, "w", 0)
        await store.report_results([result(g, outputs=b"{}") for g in grants])
    forgotten: list[str] = []

    async def hook(job_ids):
        forgotten.extend(job_ids)

    store.on_forget(hook)
    clock.advance(61)
    await store.sweep()
    assert len(forgotten) == 1200 and await store.get("j0-0") is None


async def test_redis_a_stale_expiry_leaves_a_new_job_of_that_id_alone(redis_store, echo, clock,
                                                                     redis_url):
    import redis

    job = await submit(redis_store, echo, job_id="reused")
    (grant,) = await claim(redis_store, echo)
    await redis_store.report_results([result(grant, outputs=b"{}")])
    with redis.Redis.from_url(redis_url) as client:  # the hash expired by the backstop
        client.delete("jobhive:{echo}:job:reused", "jobhive:id:reused")
    again, created = await redis_store.submit(echo, "reused", inputs("new"), "")
    assert created and again.id == job.id
    clock.advance(61)
    await redis_store.sweep()
    assert (await redis_store.get("reused")).status is JobStatus.QUEUED
    (grant,) = await claim(redis_store, echo)
    assert grant.job_id == "reused"


async def test_redis_a_poll_that_does_not_wait_finds_a_job_queued_after_a_drain(
    redis_store, echo
):
    assert await claim(redis_store, echo) == []  # drained: this server knows it empty
    job = await submit(redis_store, echo)
    (grant,) = await claim(redis_store, echo)  # (timeout 0: looks, whatever it knows)
    assert grant.job_id == job.id


async def assert_a_claim_wakes_a_waiter(store, echo) -> None:
    """A job's waiter is woken by its claim's event (well before its own timeout)."""
    job = await submit(store, echo)
    waiting = asyncio.ensure_future(store.wait_for_change(job.id, job.version, 5))
    await asyncio.sleep(0.2)  # (its first read done: it waits for the event)
    await claim(store, echo)
    changed = await asyncio.wait_for(waiting, 2)  # (woken by the event, not the timeout)
    assert changed.status is JobStatus.RUNNING


async def test_redis_events_survive_a_message_they_do_not_understand(redis_store, echo,
                                                                     redis_url):
    import redis.asyncio

    async with redis.asyncio.Redis.from_url(redis_url) as client:
        await client.publish("jobhive:{echo}:ev", b"not an event")
    await assert_a_claim_wakes_a_waiter(redis_store, echo)


async def test_redis_a_wait_submit_is_answered_with_the_job_its_end_carries(redis_store, echo):
    waiting = asyncio.ensure_future(redis_store.submit(echo, None, inputs("w"), "", wait_s=5))
    await asyncio.sleep(0.05)
    (grant,) = await claim(redis_store, echo)
    await redis_store.report_results([result(grant, outputs=b'{"text":"w"}')])
    job, created = await asyncio.wait_for(waiting, 2)
    assert (created, job.status, orjson.loads(job.outputs_json)) == (
        True, JobStatus.DONE, {"text": "w"})


async def test_redis_a_waiting_worker_gets_jobs_in_the_script_that_queues_them(
    redis_store, echo, redis_url
):
    import redis.asyncio

    await submit(redis_store, echo)  # (the scripts loaded: no NOSCRIPT retry counted below)
    await claim(redis_store, echo)
    async with redis.asyncio.Redis.from_url(redis_url) as client:
        waiting = asyncio.ensure_future(redis_store.claim([echo], 1, "w", timeout_s=5))
        await until(lambda: redis_store._parked)  # the worker waits (its first look: nothing)
        before = (await client.info("commandstats"))["cmdstat_evalsha"]["calls"]
        job = await submit(redis_store, echo)
        (grant,) = await asyncio.wait_for(waiting, 2)
        after = (await client.info("commandstats"))["cmdstat_evalsha"]["calls"]
    assert grant.job_id == job.id and after - before == 1  # one script: no claim after it
    assert (await redis_store.get(job.id)).status is JobStatus.RUNNING


async def test_redis_previews_are_kept_within_their_bounds(redis_store, echo, monkeypatch):
    """Previews are kept in each server's memory (never in Redis): the oldest go past the
    cache's bytes, and a job's go when it is done."""
    from api_server.store import redis_events

    monkeypatch.setattr(redis_events, "PREVIEW_CACHE_BYTES", 100)
    jobs = [await submit(redis_store, echo, text=str(i)) for i in range(3)]
    grants = await redis_store.claim([echo], 3, "w", 0)
    for grant in grants:
        await redis_store.report_progress(
            [WorkerReport(grant.job_id, grant.lease_id, 10, outputs={"step": "x" * 30})])
    views = [await redis_store.get(job.id) for job in jobs]
    assert [v.progress_outputs is not None for v in views] == [False, True, True]
    await redis_store.report_results([result(grants[2], outputs=b"{}")])
    await until(lambda: grants[2].job_id not in redis_store._events._previews)  # (done heard)
    assert redis_store._events._previews.keys() == {grants[1].job_id}


async def test_redis_link_a_caller_that_gives_up_leaves_the_others_their_replies(redis_url):
    """One pipelined connection: a canceled caller's reply is dropped when it comes, and the
    callers after it still get their own replies; an error reply goes to its caller alone."""
    import redis.exceptions

    from api_server.store.redis_link import RedisLink

    client = connect(redis_url)
    link = RedisLink(client)
    try:
        await link.run(("PING",))  # (connected: the calls below are all sent in one turn)
        calls = [asyncio.ensure_future(link.run(("ECHO", f"call {i}"))) for i in range(5)]
        await asyncio.sleep(0)
        calls[2].cancel()  # (sent, its reply on the way)
        broken = asyncio.ensure_future(link.run(("NOSUCHCOMMAND",)))
        last = asyncio.ensure_future(link.run(("ECHO", "last"), ("PING",)))
        replies = await asyncio.gather(*calls, broken, last, return_exceptions=True)
        assert [r[0] for r in replies[:2] + replies[3:5]] == [b"call 0", b"call 1",
                                                               b"call 3", b"call 4"]
        assert isinstance(replies[2], asyncio.CancelledError)
        assert isinstance(replies[5], redis.exceptions.ResponseError)
        assert replies[6] == [b"last", b"PONG"]
    finally:
        await link.close()
        await client.aclose()


async def test_redis_events_are_followed_again_after_their_connection_is_killed(
    redis_store, echo, redis_url, caplog
):
    """The subscription (its own connection, read with hiredis) lost: it is made again, and
    changes wake waiters as before."""
    import redis.asyncio

    async with redis.asyncio.Redis.from_url(redis_url) as client:
        assert await client.client_kill_filter(_type="pubsub") == 1
    await until(lambda: "Redis events followed again" in caplog.text)  # (after 0.1 s)
    await assert_a_claim_wakes_a_waiter(redis_store, echo)


async def test_redis_link_a_silent_redis_is_an_error_within_the_timeout():
    """Redis silent (hung) while a command waits: the caller gets a TimeoutError after the
    client's socket timeout, and the connection is closed."""
    import redis.exceptions

    from api_server.store.redis_link import RedisLink

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # (reads every command, answers none)
        writer.close()

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = connect(f"redis://127.0.0.1:{port}/0", timeout_s=0.3)
    link = RedisLink(client)
    try:
        started = asyncio.get_running_loop().time()
        calls = [asyncio.ensure_future(link.run(("PING",))) for _ in range(2)]
        replies = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), 3)
        assert all(isinstance(r, redis.exceptions.TimeoutError) for r in replies), replies
        assert 0.25 < asyncio.get_running_loop().time() - started < 1.5
    finally:
        await link.close()
        await client.aclose()
        server.close()
        await server.wait_closed()


async def test_redis_a_claim_that_empties_the_queue_spares_the_next_poll_a_script(
    redis_store, echo, redis_url
):
    """A claim that took the queue's last job tells the server it is empty (even when it took
    as many as it asked for): the worker's next poll waits without running a claim."""
    import redis.asyncio

    job = await submit(redis_store, echo)  # (queued: its wake heard, the queue not known empty)
    await until(lambda: job.id in redis_store._events._unclaimed["echo"])
    (grant,) = await claim(redis_store, echo)
    assert grant.job_id == job.id
    async with redis.asyncio.Redis.from_url(redis_url) as client:
        before = (await client.info("commandstats"))["cmdstat_evalsha"]["calls"]
        waiting = asyncio.ensure_future(redis_store.claim([echo], 1, "w", timeout_s=5))
        await until(lambda: redis_store._parked)
        second = await submit(redis_store, echo)
        (grant,) = await asyncio.wait_for(waiting, 2)
        after = (await client.info("commandstats"))["cmdstat_evalsha"]["calls"]
    assert grant.job_id == second.id
    assert after - before == 1  # the submit's script alone: the poll waited without a claim


async def test_redis_results_with_a_poll_take_the_next_jobs_in_the_same_script(
    redis_store, echo, redis_url
):
    """A worker's results post that carries a poll: its results recorded and its next job
    leased in one script (one round trip); an empty queue known takes nothing, and the
    results alone run."""
    import redis.asyncio

    first, second = await submit(redis_store, echo), await submit(redis_store, echo, text="2")
    (grant,) = await claim(redis_store, echo)
    async with redis.asyncio.Redis.from_url(redis_url) as client:
        async def scripts() -> int:
            return (await client.info("commandstats"))["cmdstat_evalsha"]["calls"]

        before = await scripts()
        answers, taken = await redis_store.report_results_and_take(
            [result(grant, outputs=b'{"text":"1"}')], [echo], 1, "w")
        assert await scripts() - before == 1
        assert [a.ok for a in answers] == [True] and [g.job_id for g in taken] == [second.id]
        assert (await redis_store.get(first.id)).status is JobStatus.DONE
        assert (await redis_store.get(second.id)).status is JobStatus.RUNNING
        before = await scripts()  # (the queue emptied by that claim: known empty)
        answers, taken = await redis_store.report_results_and_take(
            [result(taken[0], outputs=b'{"text":"2"}')], [echo], 1, "w")
        assert await scripts() - before == 1 and taken == [] and answers[0].ok
    assert (await redis_store.get(second.id)).status is JobStatus.DONE
