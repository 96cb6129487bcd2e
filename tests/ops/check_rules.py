#!/usr/bin/env python3
"""Checks aftercart's Prometheus rules with promtool and against the runbooks:

1. the PrometheusRule's `spec` is extracted as a plain rule file and passes `promtool check rules`;
2. every alert has severity, summary, description and a runbook_url whose anchor exists in
   docs/runbooks.md; descriptions are static text;
3. `promtool test rules` runs rules_test.yml, after copying each alert's static description and
   runbook_url into its expected alerts (the hand-written summaries test the templating);
4. every alert is unit-tested both firing and quiet.
"""

import sys
import tempfile
from pathlib import Path

import yaml

from common import Tally, github_anchor, need, rule_groups, run, runbook_anchors, write_rule_file

HERE = Path(__file__).resolve().parent


def main():
    tally = Tally("rules")
    promtool = need("promtool")
    alerts = {r["alert"]: r for g in rule_groups()["groups"] for r in g["rules"] if "alert" in r}
    records = [r["record"] for g in rule_groups()["groups"] for r in g["rules"] if "record" in r]
    anchors = runbook_anchors()
    for name, rule in alerts.items():
        annotations = rule.get("annotations", {})
        tally.check(rule.get("labels", {}).get("severity") in ("warning", "critical"), f"{name}: severity")
        for key in ("summary", "description", "runbook_url"):
            tally.check(bool(annotations.get(key)), f"{name}: has a {key}")
        tally.check("{{" not in annotations.get("description", ""), f"{name}: description is static text")
        url = annotations.get("runbook_url", "")
        anchor = url.partition("#")[2]
        tally.check(url.startswith("https://github.com/aftercart/aftercart/blob/main/docs/runbooks.md#"),
                    f"{name}: runbook_url points into docs/runbooks.md")
        tally.check(anchor == github_anchor(name) and anchor in anchors,
                    f"{name}: docs/runbooks.md has a section '{name}' (anchor #{anchor})")

    tests = yaml.safe_load((HERE / "rules_test.yml").read_text())
    fires, quiet = set(), set()
    for test in tests["tests"]:
        for case in test.get("alert_rule_test", []):
            name = case["alertname"]
            rule = alerts.get(name)
            if not tally.check(rule is not None, f"rules_test.yml tests an unknown alert {name}"):
                continue
            (fires if case.get("exp_alerts") else quiet).add(name)
            for expected in case.get("exp_alerts") or []:
                annotations = expected.setdefault("exp_annotations", {})
                annotations["description"] = rule["annotations"]["description"]
                annotations["runbook_url"] = rule["annotations"]["runbook_url"]
    for name in alerts:
        tally.check(name in fires, f"{name}: no unit test where it fires")
        tally.check(name in quiet, f"{name}: no unit test where it stays quiet")

    with tempfile.TemporaryDirectory() as directory:
        rule_file = write_rule_file(directory)
        checked = run([promtool, "check", "rules", str(rule_file)])
        tally.check(checked.returncode == 0, f"promtool check rules:\n{checked.stdout}{checked.stderr}")
        test_file = Path(directory) / "rules_test.yml"
        test_file.write_text(yaml.safe_dump(tests, sort_keys=False))
        tested = run([promtool, "test", "rules", str(test_file)], cwd=directory)
        tally.check(tested.returncode == 0, f"promtool test rules:\n{tested.stdout}{tested.stderr}")
    cases = sum(len(t.get("alert_rule_test", [])) + len(t.get("promql_expr_test", [])) for t in tests["tests"])
    print(f"promtool: {len(records)} recording rules and {len(alerts)} alerts checked; "
          f"{len(tests['tests'])} unit test groups, {cases} cases; every alert tested firing and quiet")
    return tally.close()


if __name__ == "__main__":
    sys.exit(main())
