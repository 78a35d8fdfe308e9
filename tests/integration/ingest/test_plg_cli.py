"""The `plg` CLI against the real PostgreSQL: tenants, keys shown once, revocation."""

from __future__ import annotations

import json
import uuid
from typing import Any

import psycopg
import pytest

from services.cli.__main__ import main
from services.ingest import store
from services.kernel import apikeys


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_customers_and_keys_lifecycle(capsys: pytest.CaptureFixture[str], database_settings: Any) -> None:
    url = database_settings.url.get_secret_value()
    cid = f"cli-{uuid.uuid4().hex[:8]}"
    code, out, _ = run(
        capsys,
        "--database-url",
        url,
        "customers",
        "create",
        cid,
        "--plan",
        "pro",
        "--name",
        "Acme",
        "--anchor-day",
        "15",
        "--stripe-customer-id",
        "cus_123",
    )
    assert code == 0
    assert cid in out
    code, _, err = run(capsys, "--database-url", url, "customers", "create", cid, "--plan", "pro")
    assert code == 1
    assert "already exists" in err
    code, _, err = run(capsys, "--database-url", url, "customers", "create", f"{cid}-x", "--plan", "platinum")
    assert code == 1
    assert "unknown plan 'platinum'" in err

    code, out, err = run(capsys, "--database-url", url, "keys", "create", cid, "--description", "backend")
    assert code == 0
    token = out.strip()
    key_id, secret = apikeys.parse(token) or ("", "")
    assert key_id
    assert "cannot show it again" in err
    with psycopg.connect(url) as conn:
        row = store.lookup_key(conn, key_id)
        assert row is not None
        assert row.secret_sha256 == apikeys.hash_secret(secret)
        stored = conn.execute(
            "SELECT secret_sha256::text FROM api_keys WHERE key_id = %s", (key_id,)
        ).fetchone()
    assert secret not in str(stored)  # only the hash is stored

    code, out, _ = run(capsys, "--database-url", url, "--json", "customers", "show", cid)
    doc = json.loads(out)
    assert (doc["plan"], doc["billing_anchor_day"], doc["stripe_customer_id"]) == ("pro", 15, "cus_123")
    assert [k["key_id"] for k in doc["keys"]] == [key_id]
    assert token not in out

    code, out, _ = run(capsys, "--database-url", url, "keys", "revoke", key_id)
    assert code == 0
    code, out, _ = run(capsys, "--database-url", url, "--json", "keys", "list", cid)
    assert json.loads(out)[0]["revoked_at"] is not None
    code, _, err = run(capsys, "--database-url", url, "keys", "revoke", "nosuchkey")
    assert code == 1
    code, _, err = run(capsys, "--database-url", url, "keys", "create", "no-such-customer")
    assert code == 1
    assert "create it first" in err


def test_publishable_keys_and_operator_tokens(
    capsys: pytest.CaptureFixture[str], database_settings: Any
) -> None:
    url = database_settings.url.get_secret_value()
    cid = f"cli-{uuid.uuid4().hex[:8]}"
    assert run(capsys, "--database-url", url, "customers", "create", cid, "--plan", "pro")[0] == 0
    code, out, _ = run(
        capsys,
        "--database-url",
        url,
        "keys",
        "create",
        cid,
        "--publishable",
        "--origin",
        "https://app.example.com",
    )
    assert code == 0
    token = out.strip()
    assert token.startswith("plgpk_")
    code, out, _ = run(capsys, "--database-url", url, "--json", "keys", "list", cid)
    (listed,) = json.loads(out)
    assert (listed["kind"], listed["allowed_origins"]) == ("publishable", ["https://app.example.com"])
    code, _, err = run(capsys, "--database-url", url, "keys", "create", cid, "--origin", "https://x.example")
    assert code == 1
    assert "--publishable" in err
    code, _, err = run(capsys, "--database-url", url, "keys", "create", cid, "--publishable", "--origin", "x")
    assert code == 1

    name = f"ann-{uuid.uuid4().hex[:6]}@example.com"
    code, out, err = run(capsys, "--database-url", url, "operators", "create", name, "--role", "editor")
    assert code == 0
    op_token = out.strip()
    assert op_token.startswith("plgop_")
    assert "cannot show it again" in err
    code, _, err = run(capsys, "--database-url", url, "operators", "create", name, "--role", "admin")
    assert code == 1
    assert "already has an active token" in err
    with psycopg.connect(url) as conn:
        stored = conn.execute("SELECT secret_sha256 FROM operators WHERE name = %s", (name,)).fetchone()
    assert stored is not None
    assert bytes(stored[0]) == apikeys.hash_secret(op_token.split("_", 2)[2])  # hashed at rest
    code, out, _ = run(capsys, "--database-url", url, "--json", "operators", "list")
    assert any(o["name"] == name and o["role"] == "editor" for o in json.loads(out))
    code, out, _ = run(capsys, "--database-url", url, "--json", "operators", "revoke", name)
    assert code == 0
    assert json.loads(out)[0]["revoked_at"] is not None
    assert run(capsys, "--database-url", url, "operators", "revoke", name)[0] == 1


def test_a_password_on_the_command_line_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    # Credentials come from the environment only: a flag shows in ps and the shell history.
    for url in ("postgresql://plg:hunter2@127.0.0.1:5433/plg", "host=127.0.0.1 password=hunter2"):
        code, out, err = run(capsys, "--database-url", url, "customers", "show", "acme")
        assert code != 0
        assert "must not carry a password" in err
        assert "hunter2" not in out + err
