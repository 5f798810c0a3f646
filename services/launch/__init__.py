"""The launch layer: the only code that knows every service.

`runtime` (the table of parts and the process that runs them), `cli` (the `leadflow`
command), `tables` (every service's tables, for Alembic), `migrate` and `migrations/`,
and `bench/`. No other package imports this one, and nothing else under `services` imports
a service package; `tests/test_layout.py` reads the imports to keep it so.
"""
