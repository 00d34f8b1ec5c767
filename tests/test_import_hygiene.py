"""The runtime and the store must never load textual: headless mode runs without the TUI."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import pytest

MODULES = [
    "quarterdeck.domain.envelope",
    "quarterdeck.domain.states",
    "quarterdeck.domain.ledger",
    "quarterdeck.store.database",
    "quarterdeck.store.writer",
    "quarterdeck.store.receipts",
    "quarterdeck.store.items",
    "quarterdeck.store.queries",
    "quarterdeck.runtime.ingest",
    "quarterdeck.runtime.runtime",
    "quarterdeck.runtime.daemon",
    "quarterdeck.store.apply",
    "quarterdeck.store.sessions",
    "quarterdeck.client",
    "quarterdeck.cli",
]


@pytest.mark.parametrize("module", MODULES)
def test_module_does_not_import_textual(module: str) -> None:
    probe = (
        f"import sys, {module}; "
        "loaded = sorted(m for m in sys.modules if m == 'textual' or m.startswith('textual.')); "
        "print(','.join(loaded))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "", f"{module} loaded {result.stdout.strip()}"


def _domain_modules() -> list[str]:
    """Every module of ``quarterdeck.domain``, found on disk (a new one is checked at once)."""
    import quarterdeck.domain as domain

    return sorted(
        info.name for info in pkgutil.walk_packages(domain.__path__, prefix="quarterdeck.domain.")
    )


def test_domain_imports_nothing_above_it() -> None:
    modules = _domain_modules()
    assert (
        "quarterdeck.domain.authority" in modules and "quarterdeck.domain.policy.parsing" in modules
    )
    probe = (
        f"import sys, {', '.join(modules)}; "
        "print(','.join(sorted(m for m in sys.modules if m.startswith('quarterdeck.') "
        "and not m.startswith('quarterdeck.domain'))))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == ""
    probe_sql = (
        "import sys, quarterdeck.domain.envelope, quarterdeck.domain.states, quarterdeck.domain.ledger; "
        "print('sqlalchemy' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe_sql], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"
