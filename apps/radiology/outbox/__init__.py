"""The forwarding outbox: which stored images go to which forwarding destination, and how far each got.

Owns the ForwardTask and StudyDelivery rows and every change to them, so their counters stay
true whoever moves them:
- destinations.py reads RADIOLOGY_FORWARD_DESTINATIONS (where, by which rule, with which token);
- record.py records the tasks of new images in the transaction that stores them (ingest calls
  it; that is why this package sits below ingest), and a doctor's or tech's request or retry;
- progress.py is the forwarder's side: claiming due tasks, marking them sent, retried or
  failed, and a study delivered once the far side confirmed its checksums;
- status.py says how the queue stands (manage.py forward_status, /healthz).
The forwarder process itself, which talks HTTP to the far side, is apps/radiology/forwarding/.
"""
