"""The rule the in-memory pipeline tests run under: PNGs below ``inbox/`` of the memory
bucket ``bucket`` converted to PDF by CloudConvert, outputs, results and failures beside."""

PNG_TO_PDF = """\
version: 1
rules:
  - name: png-to-pdf
    match: {storage: s3, location: bucket, prefix: inbox/, suffixes: [.png]}
    convert: {to: pdf}
    provider: cloudconvert
    outputs: outbox/
    results: results/
    failures: failures/
"""
