"""The SQL store: engine and sessions, tables, Alembic migrations, and the data access on them.

Nothing here speaks HTTP: a refusal is one of `store.errors`, and the routers' one exception
handler (tuneloop/http.py) turns it into a status code and a body.
"""
