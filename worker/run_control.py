"""Fleet-wide run control in Redis: one concurrency cap, one rate limit, a shared cooldown.

Celery's ``rate_limit`` is per worker and it has no global concurrency limit (celery#5732,
#6591), so every attempt passes this gate first, whichever worker runs it:

- **concurrency**: a slot is a lease in a sorted set (``acquire_slot.lua``, which also reads
  the cancel flag and the cooldown in the same round trip); holders renew their leases every
  few seconds, so a worker that dies frees its slots within LEASE_TTL.
- **rate**: GCRA over one key per limit (``rate_limit.lua``), reserving each attempt's
  instant: ``requests_per_second`` and ``requests_per_minute`` with ``burst``, per run or
  per Dify base URL.
- **cooldown**: Dify refusing a run for load (its concurrency limit, a quota) pauses new
  attempts of the whole run for its Retry-After (or a backoff); then the run recovers by itself.
- **learned cap**: a refusal for the app's concurrency limit also lowers the run's slots to
  what Dify accepted at that moment, or the limit its message names if lower
  (``learn_limit.lua``), for LEARNED_CAP_MS; then the run probes its own concurrency again.
  Without it, a run above the app's limit spends its time in refusals and cooldowns.

The ``limits`` library was considered: its moving window has no notion of burst (a full
window's worth may start at once) and Redis round trips per limit; GCRA gives rate and
burst together in one script.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import redis

from ..config.plan import RateControl
from .messages import LONG_WAIT
from .store import PREFIX, run_key

LUA = Path(__file__).with_name("lua")
LEASE_TTL_MS = 10_000
RENEW_EVERY = 3.0
POLL_MIN, POLL_MAX = 0.005, 0.1
LEARNED_CAP_MS = 30_000
# The end of rate_limit.py's AppInvokeQuotaExceededError message: "... allowed for <app> is N."
NAMED_LIMIT = re.compile(r"\bis (\d+)\.?\s*$")

log = logging.getLogger("dify_runner.worker")


class Admission(Enum):
    ADMITTED = "admitted"
    CANCELLED = "cancelled"
    BUSY = "busy"
    ENDED = "ended"  # the case already has its final result: this delivery is a duplicate


@dataclass(frozen=True)
class Later:
    """Come back at ``at`` (epoch seconds); ``reserved``: the rate-limit instant is booked, the
    next delivery does not book another."""

    at: float
    reserved: bool


class RunGate:
    """Admits attempts under a run's fleet-wide limits. One per worker process."""

    def __init__(self, client: redis.Redis, key_ttl: int) -> None:
        self.redis = client
        self.key_ttl = key_ttl
        self._acquire = client.register_script((LUA / "acquire_slot.lua").read_text())
        self._learn = client.register_script((LUA / "learn_limit.lua").read_text())
        self._renew = client.register_script((LUA / "renew_slots.lua").read_text())
        self._rate = client.register_script((LUA / "rate_limit.lua").read_text())
        # Leases this process holds, as (slots key, task id): a case's lease is named after it,
        # so a second delivery of a case still running elsewhere waits (acquire_slot.lua).
        self._held: set[tuple[str, str]] = set()
        self._lock = threading.Lock()
        self._local = threading.local()  # the lease of the attempt this thread runs
        self._keeper: threading.Thread | None = None

    @contextmanager
    def admit(
        self, run_id: str, task_id: str, concurrency: int, rate: RateControl | None, base_url: str,
        cancelled: Callable[[], bool], max_wait: float, booked: float | None = None,
    ) -> Iterator[Admission | Later]:
        """Wait for a slot, the cooldown and the rate limit. Yields ADMITTED (the slot is
        held for the block, or until ``release_into``), CANCELLED (the run was cancelled
        meanwhile), BUSY (no slot within ``max_wait``: the caller re-queues the case rather
        than hold its message past the broker's visibility timeout), ENDED (the case
        already has a final result) or Later (the cooldown or the rate-limit instant is more
        than LONG_WAIT away: the caller re-queues the case until then, so that a waiting
        case does not hold a worker thread that another run's cases could use). ``booked``:
        the rate-limit instant (epoch s) this case booked before it was re-queued: it is waited
        for instead of booking another, unless it passed more than LONG_WAIT ago (a late case
        using an old instant would bunch with the punctual ones: it books again)."""
        taken = self._take_slot(run_id, task_id, concurrency, cancelled, time.monotonic() + max_wait)
        if isinstance(taken, Admission):
            yield taken
            return
        lease, cooldown_ms = taken
        self._local.lease = lease
        try:
            yield self._pass_waits(run_id, rate, base_url, cancelled, cooldown_ms, booked)
        finally:
            self._local.lease = None
            self._release(lease)

    def _pass_waits(self, run_id: str, rate: RateControl | None, base_url: str, cancelled: Callable[[], bool],
                    cooldown_ms: float, booked: float | None = None) -> Admission | Later:
        """The cooldown, then the rate-limit instant: short waits are slept, long ones are Later."""
        while cooldown_ms > 0:
            if cooldown_ms > LONG_WAIT * 1000:
                return Later(time.time() + cooldown_ms / 1000, reserved=False)
            if cancelled():
                return Admission.CANCELLED
            time.sleep(min(cooldown_ms / 1000, 0.5))
            cooldown_ms = self._cooldown_ms(run_id)
        if booked is not None and time.time() - booked <= LONG_WAIT:
            ms = max(0.0, (booked - time.time()) * 1000)
        else:
            ms = self._reserve_ms(run_id, rate, base_url)
        if ms > LONG_WAIT * 1000:
            return Later(time.time() + ms / 1000, reserved=True)
        return Admission.ADMITTED if self._sleep(ms, cancelled) else Admission.CANCELLED

    def release_into(self, pipe: redis.client.Pipeline) -> None:
        """Give back this thread's slot as part of ``pipe`` (saves a round trip per case)."""
        lease = getattr(self._local, "lease", None)
        if lease is not None and self._forget(lease):
            pipe.zrem(*lease)

    def release(self) -> None:
        """Give back this thread's slot now (before a wait that must not hold it)."""
        lease = getattr(self._local, "lease", None)
        if lease is not None:
            self._release(lease)

    def cool_down(self, run_id: str, seconds: float) -> None:
        """Pause new attempts of the run for ``seconds`` (a 429 slows the whole fleet)."""
        key, ms = run_key(run_id, "cooldown"), max(1, int(seconds * 1000))
        if (self.redis.pttl(key) or 0) < ms:
            self.redis.set(key, "429", px=ms)
            log.info("run %s: Dify answered 429, the fleet pauses for %.2fs", run_id, seconds)

    def learn_limit(self, run_id: str, message: str | None) -> int:
        """Dify refused an attempt for the app's concurrency limit (this thread still holds its
        slot): cap the run's slots at what Dify accepts. Returns the cap."""
        named = NAMED_LIMIT.search(message or "")
        cap = int(self._learn(keys=[run_key(run_id, "slots"), run_key(run_id, "cap")],
                              args=[int(named.group(1)) if named else 0, LEARNED_CAP_MS]))
        log.info("run %s: Dify's concurrency limit answered; at most %d attempts at once for %d s",
                 run_id, cap, LEARNED_CAP_MS // 1000)
        return cap

    # -- slots ---------------------------------------------------------------------------

    def _take_slot(
        self, run_id: str, task_id: str, concurrency: int, cancelled: Callable[[], bool], give_up_at: float
    ) -> tuple[tuple[str, str], int] | Admission:
        """A lease on one slot and the cooldown left (ms), or why there is none."""
        keys = [run_key(run_id, "slots"), run_key(run_id, "cancel"), run_key(run_id, "cooldown"),
                run_key(run_id, "final"), run_key(run_id, "cap")]
        lease = (keys[0], task_id)
        self._ensure_keeper()
        delay = POLL_MIN
        while True:
            code, cooldown_ms = self._acquire(keys=keys,
                                              args=[concurrency, task_id, LEASE_TTL_MS, self.key_ttl, task_id])
            if code == 1:
                with self._lock:
                    self._held.add(lease)  # renewed from now on (a lease lives LEASE_TTL_MS unrenewed)
                return lease, int(cooldown_ms)
            if code == 3:
                return Admission.ENDED
            # Code 4 (a second delivery of a case that runs elsewhere) waits like a full house:
            # the other ends the case, or dies and its lease lapses.
            if code == 2 or cancelled() or time.monotonic() > give_up_at:
                return Admission.CANCELLED if code == 2 or cancelled() else Admission.BUSY
            time.sleep(delay)
            delay = min(POLL_MAX, delay * 2)

    def _release(self, lease: tuple[str, str]) -> None:
        if self._forget(lease):
            self.redis.zrem(*lease)

    def _forget(self, lease: tuple[str, str]) -> bool:
        with self._lock:
            if lease in self._held:
                self._held.discard(lease)
                return True
            return False

    def _ensure_keeper(self) -> None:
        if self._keeper is None or not self._keeper.is_alive():
            self._keeper = threading.Thread(target=self._keep_leases, name="dify-runner-leases", daemon=True)
            self._keeper.start()

    def _keep_leases(self) -> None:
        while True:
            time.sleep(RENEW_EVERY)
            with self._lock:
                held = list(self._held)
            if not held:
                continue
            try:
                self._renew(keys=[key for key, _ in held], args=[LEASE_TTL_MS, *[task for _, task in held]])
            except redis.RedisError:
                log.warning("could not renew %d concurrency leases", len(held), exc_info=True)

    def pace(self, run_id: str, rate: RateControl | None, base_url: str, cancelled: Callable[[], bool]) -> bool:
        """Book and wait out the rate-limit instant of one more request of an admitted case (a
        conversation's next turn: admission booked its first). False if the run is cancelled."""
        return self._sleep(self._reserve_ms(run_id, rate, base_url), cancelled)

    # -- cooldown and rate -----------------------------------------------------------------

    def _cooldown_ms(self, run_id: str) -> int:
        return max(0, int(self.redis.pttl(run_key(run_id, "cooldown")) or 0))

    def _reserve_ms(self, run_id: str, rate: RateControl | None, base_url: str) -> float:
        """Reserve this attempt's instant under the rate limits; ms until it comes."""
        if rate is None or (rate.requests_per_second is None and rate.requests_per_minute is None):
            return 0
        scope = (PREFIX + "rate:" + hashlib.sha256(base_url.encode()).hexdigest()[:16]
                 if rate.scope == "base_url" else run_key(run_id, "rate"))
        burst = rate.burst or 1
        keys, args = [], []
        for name, per_second in (("second", rate.requests_per_second),
                                 ("minute", (rate.requests_per_minute or 0) / 60 or None)):
            if per_second:
                interval = 1000.0 / per_second
                keys.append(f"{scope}:{name}")
                args += [interval, (burst - 1) * interval]
        return float(self._rate(keys=keys, args=args))

    @staticmethod
    def _sleep(ms: float, cancelled: Callable[[], bool]) -> bool:
        """Sleep ``ms`` in slices; False if the run is cancelled meanwhile."""
        end = time.monotonic() + ms / 1000
        while (left := end - time.monotonic()) > 0:
            if cancelled():
                return False
            time.sleep(min(left, 0.25))
        return True
