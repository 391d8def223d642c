"""The worker's scheduler: between Celery's deliveries and the engines, for all work in flight.

    Celery consumer --receive--> admission --claim (one statement)--> preparation (tokenize)
        --> dispatcher per model (policy: fair slices) --> engine batcher --> device
        --> finisher (vLLM response shape) --> writer (one transaction for many jobs,
            one Redis round trip of completions, then the acks)
    heartbeat: renew every lease in one statement; take over lapsed leases
    cancels: a job cancelled through the API is announced on Redis and dropped at its next slice

No thread per job: a job in flight is a `Held` record passed between these
stages, so the number in flight is bounded by the broker prefetch
(POOLQ_MAX_JOBS_IN_FLIGHT) and the engine by its token budget, not by
threads. Each stage is one thread (preparation: a few), and each stage takes
everything waiting at once, so under load every transaction, round trip and
engine submission covers many jobs; with one job in the system each stage
passes it straight on.

docs/design/worker.md has the states, the transactions and why a kill -9
at any point loses nothing and writes nothing twice.
"""
from __future__ import annotations

import logging
import os
import queue
import secrets
import signal
import socket
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

from app import jsontext
from app.batches import chunk_leases, progress
from app.batches.dispatch import send_chunk, send_finalize
from app.errors import error_body
from app.jobs import claims
from app.jobs.dispatch import send_job
from app.webhooks.dispatch import send_deliveries
from app.webhooks.services import job_event
from workers.metrics import GROUP_JOBS, JOB_SECONDS, JOBS_RUN
from workers.scheduler import work
from workers.scheduler.acks import ack_all
from workers.scheduler.dispatch import Dispatcher
from workers.scheduler.fairqueue import FairQueue
from workers.scheduler.held import Delivery, Held, State
from workers.scheduler.store import Store

log = logging.getLogger(__name__)


def _preparation_rank(held: Held) -> tuple | None:
    """A batch's chunks are tokenized in chunk order (fairqueue.py); jobs in turn."""
    return held.key if held.kind == "chunk" else None


def worker_identity(hostname: str | None = None) -> str:
    """This process incarnation: a restarted worker on the same host is another holder."""
    return f"{hostname or socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


# Up to this many prompts a job is prepared and shaped on the scheduler's own threads.
SMALL = 32


def _small(request: dict) -> bool:
    items = request.get("input", request.get("documents", request.get("data_2", ())))
    return not isinstance(items, list) or len(items) <= SMALL


def _small_work(held: Held) -> bool:
    """A job of a few sequences (or one that failed before it had any): shaped and stored
    in the interactive lanes."""
    if held.kind != "job":
        return False
    return held.prepared is None or sum(len(u) for u in held.prepared.units) <= SMALL


# A succeeded small job's result up to this long travels with its completion message.
RESULT_IN_MESSAGE_MAX = 16_384


def _completion(outcome: claims.Outcome, small: bool):
    """A finished job's completion message: its id, and a small job's result with it, as the JSON
    text just stored (the JSON columns are written by app.jsontext), so a synchronous
    request answers without reading it back."""
    if small and outcome.status == "succeeded":
        text = jsontext.dumps(outcome.body)
        if len(text) <= RESULT_IN_MESSAGE_MAX:
            return str(outcome.job_id), text
    return str(outcome.job_id)


def _ids(held: Held) -> dict[str, str]:
    """The ids a log line about this work carries (JSON logs: app/logs.py)."""
    if held.kind == "job":
        return {"job_id": str(held.key), "model": held.model}
    return {"batch_id": str(held.key[0]), "model": held.model}


def _own_engine(poolq):
    """The scheduler's connections: its own pool, without a ping per checkout. Every transaction
    is retried on a connection error anyway (store.py), on a fresh connection, so a ping
    would only add a round trip to each of them. Each thread that writes keeps one (store.py):
    admission, two writers, the heartbeat, the cancel check and a stopping worker's release."""
    from app.db import make_engine

    if poolq.settings.embedded_database:
        return poolq.db_engine  # one SQLite file: one engine per process
    return make_engine(poolq.settings.database_url, pool_pre_ping=False, pool_size=6, max_overflow=4)


# How long, and how many, announced cancels are remembered for a claim they may have raced
# (_on_cancelled): far longer than a claim takes.
CANCELS_KEPT_S = 60.0
CANCELS_KEPT = 10_000
FAILPOINT_PAUSE_S = 3.0


def _drain(q: queue.SimpleQueue, first, limit: int = 10_000) -> list:
    items = [first]
    while len(items) < limit:
        try:
            items.append(q.get_nowait())
        except queue.Empty:
            break
    return items


class Scheduler:
    def __init__(self, poolq, engines, identity: str, lease_s: float, max_attempts: int,
                 heartbeat_s: float | None = None, prepare_threads: int = 2):
        self.poolq = poolq
        self.settings = poolq.settings
        self.engines = engines
        self.identity = identity
        self.lease_s = lease_s
        self.max_attempts = max_attempts
        self.heartbeat_s = heartbeat_s or max(0.5, lease_s / 3)
        self._stopping = threading.Event()
        self._store = Store(_own_engine(poolq))
        self._lock = threading.Lock()
        self._held: dict[object, Held] = {}
        # Cancels announced lately (job id -> when heard, monotonic): one that names a job this
        # worker is claiming right then finds it not held yet, so the claim checks them after.
        self._cancels_heard: dict[str, float] = {}
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        # Two write lanes: storing a 20k-text result or a batch chunk takes a while,
        # and a one-text job finished meanwhile must not wait behind it.
        self._finished: queue.SimpleQueue = queue.SimpleQueue()
        self._finished_bulk: queue.SimpleQueue = queue.SimpleQueue()
        self._preparing = FairQueue()
        self._finish = ThreadPoolExecutor(max_workers=1, thread_name_prefix="poolq-finish")
        self._dispatchers: dict[str, Dispatcher] = {}
        self._threads = [threading.Thread(target=self._admit_loop, name="poolq-admit", daemon=True),
                         threading.Thread(target=self._write_loop, args=(self._finished,), name="poolq-write",
                                          daemon=True),
                         threading.Thread(target=self._write_loop, args=(self._finished_bulk,),
                                          name="poolq-write-bulk", daemon=True),
                         threading.Thread(target=self._heartbeat_loop, name="poolq-heartbeat", daemon=True)]
        self._threads += [threading.Thread(target=self._prepare_loop, name=f"poolq-prepare-{i}", daemon=True)
                          for i in range(prepare_threads)]
        self._tokenizing_threads = prepare_threads + 1  # and admission, which prepares small jobs inline

    def start(self) -> None:
        for spec in self.settings.models:
            engine = self.engines.get(spec.name)
            engine.warm_tokenizers(self._tokenizing_threads)
            tokens = engine.max_batch_tokens
            self._dispatchers[spec.name] = Dispatcher(
                spec.name, engine, self._complete, self._next_turn,
                # A slice is a quarter of a batch: a big job takes several slices
                # per batch, so others' work fits in the same batch beside it.
                slice_tokens=max(1, tokens // 4), max_slice_seqs=engine.max_batch_seqs,
                # A bulk window's worth (the batcher's 8 batches): enough that the collator
                # sorts it by length into full batches, as the offline call does; a small
                # job still goes first, in the interactive lane, and everything else waits
                # here, in the policy's order.
                inflight_tokens=engine.window_batches * tokens)
        for thread in self._threads:
            thread.start()
        self.poolq.events.listen_for_cancels(self._on_cancelled)
        log.info("scheduler %s: lease %.0f s, renewed every %.1f s, at most %d attempts", self.identity,
                 self.lease_s, self.heartbeat_s, self.max_attempts)

    # -- the Celery side (consumer thread) ---------------------------------------
    def receive(self, kind: str, key, model: str | None, delivery: Delivery | None) -> None:
        """A message arrived: `kind` "job" (key: job id) or "chunk" (key: (batch id, index))."""
        self.receive_many([(kind, key, model, delivery)])

    def receive_many(self, items: list[tuple]) -> None:
        """Messages that arrived together (one batched read): admitted as one group."""
        if items:
            self._inbox.put(items)

    # -- admission -------------------------------------------------------------
    def _admit_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                first = self._inbox.get(timeout=0.5)
            except queue.Empty:
                continue
            try:
                self._admit([item for items in _drain(self._inbox, first, limit=2000) for item in items])
            except Exception:  # noqa: BLE001 - the messages stay unacked; their leases say the rest
                log.exception("admission failed")

    def _admit(self, items: list) -> None:
        jobs: dict[uuid.UUID, list[Delivery]] = {}
        chunks: dict[tuple[str, int], list[Delivery]] = {}
        for kind, key, model, delivery in items:
            if kind == "job":
                try:
                    jobs.setdefault(uuid.UUID(str(key)), []).append(delivery)
                except ValueError:
                    log.warning("a run_job message with a bad job id %r; dropped", key)
                    self._ack([delivery])
            else:
                chunks.setdefault(key, []).append(delivery)
        if jobs:
            self._admit_jobs(jobs)
        if chunks:
            self._admit_chunks(chunks)

    def _admit_jobs(self, jobs: dict[uuid.UUID, list[Delivery]]) -> None:
        def claim(session):
            claimed = claims.claim(session, jobs, self.identity, self.lease_s, self.max_attempts)
            started = [d for c in claimed if c.has_webhook and c.attempt == 1
                       for d in job_event(session, c.id, "started")]
            return claimed, started

        claiming_since = time.monotonic()
        claimed, started = self._store.transact("claiming jobs", claim)
        GROUP_JOBS.labels("claim").observe(len(jobs))
        if claimed:
            self._failpoint("claimed")
        send_deliveries(self.poolq.celery, started)
        taken = {c.id for c in claimed}
        # The rest: finished, cancelled, deleted, or run by a live worker: redeliveries.
        self._ack([d for job_id, ds in jobs.items() if job_id not in taken for d in ds])
        ready: list[Held] = []
        for c in claimed:
            self._hold(Held("job", c.id, c.model, c.tenant_id, work.priority_of(c.request) > 0, c.attempt, c,
                            [d for d in jobs[c.id] if d is not None]), ready)
        self._add_all(ready)
        self._check_cancels_heard_since(claiming_since, [str(c.id) for c in claimed])

    def _admit_chunks(self, chunks: dict[tuple[str, int], list[Delivery]]) -> None:
        """The chunks of one read, each with its batch's tenant, in one transaction (was two per
        chunk, one after another, on the thread that also claims the interactive jobs)."""
        def claim(session):
            # Sorted: two workers claiming the same chunks lock them in the same order.
            return {key: chunk_leases.claim(session, *key, self.identity, self.lease_s) for key in sorted(chunks)}

        claimed = self._store.transact("claiming chunks", claim)
        # The rest: done, cancelled, held by a live worker, or their batch stopped.
        self._ack([d for key, c in claimed.items() if c is None for d in chunks[key]])
        for key, c in claimed.items():
            if c is not None:
                self._hold(Held("chunk", key, c.model, c.tenant_id, True, c.attempt, c,
                                [d for d in chunks[key] if d is not None]))

    def _hold(self, held: Held, ready: list[Held] | None = None) -> None:
        """Take on claimed work. A small job is prepared here and now, and appended to `ready`
        (handed to its dispatcher with the rest of its group) where one is given."""
        with self._lock:
            previous = self._held.get(held.key)
            if previous is not None and previous.state is not State.DONE:
                # Already ours (a duplicate message, or taken over and then redelivered).
                previous.deliveries.extend(held.deliveries)
                return
            self._held[held.key] = held
        if held.kind == "job" and _small(held.payload.request):
            # A few prompts tokenize in well under a millisecond: here, not behind a
            # big job's tokenization and not at the cost of a thread hand-off.
            self._prepare_one(held, ready)
        else:
            self._preparing.put(held.bulk, held.tenant, held, _preparation_rank(held))

    def _add_all(self, ready: list[Held]) -> None:
        by_model: dict[str, list[Held]] = {}
        for held in ready:
            by_model.setdefault(held.model, []).append(held)
        for model, helds in by_model.items():
            self._dispatchers[model].add_many(helds)

    def _prepare_loop(self) -> None:
        while not self._stopping.is_set():
            held = self._preparing.get(timeout=0.5)
            if held is None:
                continue
            if (held.kind == "chunk" and not held.streaming and held.state is State.PREPARING
                    and self._dispatchers[held.model].park_if_ahead(held)):
                continue  # a later chunk of a batch whose earlier ones have a window ready: made when they run low
            self._prepare_one(held)

    def _prepare_one(self, held: Held, ready: list[Held] | None = None) -> None:
        if held.streaming:
            self._prepare_next_unit(held)
            return
        if held.state is not State.PREPARING:
            return  # cancelled or taken over while it waited
        try:
            engine = self.engines.get(held.model)
            if held.kind == "job":
                held.prepared = work.prepare_job(engine, held.model, held.payload.request)
            else:
                held.prepared, held.answered = work.prepare_chunk(engine, held.model, held.payload.lines)
        except Exception as exc:  # noqa: BLE001 - ValueError: the input (a 400); else the engine (a 500)
            held.error = exc
            self._complete(held)
            return
        dispatcher = self._dispatchers[held.model]
        more = held.prepared.more
        if more is None:
            if ready is not None:
                ready.append(held)
            else:
                dispatcher.add(held)
            return
        # A big job or chunk: its first units run while the rest are tokenized, in order, a unit per turn.
        held.sealed = False
        held.streaming = True
        dispatcher.add(held)
        if not dispatcher.park_if_ahead(held):
            self._next_turn(held)

    def _prepare_next_unit(self, held: Held) -> None:
        """One more unit of a streamed job or chunk, then the next turn goes to whoever waits (round robin
        across tenants, then their jobs): a 20k-text job tokenized start to finish would hold a
        preparation thread, and so another tenant's job, for seconds."""
        dispatcher = self._dispatchers[held.model]
        unit = error = None
        if held.state in (State.PREPARING, State.RUNNING) and held.error is None:
            try:
                unit = next(held.prepared.more, None)
            except Exception as exc:  # noqa: BLE001 - as in _prepare_one, for a later chunk of the input
                error = exc
        # else cancelled, taken over or failed meanwhile: the rest is not wanted
        if unit is None:
            held.streaming = False
            dispatcher.seal(held, error)
            return
        dispatcher.extend(held, unit)
        if not dispatcher.park_if_ahead(held):
            self._next_turn(held)

    def _next_turn(self, held: Held) -> None:
        """A preparation turn for streamed work's next unit (or a parked chunk's first)."""
        self._preparing.put(held.bulk, held.tenant, held, _preparation_rank(held))

    # -- finishing -------------------------------------------------------------
    def _complete(self, held: Held) -> None:
        """All of the work's outputs are back (or it failed): shape it off the dispatcher's thread,
        unless it is small enough that the hand-off would cost more than the shaping."""
        if _small_work(held):
            self._finish_one(held)
        else:
            self._finish.submit(self._finish_one, held)

    def _finish_one(self, held: Held) -> None:
        with self._lock:
            if held.state is State.DONE:
                return
            held.state = State.WRITING
        try:
            result = None
            if held.error is None:
                outputs = [unit.finish([parts[b] for b in sorted(parts)])
                           for unit, parts in zip(held.prepared.units, held.parts)]
                result = held.prepared.finish(outputs)
        except Exception as exc:  # noqa: BLE001 - shaping failed: the work fails like an engine error
            log.exception("shaping the outputs of %s %s failed", held.kind, held.key, extra=_ids(held))
            held.error, result = exc, None
        held.parts = []  # the raw outputs are not needed any more
        (self._finished if _small_work(held) else self._finished_bulk).put((held, result))

    def _outcome(self, held: Held, body) -> claims.Outcome:
        job = held.payload
        if held.error is None:
            return claims.Outcome(job.id, held.attempt, "succeeded", body=body,
                                  prompt_tokens=body["usage"]["prompt_tokens"])
        exc = held.error
        if isinstance(exc, ValueError):  # PoolingInputError is a ValueError: the client's input, a 400
            error = error_body(str(exc), "BadRequestError", getattr(exc, "parameter", None), 400)["error"]
        else:
            log.error("job %s failed in the engine: %r", job.id, exc, extra=_ids(held))
            error = error_body(f"The engine failed on this job: {type(exc).__name__}", "InternalServerError",
                               None, 500)["error"]
        return claims.Outcome(job.id, held.attempt, "failed", error=error)

    # -- the group write ---------------------------------------------------------
    def _write_loop(self, finished: queue.SimpleQueue) -> None:
        while True:
            try:
                first = finished.get(timeout=0.5)
            except queue.Empty:
                if self._stopping.is_set() and not self._busy():
                    return
                continue
            batch = _drain(finished, first, limit=1000)
            try:
                self._write([(h, r) for h, r in batch if h.kind == "job"])
                for held, rows in batch:
                    if held.kind == "chunk":
                        self._write_chunk(held, rows)
            except Exception:  # noqa: BLE001 - not transient (a bug): leases lapse, and another attempt runs
                log.exception("the group write failed; its work is left to lapse and be retried")

    def _write(self, finished: list[tuple[Held, object]]) -> None:
        if not finished:
            return
        outcomes = [self._outcome(held, body) for held, body in finished]
        hooks = {held.key for held, _ in finished if held.payload.has_webhook}

        def write(session):
            won = claims.finish(session, self.identity, outcomes)
            deliveries = [d for o in won if o.job_id in hooks for d in job_event(session, o.job_id, "completed")]
            return won, deliveries

        self._failpoint("computed")
        won, deliveries = self._store.transact("storing finished jobs", write)
        GROUP_JOBS.labels("finish").observe(len(outcomes))
        self._failpoint("committed")
        won_ids = {o.job_id for o in won}
        small = {held.key for held, _ in finished if _small_work(held)}
        self.poolq.events.publish_many([_completion(o, o.job_id in small) for o in won])  # wakes sync requests
        self._settle_all([held for held, _ in finished])
        for held, _ in finished:
            if held.key in won_ids:
                outcome = "succeeded" if held.error is None else "failed"
                JOBS_RUN.labels(held.model, held.payload.task, outcome).inc()
                JOB_SECONDS.labels(held.model).observe(time.monotonic() - held.since)
            else:
                log.info("job %s was finished elsewhere, cancelled or deleted; its result is dropped", held.key,
                         extra=_ids(held))
        send_deliveries(self.poolq.celery, deliveries)

    def _write_chunk(self, held: Held, rows) -> None:
        chunk = held.payload
        if held.error is not None:  # the lines refused at preparation keep their 400
            refused = {row[0] for row in held.answered}
            rows = work.chunk_error_lines([line for line in chunk.lines if line[0] not in refused], held.error)
        outputs = sorted((rows or []) + held.answered)
        window = self.settings.batch_parallel_chunks
        stored = self._store.transact("storing a chunk", lambda s: progress.complete_chunk(s, chunk, outputs,
                                                                                           window))
        self._settle(held)
        if stored is None:
            log.info("batch %s chunk %d was stored by another attempt", *held.key, extra=_ids(held))
            return
        unsent = [key for key in stored.send if not send_chunk(self.poolq.celery, *key)]
        if unsent:
            self._store.transact("marking chunks unsent", lambda s: progress.mark_unsent(s, unsent))
        if stored.finalize:
            send_finalize(self.poolq.celery, chunk.batch_id)  # if refused, the sweeper finds the batch due

    def _settle(self, held: Held) -> None:
        """The work is written or abandoned: ack its messages, forget it."""
        self._settle_all([held])

    def _settle_all(self, helds: list[Held]) -> None:
        """As `_settle`, for a group: their messages acked together (one Redis round trip)."""
        settled = []
        with self._lock:
            for held in helds:
                held.state = State.DONE
                if self._held.get(held.key) is held:
                    del self._held[held.key]
                deliveries, held.deliveries = held.deliveries, []
                settled.append((held, deliveries))
        self._ack([d for _, deliveries in settled for d in deliveries])
        if self.task_event is not None:
            for held, deliveries in settled:
                for d in deliveries:
                    if d is not None:
                        self.task_event(d.task_id, held)

    task_event = None  # set by the Celery handoff: sends task-succeeded for Flower

    @staticmethod
    def _ack(deliveries) -> None:
        ack_all([d.message for d in deliveries if d is not None])

    def _busy(self) -> bool:
        with self._lock:
            return bool(self._held)

    # -- heartbeat: leases, take-overs -------------------------------------------
    def _heartbeat_loop(self) -> None:
        while True:
            try:
                self._beat()
            except Exception:  # noqa: BLE001 - a heartbeat missed is retried at the next one
                log.warning("scheduler heartbeat failed", exc_info=True)
            if self._stopping.wait(self.heartbeat_s):
                return

    def _running(self, kind: str) -> list[Held]:
        with self._lock:
            return [h for h in self._held.values() if h.kind == kind and h.state in (State.PREPARING, State.RUNNING)]

    def _beat(self) -> None:
        models = [spec.name for spec in self.settings.models]

        def beat(session):
            jobs = claims.renew(session, self.identity, self.lease_s)
            chunks = chunk_leases.renew(session, self.identity, self.lease_s)
            failed = claims.fail_exhausted(session, models, self.max_attempts)
            deliveries = [d for job_id, hook in failed if hook for d in job_event(session, job_id, "completed")]
            taken = claims.take_over(session, self.identity, models, self.lease_s, self.max_attempts)
            taken_chunks = chunk_leases.take_over(session, self.identity, models, self.lease_s)
            return jobs, chunks, failed, deliveries, taken, taken_chunks

        held_jobs = self._running("job")
        held_chunks = self._running("chunk")
        beating_since = time.monotonic()
        jobs, chunks, failed, deliveries, taken, taken_chunks = self._store.transact(
            "heartbeat", beat, give_up_after_s=self.lease_s / 2)
        self._abandon([h for h in held_jobs if h.key not in jobs] + [h for h in held_chunks if h.key not in chunks])
        if failed:
            log.error("failed %d job(s) whose worker was lost on every attempt", len(failed))
            self.poolq.events.publish_many([str(job_id) for job_id, _ in failed])
            send_deliveries(self.poolq.celery, deliveries)
        if taken:
            self._failpoint("claimed")
        for c in taken:
            log.warning("took over job %s (attempt %d): its worker stopped renewing its lease", c.id, c.attempt,
                        extra={"job_id": str(c.id), "model": c.model})
            self._hold(Held("job", c.id, c.model, c.tenant_id, work.priority_of(c.request) > 0, c.attempt, c))
        self._check_cancels_heard_since(beating_since, [str(c.id) for c in taken])
        for c in taken_chunks:
            log.warning("took over batch %s chunk %d: its worker stopped renewing its lease", c.batch_id, c.index,
                        extra={"batch_id": str(c.batch_id), "model": c.model})
            self._hold(Held("chunk", (c.batch_id, c.index), c.model, c.tenant_id, True, c.attempt, c))

    def _on_cancelled(self, job_ids: list[str]) -> None:
        """Jobs cancelled through the API (app/jobs/events.py; on the listener's thread): those
        running here are checked at once and dropped at their next slice. The message only says
        where to look: the row decides, so a stale or repeated one stops nothing still ours. A
        cancel whose message was lost is noticed by the next heartbeat's renew."""
        now = time.monotonic()
        with self._lock:
            heard = self._cancels_heard  # oldest first
            for job_id in job_ids:
                heard.pop(job_id, None)
                heard[job_id] = now
            while heard and (len(heard) > CANCELS_KEPT or now - next(iter(heard.values())) > CANCELS_KEPT_S):
                del heard[next(iter(heard))]
        self._check_cancels(job_ids)

    def _check_cancels_heard_since(self, since: float, job_ids: list[str]) -> None:
        """A cancel can be committed, and announced, between a claim's commit and its jobs being
        held here: the listener then found nothing to stop. A cancel committed before the claim
        left the job unclaimable, so only those heard since the claim began can have been missed."""
        with self._lock:
            heard = [job_id for job_id in job_ids if self._cancels_heard.get(job_id, -1.0) >= since]
        if heard:
            self._check_cancels(heard)

    def _check_cancels(self, job_ids: list[str]) -> None:
        named = set(job_ids)
        held = [h for h in self._running("job") if str(h.key) in named]
        if not held:
            return
        try:
            still = self._store.transact("checking cancels", lambda s: claims.still_held(
                s, self.identity, [h.key for h in held]), give_up_after_s=1.0)
        except Exception:  # noqa: BLE001 - the database is away: the next heartbeat that reaches it decides
            log.warning("could not check %d cancelled job(s) now; the heartbeat will", len(held), exc_info=True)
            return
        self._abandon([h for h in held if h.key not in still])

    def _abandon(self, gone: list[Held]) -> None:
        for held in gone:
            with self._lock:
                if held.state not in (State.PREPARING, State.RUNNING):
                    continue  # finished meanwhile: its write decides
                held.state = State.WRITING
            log.info("%s %s is no longer ours (cancelled, deleted or taken over); stopped", held.kind, held.key,
                     extra=_ids(held))
            dispatcher = self._dispatchers.get(held.model)
            if dispatcher is not None:
                dispatcher.drop(held)
            self._settle(held)

    def _failpoint(self, step: str) -> None:
        """Fault tests: die here as a kill -9 would (POOLQ_FAILPOINT=step), or stall here for
        FAILPOINT_PAUSE_S (POOLQ_FAILPOINT=step:pause), as a thread the OS did not run would."""
        if self.settings.failpoint == step:
            log.error("failpoint %s: killing this worker", step)
            os.kill(os.getpid(), signal.SIGKILL)
        elif self.settings.failpoint == f"{step}:pause":
            log.error("failpoint %s: pausing for %.0f s", step, FAILPOINT_PAUSE_S)
            time.sleep(FAILPOINT_PAUSE_S)

    # -- shutdown ----------------------------------------------------------------
    def stop(self, grace_s: float) -> None:
        """Stop taking work; finish what finishes within `grace_s`; give the rest back at once."""
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and self._busy():
            time.sleep(0.05)
        with self._lock:
            left = [h for h in self._held.values() if h.state in (State.PREPARING, State.RUNNING)]
        if left:
            jobs = [h for h in left if h.kind == "job"]
            self._abandon(left)
            released = self._store.transact("releasing jobs", lambda s: claims.release(
                s, self.identity, [h.key for h in jobs]), give_up_after_s=5.0)
            for h in jobs:
                if h.key in released:
                    send_job(self.poolq.celery, h.payload)
            log.warning("shutting down: gave back %d job(s) and %d chunk(s) unfinished", len(released),
                        len(left) - len(jobs))
        self._stopping.set()
        for thread in self._threads:
            thread.join(timeout=5)
        for dispatcher in self._dispatchers.values():
            dispatcher.stop()
