"""The feedback domain: the feedback and review APIs, rating ingest, retries, redaction, privacy, dataset export.

What it stores goes through the `store` package (tables, data access, migrations).
"""
