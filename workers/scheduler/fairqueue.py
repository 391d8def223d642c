"""Work waiting for a preparation thread: interactive before bulk, round robin across tenants.

Tokenizing is work too: handed out first come first served, a tenant that
submitted sixteen big jobs a moment earlier would have them all tokenized
(and so schedulable) before another tenant's first one.
"""
from __future__ import annotations

import collections
import threading
from collections.abc import Hashable


class FairQueue:
    def __init__(self):
        # Per lane (interactive, bulk): tenant -> its items, in the order tenants take turns.
        self._lanes = (collections.OrderedDict(), collections.OrderedDict())
        self._cond = threading.Condition()

    def put(self, bulk: bool, tenant: Hashable, item) -> None:
        with self._cond:
            self._lanes[1 if bulk else 0].setdefault(tenant, collections.deque()).append(item)
            self._cond.notify()

    def get(self, timeout: float):
        """The next item, or None after `timeout` seconds with nothing waiting."""
        with self._cond:
            if not self._cond.wait_for(lambda: any(self._lanes), timeout):
                return None
            lane = self._lanes[0] if self._lanes[0] else self._lanes[1]
            tenant, items = next(iter(lane.items()))
            item = items.popleft()
            del lane[tenant]
            if items:
                lane[tenant] = items  # its next item waits for the other tenants' turns
            return item
