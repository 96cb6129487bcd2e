"""Checks compose.yaml without a Docker engine: valid against the Compose Specification's JSON
schema (tests/ops/schemas/compose-spec.json, vendored from the docker-compose 1.29.2 wheel,
compose/config/compose_spec.json, Apache-2.0), every bind-mounted path present, every
AFTERCART_* variable a current setting of the configuration reference, every aftercart service's
command and environment accepted by the binary (AFTERCART_BIN, as tests/ops/live.py), and
compose/'s generated Prometheus files up to date (tests/ops/local_prometheus.py --write-compose)."""

import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time

import jsonschema
import yaml

from common import ROOT, Tally, free_port
from local_prometheus import COMPOSE_DIR, compose_files

COMPOSE = ROOT / "compose.yaml"
SCHEMA = ROOT / "tests" / "ops" / "schemas" / "compose-spec.json"
REFERENCE = ROOT / "docs" / "reference" / "configuration.md"


def current_settings():
    """Variables of the reference's main table (the deprecated names come after it)."""
    text = REFERENCE.read_text().split("## Deprecated names")[0]
    return set(re.findall(r"^\| `(AFTERCART_[A-Z0-9_]+)` \|", text, re.M))


def binary():
    path = os.path.abspath(os.environ.get("AFTERCART_BIN") or str(ROOT / "target" / "release" / "aftercart"))
    if not os.path.exists(path):
        sys.exit(f"{path} not found: build it first (make build) or set AFTERCART_BIN")
    return path


def starts(bin_path, command, environment, scratch):
    """Runs one compose service as the image would (its command, only its environment), with
    its addresses on free local ports and its directories in `scratch`. It starts when its admin
    port answers (the process binds it once the configuration is valid); returns None then, else
    why not (an exit, e.g. 64 with the problems). The broker need not exist: it is not reached
    before the admin port is up."""
    env = {"PATH": os.environ["PATH"], "HOME": scratch}
    for name, value in environment.items():
        value = str(value)
        if value.startswith("/var/lib/aftercart/"):
            value = os.path.join(scratch, value.removeprefix("/var/lib/aftercart/"))
        env[name] = value
    admin = free_port()
    env["AFTERCART_ADMIN_LISTEN"] = f"127.0.0.1:{admin}"
    if "AFTERCART_INGRESS_LISTEN" in env:
        env["AFTERCART_INGRESS_LISTEN"] = f"127.0.0.1:{free_port()}"
    process = subprocess.Popen([bin_path, *command], env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if process.poll() is not None:
                return f"exited {process.returncode}: {process.stderr.read().strip()}"
            try:
                socket.create_connection(("127.0.0.1", admin), timeout=0.5).close()
                return None
            except OSError:
                time.sleep(0.1)
        return "its admin port did not answer within 30 s"
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


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
    bin_path = binary()
    for name, service in compose["services"].items():
        if service.get("image") != "aftercart":
            continue
        with tempfile.TemporaryDirectory() as scratch:
            problem = starts(bin_path, service.get("command", ["ingress"]), service.get("environment", {}), scratch)
        tally.check(problem is None, f"{name}: `aftercart {' '.join(service.get('command', []))}` starts with its compose environment ({problem})")
    for file, text in compose_files().items():
        path = COMPOSE_DIR / file
        tally.check(path.exists() and path.read_text() == text,
                    f"compose/{file} is current (tests/ops/local_prometheus.py --write-compose)")
    return tally.close()


if __name__ == "__main__":
    sys.exit(main())
