"""The threads verb work runs in: results and exceptions come back on the event loop, in order, off it."""

from __future__ import annotations

import asyncio
import threading

import pytest

from scheduler_extender.http.app import Workers


def test_work_runs_off_the_loop_in_arrival_order_and_answers_on_it() -> None:
    workers = Workers(1, "place")
    done: list[int] = []

    def work(n: int) -> tuple[int, str]:
        done.append(n)
        return n, threading.current_thread().name

    async def main() -> list[tuple[int, str]]:
        return await asyncio.gather(*(workers.run(lambda n=n: work(n)) for n in range(20)))

    try:
        results = asyncio.run(main())
    finally:
        workers.shutdown()
    assert [n for n, _ in results] == list(range(20)) and done == list(range(20))
    assert {thread for _, thread in results} == {"place_0"}, "one thread, never the loop's"


def test_an_exception_in_the_work_is_raised_to_the_awaiting_request() -> None:
    workers = Workers(2, "bind")

    def fail() -> None:
        raise KeyError("gone")

    async def main() -> None:
        with pytest.raises(KeyError, match="gone"):
            await workers.run(fail)
        assert await workers.run(lambda: 7) == 7, "the thread serves on after a failure"

    try:
        asyncio.run(main())
    finally:
        workers.shutdown()


def test_threads_start_on_demand_up_to_the_limit_and_shutdown_finishes_queued_work() -> None:
    workers = Workers(3, "bind")
    release = threading.Event()
    started = threading.Semaphore(0)

    def blocked() -> str:
        started.release()
        assert release.wait(30)
        return threading.current_thread().name

    async def main() -> list[str]:
        pending = [workers.run(blocked) for _ in range(5)]
        for _ in range(3):
            await asyncio.get_running_loop().run_in_executor(None, started.acquire)
        release.set()
        return await asyncio.gather(*pending)

    try:
        names = asyncio.run(main())
    finally:
        workers.shutdown()
    assert sorted(set(names)) == ["bind_0", "bind_1", "bind_2"]
    with pytest.raises(RuntimeError, match="shut down"):
        asyncio.run(_run_after(workers))


def test_a_request_that_went_away_leaves_the_thread_serving() -> None:
    workers = Workers(1, "place")
    gate = threading.Event()

    errors: list[dict[str, object]] = []

    async def main() -> int:
        asyncio.get_running_loop().set_exception_handler(lambda _, context: errors.append(context))
        slow = workers.run(lambda: gate.wait(30))
        slow.cancel()
        gate.set()
        return await workers.run(lambda: 3)

    try:
        assert asyncio.run(main()) == 3
    finally:
        workers.shutdown()
    assert errors == [], "a late answer to a cancelled request is dropped quietly"


async def _run_after(workers: Workers) -> None:
    await workers.run(lambda: None)


def test_at_least_one_thread() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        Workers(0, "place")
