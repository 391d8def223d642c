"""Work waiting for a preparation thread: interactive before bulk, round robin across tenants.

Tokenizing is work too: handed out first come first served, a tenant that
submitted sixteen big jobs a moment earlier would have them all tokenized
(and so schedulable) before another tenant's first one.

Within a tenant, items go in the order they are put, except those put with a
`rank`: the chunks of a batch, ranked (batch, chunk index), go in chunk order
before the tenant's other bulk work, so a chunk's next piece is tokenized
before a later chunk's (the policy runs a batch's chunks in order, and a
chunk whose next piece is not ready lets the later ones overtake it).
"""
from __future__ import annotations

import bisect
import collections
import itertools
import threading
from collections.abc import Hashable


class FairQueue:
    def __init__(self):
        # Per lane (interactive, bulk): tenant -> its (order, item) entries, sorted, in the order
        # tenants take turns.
        self._lanes = (collections.OrderedDict(), collections.OrderedDict())
        self._cond = threading.Condition()
        self._seq = itertools.count()

    def put(self, bulk: bool, tenant: Hashable, item, rank: tuple | None = None) -> None:
        """`rank` (comparable tuples): before the tenant's unranked items, in rank order."""
        seq = next(self._seq)
        order = (0, rank, seq) if rank is not None else (1, (), seq)
        with self._cond:
            bisect.insort(self._lanes[1 if bulk else 0].setdefault(tenant, []), (order, item), key=lambda e: e[0])
            self._cond.notify()

    def get(self, timeout: float):
        """The next item, or None after `timeout` seconds with nothing waiting."""
        with self._cond:
            if not self._cond.wait_for(lambda: any(self._lanes), timeout):
                return None
            lane = self._lanes[0] if self._lanes[0] else self._lanes[1]
            tenant, items = next(iter(lane.items()))
            _, item = items.pop(0)
            del lane[tenant]
            if items:
                lane[tenant] = items  # its next item waits for the other tenants' turns
            return item
