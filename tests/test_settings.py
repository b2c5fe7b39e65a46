"""Thresholds: each rule's defaults, overridden from one settings file."""

from __future__ import annotations

import pytest

from expectations.rules import rule_modules
from expectations.settings import rule_params


def test_every_rule_declares_reasoned_params():
    modules = rule_modules()
    assert {m.RULE_ID for m in modules} == {f"T{i}" for i in range(1, 7)} | {f"F{i}" for i in range(1, 8)}
    for m in modules:
        for name, p in m.PARAMS.items():
            assert p.why.strip(), f"{m.__name__}.{name} has no reason"


def test_override_file(tmp_path):
    import expectations.rules.t1_evidence_count as t1

    path = tmp_path / "settings.toml"
    path.write_text("[rules.T1]\nfence_k = 4.5\n", encoding="utf-8")
    params = rule_params("T1", t1.PARAMS, str(path))
    assert params["fence_k"] == 4.5
    assert params["min_group"] == t1.PARAMS["min_group"].value
    typo = tmp_path / "typo.toml"
    typo.write_text("[rules.T1]\nfence = 4.5\n", encoding="utf-8")
    with pytest.raises(ValueError, match="unknown parameter"):
        rule_params("T1", t1.PARAMS, str(typo))
