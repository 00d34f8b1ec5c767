"""Persistence: tables, engines, migrations, the group-commit writer and repositories.

Everything dialect-specific (SQLite pragmas, upserts, row locks) stays inside this package.
"""
