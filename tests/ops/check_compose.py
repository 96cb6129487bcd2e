"""Checks compose.yaml without a Docker engine: valid against the Compose Specification's JSON
schema (tests/ops/schemas/compose-spec.json, vendored from the docker-compose 1.29.2 wheel,
compose/config/compose_spec.json, Apache-2.0), every bind-mounted path present, every
AFTERCART_* variable a current setting of the configuration reference, and compose/'s generated
Prometheus files up to date (tests/ops/local_prometheus.py --write-compose)."""

import json
import re
import sys

import jsonschema
import yaml

from common import ROOT, Tally
from local_prometheus import COMPOSE_DIR, compose_files

COMPOSE = ROOT / "compose.yaml"
SCHEMA = ROOT / "tests" / "ops" / "schemas" / "compose-spec.json"
REFERENCE = ROOT / "docs" / "reference" / "configuration.md"


def current_settings():
    """Variables of the reference's main table (the deprecated names come after it)."""
    text = REFERENCE.read_text().split("## Deprecated names")[0]
    return set(re.findall(r"^\| `(AFTERCART_[A-Z0-9_]+)` \|", text, re.M))


def main():
    tally = Tally("compose")
    compose = yaml.safe_load(COMPOSE.read_text())
    schema = json.loads(SCHEMA.read_text())
    # The vendored file names its draft by a URL jsonschema does not know: name it here.
    validator = jsonschema.Draft201909Validator(schema)
    errors = sorted(validator.iter_errors(compose), key=lambda e: list(e.absolute_path))
    for error in errors:
        tally.check(False, f"compose.yaml {'/'.join(map(str, error.absolute_path))}: {error.message}")
    tally.check(not errors, "compose.yaml is valid against the Compose Specification schema")

    settings = current_settings()
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                tally.check((ROOT / source).exists(), f"{name}: mounts {source}, which exists")
        for variable in service.get("environment", {}):
            if variable.startswith("AFTERCART_"):
                tally.check(variable in settings, f"{name}: {variable} is a current setting")
    for file, text in compose_files().items():
        path = COMPOSE_DIR / file
        tally.check(path.exists() and path.read_text() == text,
                    f"compose/{file} is current (tests/ops/local_prometheus.py --write-compose)")
    return tally.close()


if __name__ == "__main__":
    sys.exit(main())
