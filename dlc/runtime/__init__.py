"""Executors: reference (numpy), cpu (numba), cuda (pycuda); the lock that serializes updates of one store."""

from __future__ import annotations

import threading
import weakref

_UPDATE_LOCKS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_GUARD = threading.Lock()


def update_lock(store) -> threading.Lock:
    """The lock every call that updates store's parameters holds: training calls on one store run one at a time."""
    with _GUARD:
        lock = _UPDATE_LOCKS.get(store)
        if lock is None:
            lock = _UPDATE_LOCKS[store] = threading.Lock()
        return lock
