"""`poolq beat`: Celery beat that stops on SIGTERM without cutting a send short.

Celery's own handler raises SystemExit wherever beat is, in the middle of
publishing a due task included: that send is lost until the next interval.
Here SIGTERM while beat sleeps stops it at once; during a tick (a publish,
bounded by the broker timeouts of app/broker.py) beat finishes the tick, or
stops when POOLQ_SHUTDOWN_GRACE_S runs out. Either way the schedule file is
written and the process exits 0. Beat holds nothing else: every task it
sends is a periodic sweep, so a send cut short by the grace is made again
by the next beat.
"""

from __future__ import annotations

import logging
import signal

from celery import beat, platforms
from celery.apps.beat import Beat

from app import create_app
from app.config import Settings

log = logging.getLogger(__name__)


class TickAwareScheduler(beat.PersistentScheduler):
    """Knows whether a tick (a send) is under way, and stops after it once asked to."""

    ticking = False
    stop_requested = False

    def tick(self, *args, **kwargs):
        self.ticking = True
        try:
            interval = super().tick(*args, **kwargs)
        finally:
            self.ticking = False
        if self.stop_requested:
            raise SystemExit()  # beat.Service.start catches it, writes the schedule and returns
        return interval


class GracefulBeat(Beat):
    def __init__(self, *, grace_s: float, **kwargs) -> None:
        super().__init__(**kwargs)
        self.grace_s = grace_s

    def install_sync_handler(self, service: beat.Service) -> None:
        scheduler = service.scheduler

        def stop(signum, frame) -> None:
            scheduler.stop_requested = True
            if not scheduler.ticking:
                raise SystemExit()  # asleep between ticks: nothing is being sent
            log.info("beat: stopping after the send under way (at most %.0f s)", self.grace_s)
            signal.signal(signal.SIGALRM, _give_up)
            signal.setitimer(signal.ITIMER_REAL, self.grace_s)

        platforms.signals.update(SIGTERM=stop, SIGINT=stop)


def _give_up(signum, frame) -> None:
    log.warning("beat: the send under way outlasted the grace; stopping without it")
    raise SystemExit()


def run_beat(settings: Settings) -> None:
    """Celery beat: the sweepers and schedules (exactly one per deployment)."""
    celery = create_app(settings).extensions["celery"]
    schedule = settings.home / "celerybeat-schedule"
    log.info("beat started (schedule file %s)", schedule)
    GracefulBeat(app=celery, schedule=str(schedule), scheduler_cls=TickAwareScheduler, loglevel="INFO", quiet=True,
                 grace_s=settings.shutdown_grace_s).run()
