"""Where code may reach (docs/kernel.md#what-may-import-what): each table with an owner is written only by
its owner, and no service imports another service. Both read the source as text (the AST), so they fail
on the change that breaks the rule, before anything runs."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

SERVICES_DIR = Path(__file__).resolve().parents[2] / "services"

# A table -> the only package or module (a path below services/) whose code may INSERT, UPDATE, DELETE,
# TRUNCATE, COPY into or ALTER it. Reads are anyone's.
TABLE_OWNERS = {
    "customers": "customers",
    "api_keys": "kernel/apikeys.py",
    "operators": "kernel/apikeys.py",
}

# Shared packages: domain code and plumbing any service may import. They import only each other, and the
# kernel only itself.
LIBRARIES = {"kernel", "plans", "activation", "customers"}
# Tools that compose services (the operator's CLI runs service code such as DLQ replay and analytics
# queries; devstack starts every service and builds the route table from their apps): may import anything.
TOOLS = {"cli", "devstack"}


def _writes(table: str) -> re.Pattern[str]:
    return re.compile(
        rf"\b(?:insert\s+into|update|delete\s+from|truncate(?:\s+table)?|copy|alter\s+table)"
        rf"\s+(?:only\s+)?(?:public\.)?\"?{table}\"?(?![\w.])",
        re.IGNORECASE,
    )


def _strings(tree: ast.AST) -> Iterator[tuple[int, str]]:
    """Every string literal, f-strings with their holes as ``{}`` (adjacent literals are one node)."""
    parts = {id(v) for node in ast.walk(tree) if isinstance(node, ast.JoinedStr) for v in node.values}
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in parts:
            yield node.lineno, node.value
        elif isinstance(node, ast.JoinedStr):
            text = "".join(v.value if isinstance(v, ast.Constant) else "{}" for v in node.values)
            yield node.lineno, text


def _sources() -> Iterator[tuple[Path, ast.Module]]:
    for path in sorted(SERVICES_DIR.rglob("*.py")):
        yield path, ast.parse(path.read_text(), filename=str(path))


def table_writes_outside_owner(sources: list[tuple[Path, ast.Module]]) -> list[str]:
    found = []
    for table, owner in TABLE_OWNERS.items():
        pattern = _writes(table)
        for path, tree in sources:
            rel = path.relative_to(SERVICES_DIR).as_posix()
            if rel == owner or rel.startswith(owner + "/"):
                continue
            for line, text in _strings(tree):
                if pattern.search(text):
                    found.append(f"services/{rel}:{line} writes {table} (owner: services/{owner})")
    return found


def _imported_packages(tree: ast.AST) -> Iterator[tuple[int, str]]:
    """The ``services.<package>`` each import names (function-level imports included)."""
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
            if node.module == "services":  # from services import ingest
                names = [f"services.{alias.name}" for alias in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "services" and len(parts) > 1:
                yield node.lineno, parts[1]


def forbidden_imports(sources: list[tuple[Path, ast.Module]]) -> list[str]:
    found = []
    for path, tree in sources:
        parts = path.relative_to(SERVICES_DIR).parts
        if len(parts) < 2:
            continue  # services/__init__.py
        package = parts[0]
        if package in TOOLS:
            continue
        for line, target in _imported_packages(tree):
            if package == "kernel" and target != "kernel":
                found.append(f"services/{'/'.join(parts)}:{line}: the kernel imports {target}")
                continue
            if target == package or target in LIBRARIES:
                if package in LIBRARIES and target not in LIBRARIES:
                    found.append(f"services/{'/'.join(parts)}:{line}: library {package} imports {target}")
                continue
            kind = "library" if package in LIBRARIES else "service"
            found.append(f"services/{'/'.join(parts)}:{line}: {kind} {package} imports service {target}")
    return found


@pytest.fixture(scope="module")
def sources() -> list[tuple[Path, ast.Module]]:
    return list(_sources())


def test_only_the_owner_writes_its_table(sources: list[tuple[Path, ast.Module]]) -> None:
    assert table_writes_outside_owner(sources) == []


def test_no_service_imports_another_service(sources: list[tuple[Path, ast.Module]]) -> None:
    assert forbidden_imports(sources) == []


def test_every_package_is_a_service_a_library_or_a_tool() -> None:
    packages = {p.name for p in SERVICES_DIR.iterdir() if (p / "__init__.py").exists()}
    assert packages >= LIBRARIES | TOOLS, "a listed package no longer exists: update the lists"
    # Everything else is a service: each one runs as `python -m services.<name>`.
    assert all((SERVICES_DIR / p / "__main__.py").exists() for p in packages - LIBRARIES - TOOLS)


@pytest.mark.parametrize(
    "sql",
    [
        "INSERT INTO customers (customer_id) VALUES (%s)",
        "update customers set plan = %s",
        "UPDATE  public.customers c SET x = 1",
        'DELETE FROM "customers" WHERE customer_id = %s',
        "TRUNCATE customers",
    ],
)
def test_the_table_check_finds_a_write_elsewhere(sql: str) -> None:
    tree = ast.parse(f"def f(conn, x):\n    conn.execute(f'{sql} -- {{x}}')\n")
    found = table_writes_outside_owner([(SERVICES_DIR / "growth" / "rogue.py", tree)])
    assert found == ["services/growth/rogue.py:2 writes customers (owner: services/customers)"]


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT plan FROM customers WHERE customer_id = %s FOR UPDATE",
        "UPDATE customer_changes SET x = 1",
        "INSERT INTO customers_archive VALUES (1)",
        "DELETE FROM growth_sticky_assignments USING customers",
    ],
)
def test_the_table_check_leaves_reads_and_other_tables_alone(sql: str) -> None:
    tree = ast.parse(f"q = {sql!r}\n")
    assert table_writes_outside_owner([(SERVICES_DIR / "growth" / "reader.py", tree)]) == []


def test_the_import_check_finds_a_service_importing_another() -> None:
    source = (
        "from services.ingest.avro_usage import long_bytes\n"
        "from services import growth\n"
        "import services.plans.model\n"
        "from services.kernel import auth\n"
        "def later():\n"
        "    import services.billing_reporter.ledger\n"
    )
    found = forbidden_imports([(SERVICES_DIR / "enrichment" / "x.py", ast.parse(source))])
    assert found == [
        "services/enrichment/x.py:1: service enrichment imports service ingest",
        "services/enrichment/x.py:2: service enrichment imports service growth",
        "services/enrichment/x.py:6: service enrichment imports service billing_reporter",
    ]
    library = forbidden_imports([(SERVICES_DIR / "plans" / "y.py", ast.parse("import services.ingest\n"))])
    assert library == ["services/plans/y.py:1: library plans imports service ingest"]
    tool = forbidden_imports([(SERVICES_DIR / "cli" / "z.py", ast.parse("import services.ingest\n"))])
    assert tool == []
    kernel = forbidden_imports([(SERVICES_DIR / "kernel" / "k.py", ast.parse("import services.plans\n"))])
    assert kernel == ["services/kernel/k.py:1: the kernel imports plans"]
