"""The task base class: it owns the unit of work, so task bodies never commit."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from celery import Task
from sqlalchemy.orm import Session

from app import Poolq

log = logging.getLogger(__name__)


class PoolqTask(Task):
    abstract = True

    @property
    def poolq(self) -> Poolq:
        return self.app.poolq  # set by create_app

    @contextmanager
    def unit_of_work(self) -> Iterator[Session]:
        """One session, one commit: commit on success, roll back on error."""
        session = self.poolq.session_factory()
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()
