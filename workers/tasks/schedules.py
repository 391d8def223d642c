"""Beat's schedule firing: each due schedule becomes a batch, then the batch's validation is sent."""

from __future__ import annotations

import logging

from celery import shared_task

from app.batches.dispatch import send_validate
from app.db.base import utcnow
from app.schedules import FIRE_SCHEDULES
from app.schedules.firing import due_schedules, fire_due
from workers.base import PoolqTask

log = logging.getLogger(__name__)

MAX_PER_RUN = 1000  # the rest wait for the next beat tick


@shared_task(bind=True, base=PoolqTask, name=FIRE_SCHEDULES, ignore_result=True)
def fire_schedules(self: PoolqTask) -> int:
    """Fire every due schedule once; returns the number of batches made.

    Each firing is its own transaction (claim the slot, make the batch, move
    the slot) and its own send after that commit, so one schedule's failure
    neither undoes nor blocks another's.
    """
    poolq = self.poolq
    with self.unit_of_work() as session:
        due = due_schedules(session, utcnow(), MAX_PER_RUN)
    made = 0
    for schedule_id, slot in due:
        try:
            with self.unit_of_work() as session:
                fired = fire_due(session, schedule_id, slot, utcnow(), poolq.served, poolq.settings.max_file_bytes)
        except Exception:  # the slot stays due: the next tick tries again
            log.exception("schedule %s: firing failed", schedule_id)
            continue
        if fired is None:
            continue  # another beat, or an earlier delivery of this message, fired the slot
        if fired.batch_id is None:
            log.warning("schedule %s fired without a batch: %s", schedule_id, fired.error)
            continue
        made += 1
        log.info("schedule %s fired batch %s", schedule_id, fired.batch_id)
        send_validate(poolq.celery, fired.batch_id)  # refused: the batch sweeper re-sends it
    return made
