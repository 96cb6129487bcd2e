"""Shared helpers of the ops checks (tests/ops/*.py): paths, commands, rendered overlays, the
rule file inside the PrometheusRule, dashboard expressions, and a pass/fail tally."""

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
OVERLAYS = ["dev", "prod"]
PROMETHEUS_RULE = K8S / "components" / "prometheus-operator" / "prometheusrule.yaml"
DASHBOARD_DIR = K8S / "components" / "grafana-dashboards"
RUNBOOKS = ROOT / "docs" / "runbooks.md"


class Tally:
    """Counts checks and prints failures as they happen; `close` prints the summary line."""

    def __init__(self, name):
        self.name = name
        self.passed = 0
        self.failed = 0
        self.started = time.monotonic()

    def check(self, ok, what):
        if ok:
            self.passed += 1
        else:
            self.failed += 1
            print(f"FAIL {what}", flush=True)
        return ok

    def close(self):
        took = time.monotonic() - self.started
        print(f"{self.name}: {self.passed} passed, {self.failed} failed ({took:.1f} s)", flush=True)
        return 1 if self.failed else 0


def run(argv, **kwargs):
    """Runs a command, capturing output; never raises on a non-zero exit."""
    return subprocess.run(argv, capture_output=True, text=True, **kwargs)


def need(tool):
    """A tool from the ops virtualenv (kubectl, checkov) if it has one, else from PATH."""
    from shutil import which

    local = Path(sys.executable).with_name(tool)
    path = str(local) if local.exists() else which(tool)
    if not path:
        sys.exit(f"{tool} is not installed (make test-ops lists what to install; .ci/run does it)")
    return path


def render(overlay):
    """`kubectl kustomize` of one overlay, as a list of objects."""
    result = run([need("kubectl"), "kustomize", str(K8S / "overlays" / overlay)])
    if result.returncode != 0:
        raise RuntimeError(f"kubectl kustomize {overlay} failed:\n{result.stderr}")
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc], result.stdout


def rule_groups():
    """The `spec` of the PrometheusRule: a plain Prometheus rule file."""
    rule = yaml.safe_load(PROMETHEUS_RULE.read_text())
    return {"groups": rule["spec"]["groups"]}


def write_rule_file(directory):
    path = Path(directory) / "aftercart.rules.yml"
    path.write_text(yaml.safe_dump(rule_groups(), sort_keys=False))
    return path


def dashboards():
    """Every dashboard JSON, by file name."""
    return {p.name: json.loads(p.read_text()) for p in sorted(DASHBOARD_DIR.glob("*.json"))}


def panels(dashboard):
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


# Grafana's built-in variables and the dashboards' own, as the test stands them in.
GRAFANA_VARIABLES = {
    "$__rate_interval": "1m",
    "$__interval": "15s",
    "$__range": "10m",
    "${datasource}": "prometheus",
    "$namespace": ".*",
}


def substitute(expr):
    for name, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(name, value)
    return expr


METRIC = re.compile(r"\b(aftercart_[a-z0-9_]+)")
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def metric_names(expr):
    """aftercart_* metric names an expression reads (recording rules, `aftercart:*`, excluded)."""
    return set(METRIC.findall(expr))


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def github_anchor(heading):
    """The anchor GitHub gives a Markdown heading."""
    anchor = heading.strip().lower()
    anchor = re.sub(r"[^\w\- ]", "", anchor)
    return anchor.replace(" ", "-")


def runbook_anchors():
    return {
        github_anchor(line.lstrip("#"))
        for line in RUNBOOKS.read_text().splitlines()
        if line.startswith("#")
    }


def env_without_aftercart():
    """This process's environment minus AFTERCART_* (the tests choose every setting)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("AFTERCART_")}
