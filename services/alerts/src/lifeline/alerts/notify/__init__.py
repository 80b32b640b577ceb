"""Notifications of alert events: webhook subscriptions with a durable delivery log, and live streams
(gRPC ``AlertService.Watch`` and Server-Sent Events) for dashboards.

Webhooks: a durable consumer on ``events.alerts.>`` records one delivery per (event, matching
subscription), a batch in one transaction, idempotent by event id; a worker POSTs them in order per
alert with retries, backoff and jitter, logging every attempt. Live streams: one ordered,
ephemeral consumer per replica fans the events out to the connected watchers in their region scope.
"""
