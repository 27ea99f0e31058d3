"""redirects/pipelining.py against a real redis-server: order, one reply per command, batching,
per-command errors, and failure and recovery when Redis goes away or stops answering."""

from __future__ import annotations

import asyncio
import signal
import string

import pytest
from hypothesis import given
from hypothesis import strategies as st
from redis.asyncio.connection import Connection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import DataError, NoScriptError, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from redirects.pipelining import PipelinedRedis, _closed_by_peer, encode
from testkit import redis_links_ready


@pytest.fixture
def redis_server(replica_factory):
    """A replica's redis-server alone (no consumer, no web)."""
    return replica_factory(start=False)


def url(server) -> str:
    return f"redis://127.0.0.1:{server.redis_port}/0"


def test_concurrent_commands_are_sent_in_order_each_gets_its_own_reply(redis_server):
    n = 3000

    async def run() -> tuple[list, int, int]:
        client = PipelinedRedis(url(redis_server))
        try:
            # Issued from many tasks at once, as concurrent requests do. RPUSH replies with the
            # list's length after the push: the i-th command issued must get i + 1.
            async def push(i: int) -> object:
                return await client.execute("RPUSH", "order", i)

            replies = await asyncio.gather(*(push(i) for i in range(n)))
            return replies, client.batches, client.commands
        finally:
            await client.aclose()

    replies, batches, commands = asyncio.run(run())
    assert replies == list(range(1, n + 1))
    assert [int(v) for v in redis_server.redis.lrange("order", 0, -1)] == list(range(n))
    assert commands == n
    # Pipelined: the commands issued together went out in few writes, not one each.
    assert batches < n / 10, batches


def test_replies_are_undecoded_and_an_error_reply_fails_only_its_command(redis_server):
    redis_server.redis.set("k", "v")

    async def run() -> list:
        client = PipelinedRedis(url(redis_server))
        try:
            return await asyncio.gather(
                client.execute("GET", "k"),
                client.execute("EVALSHA", "0" * 40, 0),  # no such script: NOSCRIPT
                client.execute("GET", "missing"),
                client.execute("INCR", "n"),
                client.execute("EVAL", "return {1, 'a'}", 0),
                return_exceptions=True,
            )
        finally:
            await client.aclose()

    got, noscript, missing, incr, listed = asyncio.run(run())
    assert (got, missing, incr, listed) == (b"v", None, 1, [1, b"a"])
    assert isinstance(noscript, NoScriptError)


def test_redis_gone_fails_every_waiting_command_then_recovers_when_it_returns(redis_server):
    async def run() -> tuple[list, list, object]:
        client = PipelinedRedis(url(redis_server), connect_timeout=1, timeout=2)
        try:
            assert await client.execute("SET", "k", "v") == b"OK"  # connected
            redis_server._stop(redis_server.redis_proc, signal.SIGKILL)
            # Sent on the broken connection, and then on no connection at all: every one fails
            # with a RedisError, none hangs.
            first = await asyncio.gather(*(client.execute("GET", "k") for _ in range(50)),
                                         return_exceptions=True)
            second = await asyncio.gather(*(client.execute("GET", "k") for _ in range(50)),
                                          return_exceptions=True)
            redis_server.start_redis()  # the same port, empty
            redis_server.redis.set("k", "back")
            return first, second, await client.execute("GET", "k")
        finally:
            await client.aclose()

    first, second, after = asyncio.run(run())
    assert all(isinstance(e, RedisConnectionError) for e in first + second), first + second
    assert after == b"back"


def test_a_connection_redis_closed_while_idle_is_replaced_before_the_next_batch(redis_server):
    """Redis restarted between two batches (the first click after a restart): nothing of the next
    batch was sent on the dead connection, so it goes out on a new one and none of it fails."""
    async def run() -> list:
        client = PipelinedRedis(url(redis_server), connect_timeout=1, timeout=2)
        try:
            assert await client.execute("SET", "k", "v") == b"OK"  # connected, then idle
            redis_server.restart_redis_empty()  # SIGKILL, then the same port, empty
            redis_server.redis.set("k", "back")
            # A server's event loop runs all the while; this test's was blocked above: give it
            # turns until it has read Redis' close, as it would have by itself.
            for _ in range(500):
                if _closed_by_peer(client._connection):
                    break
                await asyncio.sleep(0.01)
            return await asyncio.gather(*(client.execute("GET", "k") for _ in range(20)),
                                        return_exceptions=True)
        finally:
            await client.aclose()

    assert asyncio.run(run()) == [b"back"] * 20


def test_a_redis_that_stops_answering_times_out_the_batch_and_the_next_batch_reconnects(
    redis_server
):
    async def run() -> tuple[list, object]:
        client = PipelinedRedis(url(redis_server), connect_timeout=1, timeout=0.5)
        try:
            await client.execute("PING")
            redis_server.redis_proc.send_signal(signal.SIGSTOP)
            try:
                stuck = await asyncio.wait_for(
                    asyncio.gather(*(client.execute("INCR", "n") for _ in range(20)),
                                   return_exceptions=True),
                    timeout=5)
            finally:
                redis_server.redis_proc.send_signal(signal.SIGCONT)
            return stuck, await client.execute("PING")
        finally:
            await client.aclose()

    stuck, after = asyncio.run(run())
    assert all(isinstance(e, RedisTimeoutError) for e in stuck), stuck
    assert after == b"PONG"


def test_closing_fails_queued_commands_instead_of_leaving_them_waiting(redis_server):
    async def run() -> list:
        client = PipelinedRedis(url(redis_server))
        futures = [client.execute("INCR", "n") for _ in range(10)]
        await client.aclose()
        return await asyncio.gather(*futures, return_exceptions=True)

    results = asyncio.run(run())
    # Each either ran before the close (its reply) or failed cleanly; none is left pending.
    assert all(isinstance(r, int) or isinstance(r, RedisError) for r in results), results


_ARG = st.one_of(st.text(max_size=40), st.binary(max_size=40),
                 st.integers(min_value=-2**63, max_value=2**64))


@given(name=st.text(alphabet=string.ascii_letters, min_size=1, max_size=12),
       args=st.lists(_ARG, max_size=8))
def test_commands_are_encoded_as_redis_py_encodes_them(name, args):
    expected = b"".join(Connection().pack_command(name, *args))
    assert encode((name, *args)) == expected


@pytest.mark.parametrize("bad", [None, 1.5, True, ["a"]])
def test_an_argument_redis_cannot_take_is_refused_before_anything_is_sent(bad):
    with pytest.raises(DataError):
        encode(("SET", "k", bad))


def test_the_click_script_through_both_clients_and_after_its_cache_was_emptied(redis_server):
    """clicks.click_call (sync, the runserver view's) and link_click_async (the ASGI path's)
    count on the same keys, and both load the script again after a NOSCRIPT (Redis restarted:
    its script cache is empty), each time after the incarnation check (INFO server, EVAL)."""
    from redirects import counting as clicks
    from redirects import keys, selectors

    redis = redis_server.redis
    redis.set(keys.link_key("Abc1234"), "1||https://example.com/x")
    redis_links_ready(redis)  # as consume_links leaves it: a missing link is a 404 (None)
    redis.script_flush()
    assert clicks.click_call(redis=redis, tinyurl="Abc1234") == "https://example.com/x"
    assert clicks.click_call(redis=redis, tinyurl="Nope123") is None
    assert selectors.link_target_get(tinyurl="Abc1234", redis=redis) == "https://example.com/x"
    # The check ran before the load: this server's run id is stored with an incarnation.
    assert redis.get(keys.clicks_runid_key()).decode() == redis.info("server")["run_id"]
    incarnation = redis_server.incarnation()
    assert incarnation is not None
    redis.script_flush()

    async def run() -> list:
        client = PipelinedRedis(url(redis_server))
        try:
            return await asyncio.gather(
                *(clicks.link_click_async(redis=client, tinyurl="Abc1234") for _ in range(20)),
                clicks.link_click_async(redis=client, tinyurl="Nope123"),
                selectors.link_target_get_async(redis=client, tinyurl="Abc1234"))
        finally:
            await client.aclose()

    results = asyncio.run(run())
    assert results == ["https://example.com/x"] * 20 + [None, "https://example.com/x"]
    # The same server life (only its script cache was emptied): the same incarnation.
    assert redis_server.incarnation() == incarnation
    assert redis_server.clicks_count("Abc1234") == 21
    assert redis_server.clicks_count("Nope123") == 0
    # Twenty clicks refused together, one recovery for all of them: one check, one SCRIPT LOAD.
    stats = redis.info("commandstats")
    assert stats.get("cmdstat_script|load", {}).get("calls") == 2
    assert stats.get("cmdstat_eval", {}).get("calls") == 2
