"""The forwarder: pushes the outbox to other PACS-lite servers (outbox/ says what is queued, and records every move).

- client.py: one task's image to one destination with the far side's upload sync protocol
  (metadata by accession number, resumable chunks from its received_bytes), and how the
  attempt ended (sent, retried after a backoff, failed for good) recorded in the outbox;
- chunking.py: the chunk size learnt from the link, and zstd on the wire where it pays;
- forwarder.py: the process's loop (manage.py run_forwarder): at most N pushes in flight,
  each study verified once with the far side, a clean stop on SIGTERM.
The far side's endpoints are the ordinary API (api/upload_views.py, api/forwarded_views.py).
"""
