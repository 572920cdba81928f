"""A fifth provider (``toyconvert``) and a fifth storage (``toy_s3``) for convbridge, added
only through entry points: the proof that a new adapter needs no edit to convbridge itself,
to the dev stack or to the SAM template.

* ``toyconvert`` speaks CloudConvert API v2 under its own name and base URL; the sandbox
  serves it below ``/toyconvert/v2``.
* ``toy_s3`` is an S3-compatible store with its own endpoint (``CONVBRIDGE_TOY_S3_ENDPOINT_URL``),
  announcing uploads with S3 event notifications to its own trigger.
"""
