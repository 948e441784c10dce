"""Admission control: a hard cap on requests in jails at once, a bounded queue before it, and a refusal
(503 with Retry-After) when both are full, instead of a queue that grows until clients time out.

A request holds its slot from its first jail to its last (compile and run, or a whole jupyter session),
so ``concurrency`` bounds the jails of the service whatever the requests are.  Waiters are served in
order (anyio's semaphore is FIFO).  Cancellation (the client went away) while waiting frees the place.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio


class Full(Exception):
    """Every slot is taken and the queue holds ``queue`` requests: come back in ``retry_after`` s."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"the service is full; retry after {retry_after} s")
        self.retry_after = retry_after


class Admission:
    def __init__(self, concurrency: int, queue: int) -> None:
        if concurrency < 1 or queue < 0:
            raise ValueError("concurrency must be at least 1 and queue at least 0")
        self.concurrency = concurrency
        self.queue = queue
        self.running = 0
        self.waiting = 0
        self._slots = anyio.Semaphore(concurrency)
        self._mean = 1.0  # seconds a request holds a slot (moving average), for Retry-After

    def retry_after(self) -> int:
        """Seconds until a place is likely free: the queue ahead drained at the measured pace."""
        return max(1, min(60, math.ceil(self._mean * (self.waiting + 1) / self.concurrency)))

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        if self.running >= self.concurrency and self.waiting >= self.queue:
            raise Full(self.retry_after())
        self.waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self.waiting -= 1
        self.running += 1
        started = anyio.current_time()
        try:
            yield
        finally:
            self.running -= 1
            self._slots.release()
            self._mean = 0.9 * self._mean + 0.1 * (anyio.current_time() - started)
