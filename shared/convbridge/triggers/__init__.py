"""Deliveries that arrive over HTTPS rather than from an AWS event source (Event Grid, Pub/Sub
push) or on a schedule (SFTP sweeps): authentication, handshakes and batching for each, ending
in :func:`convbridge.pipeline.submit_all` like every other trigger."""
