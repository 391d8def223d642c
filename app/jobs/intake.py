"""Accepted jobs written and sent in groups: one INSERT and one LPUSH for every submission waiting.

An API process under load accepts jobs on many request threads at once, and
each paid for its own pool checkout (with its ping), INSERT round trip and
commit, and LPUSH. Here the submissions that arrive while a group is being
written wait for the next group, and that group's INSERT (one statement,
all its rows, one commit) and LPUSH (one command per queue) cover all of
them: group commit, as a database does for its log.

No fixed wait: the first submission to find no group in progress writes its
own job at once, alone, on its own thread. Whoever arrives meanwhile queues;
when the group in progress ends, the first of them leads the next, taking
everyone waiting by then. A request thread writes at most one group besides
waiting for its own, so no client pays for a long run of other people's
work.

The answer stays the truth: a job's thread returns only after the commit
that covers its row, and raises only if the row is not kept (the group's
INSERT failed and a fresh read does not find it). A group the database
refuses as a whole (one row's bad data, a concurrent Idempotency-Key) is
written again row by row, so each job gets its own outcome.
"""

from __future__ import annotations

import logging
import threading

from sqlalchemy import Connection, Engine
from sqlalchemy.orm import Session, sessionmaker

from app.db.commit import UNAVAILABLE
from app.jobs import dispatch, services
from app.jobs.services import QueuedJob

log = logging.getLogger(__name__)

# Rows per INSERT: enough for any burst one API process sees at once, small
# enough that one statement stays a few milliseconds.
MAX_GROUP = 128


class _Submission:
    __slots__ = ("job", "woken", "leads", "sent", "error")

    def __init__(self, job: QueuedJob):
        self.job = job
        # Held from the start: the leader of this submission's group releases it.
        self.woken = threading.Lock()
        self.woken.acquire()
        self.leads = False  # set before the release that makes this one the next leader
        self.sent = False
        self.error: BaseException | None = None


class JobIntake:
    """Writes and sends the jobs of an API process's submissions, in groups."""

    def __init__(self, statement_engine: Engine, celery, fresh_sessions: sessionmaker[Session]):
        self._engine = statement_engine
        self._celery = celery
        self._fresh_sessions = fresh_sessions  # where a lost INSERT's rows are looked for
        self._lock = threading.Lock()
        self._waiting: list[_Submission] = []
        self._writing = False

    def accept(self, job: QueuedJob) -> bool:
        """Commit the job's row, then send its message. True once both are done, False when the
        row is kept but the broker refused the message; raises (the database's error) when the
        row is not kept."""
        me = _Submission(job)
        with self._lock:
            self._waiting.append(me)
            leads = not self._writing
            self._writing = True
        if not leads:
            me.woken.acquire()
            leads = me.leads
        if leads:
            self._write_next_group()
        if me.error is not None:
            raise me.error
        return me.sent

    def _write_next_group(self) -> None:
        with self._lock:
            group = self._waiting[:MAX_GROUP]
            del self._waiting[:MAX_GROUP]
        try:
            self._write(group)
        finally:
            with self._lock:
                following = self._waiting[0] if self._waiting else None
                self._writing = following is not None
            if following is not None:
                following.leads = True
                following.woken.release()
            for submission in group:
                if submission.woken.locked():
                    submission.woken.release()

    def _write(self, group: list[_Submission]) -> None:
        try:
            kept = self._insert(group)
        except BaseException as error:  # noqa: BLE001 - each submission's thread raises it
            for submission in group:
                submission.error = error
            return
        if kept:
            self._send(kept)

    def _insert(self, group: list[_Submission]) -> list[_Submission]:
        """The submissions whose rows are committed; the others carry their error."""
        try:
            with self._engine.connect() as connection:
                _insert_rows(connection, [s.job for s in group])
            return group
        except UNAVAILABLE as error:
            return self._kept_after(group, error)
        except Exception:
            if len(group) == 1:
                raise
            log.info("a group of %d jobs was refused; writing them one by one", len(group), exc_info=True)
        kept = []
        for submission in group:
            try:
                kept += self._insert([submission])
            except Exception as error:  # noqa: BLE001 - this submission's own outcome
                submission.error = error
        return kept

    def _kept_after(self, group: list[_Submission], error: BaseException) -> list[_Submission]:
        """A lost connection leaves unknown whether the server committed: a fresh read settles it,
        so a kept job is never answered 503 (a client retrying without an Idempotency-Key would
        run it twice)."""
        try:
            with self._fresh_sessions() as fresh:
                found = services.kept_job_ids(fresh, [s.job.id for s in group])
        except UNAVAILABLE:
            found = set()  # still unknown: 503, which says "retry" (an Idempotency-Key makes that safe)
        kept = []
        for submission in group:
            if submission.job.id in found:
                log.warning("the insert of job %s raised, but the job is kept", submission.job.id, exc_info=error)
                kept.append(submission)
            else:
                submission.error = error
        return kept

    def _send(self, group: list[_Submission]) -> None:
        for submission, sent in zip(group, dispatch.send_jobs(self._celery, [s.job for s in group])):
            submission.sent = sent


def _insert_rows(connection: Connection, jobs: list[QueuedJob]) -> None:
    if len(jobs) == 1:
        services.insert_job(connection, jobs[0])
    else:
        services.insert_jobs(connection, jobs)

