"""compose.yaml is a valid Compose file with the production shape.

There is no Docker engine or compose plugin on CI; the file is checked
against the Compose Specification's JSON schema (tests/data/compose-spec.json,
from compose-spec/compose-spec, Apache-2.0) and for what poolq needs.
"""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import yaml

ROOT = Path(__file__).resolve().parents[2]


def load_compose() -> dict:
    return yaml.safe_load((ROOT / "compose.yaml").read_text())


def test_compose_file_matches_the_compose_spec():
    schema = json.loads((ROOT / "tests/data/compose-spec.json").read_text())
    jsonschema.Draft201909Validator(schema).validate(load_compose())


def test_compose_has_the_production_shape():
    services = load_compose()["services"]
    assert {"postgres", "redis", "migrate", "api", "worker-gpu0", "webhooks", "beat", "flower"} <= set(services)
    for name, service in services.items():
        for dependency in service.get("depends_on", {}):
            assert dependency in services, f"{name} depends on unknown {dependency}"
    devices = services["worker-gpu0"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"]
    assert "--gpu" in services["worker-gpu0"]["command"]
    assert services["api"]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert services["api"]["command"][:2] == ["poolq", "api"]
