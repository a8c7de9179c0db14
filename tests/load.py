"""A steady stream of requests to a loopback address, for measuring a deploy's downtime.

Requests are due on a fixed schedule (``rate`` a second, shared round-robin among the
paths) whatever the answers' latency, and each one's latency counts from when it was due,
so a slow or stalled server shows up as latency and failures rather than as a lower rate. The stream is bounded: it stops by itself
after ``max_seconds`` or ``max_requests``, whichever comes first, and only ever targets
a loopback address.
"""

import concurrent.futures
import dataclasses
import ipaddress
import itertools
import threading
import time


@dataclasses.dataclass
class Answer:
    path: str
    started: float
    seconds: float
    status: int | None
    error: str = ""

    @property
    def ok(self):
        return self.status == 200


class SteadyLoad:
    """``with SteadyLoad(host, get, paths) as load:`` sends ``get(path)`` (returning an
    HTTP status) ``rate`` times a second until the block ends or a bound is reached."""

    def __init__(self, host, get, paths, *, rate=12, max_seconds=900, max_requests=12000,
                 workers=64):
        if not ipaddress.ip_address(host).is_loopback:
            raise ValueError(f"load is sent to loopback addresses only, not {host}")
        self.get, self.paths, self.rate = get, list(paths), rate
        self.max_seconds, self.max_requests = max_seconds, max_requests
        self.answers = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._pool = concurrent.futures.ThreadPoolExecutor(workers)
        self._thread = threading.Thread(target=self._schedule, daemon=True)
        self.started = self.stopped = None

    def __enter__(self):
        self.started = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc_info):
        self._stop.set()
        self._thread.join()
        self._pool.shutdown(wait=True)
        self.stopped = time.monotonic()

    def _schedule(self):
        paths = itertools.cycle(self.paths)
        for n in range(self.max_requests):
            due = self.started + n / self.rate
            if due - self.started > self.max_seconds:
                break
            if self._stop.wait(max(0.0, due - time.monotonic())):
                break
            self._pool.submit(self._one, next(paths), due)

    def _one(self, path, started):
        try:
            status, error = self.get(path), ""
        except Exception as exc:  # the failure is the measurement
            status, error = None, f"{type(exc).__name__}: {exc}"
        answer = Answer(path, started - self.started, time.monotonic() - started, status, error)
        with self._lock:
            self.answers.append(answer)

    @property
    def failures(self):
        return [a for a in self.answers if not a.ok]

    @property
    def worst(self):
        return max((a.seconds for a in self.answers), default=0.0)

    @property
    def offered_rate(self):
        """Requests a second, as they fell due (answered or not)."""
        span = max(a.started for a in self.answers) - min(a.started for a in self.answers)
        return (len(self.answers) - 1) / max(span, 1e-9)

    def summary(self):
        return (f"{len(self.answers)} requests over {self.stopped - self.started:.1f} s "
                f"({self.offered_rate:.1f}/s), {len(self.failures)} failed, "
                f"worst latency {self.worst:.2f} s")
