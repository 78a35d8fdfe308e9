"""Health's --check-config checks every file the service reads: the metric registry and the plans file."""

from __future__ import annotations


def test_check_config_checks_the_plans_file_health_reads_too(tmp_path, monkeypatch, capsys) -> None:
    from services.health_score.__main__ import main

    broken = tmp_path / "plans.yaml"
    broken.write_text("meters: [")
    monkeypatch.setenv("PLG_ENVIRONMENT", "local")
    monkeypatch.setenv("HEALTH_PLANS_PATH", str(broken))

    assert main(["--check-config"]) == 2
    assert "not valid YAML" in capsys.readouterr().err
    monkeypatch.delenv("HEALTH_PLANS_PATH")
    assert main(["--check-config"]) == 0
    assert "meters-and-plans" in capsys.readouterr().out
