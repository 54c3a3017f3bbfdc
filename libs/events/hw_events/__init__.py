"""Headwater's shared contract: schemas, subjects, event store, bus, work queues, service runtime.

Kept empty of imports on purpose: `hwctl` imports `hw_events.subjects` and `hw_events.errors` on its
fast path, and importing this package must not pull in NATS or msgspec.
"""

__version__ = "0.1.0"
