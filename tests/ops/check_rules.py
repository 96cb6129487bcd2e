#!/usr/bin/env python3
"""Checks aftercart's Prometheus rules with promtool and against the runbooks:

1. the PrometheusRule's `spec` is extracted as a plain rule file and passes `promtool check rules`;
2. every alert has severity, summary, description and a runbook_url whose anchor exists in
   docs/runbooks.md; descriptions are static text;
3. `promtool test rules` runs rules_test.yml, after copying each alert's static description and
   runbook_url into its expected alerts (the hand-written summaries test the templating);
4. every alert is unit-tested both firing and quiet.
"""

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from common import Tally, github_anchor, need, rule_groups, run, runbook_anchors, write_rule_file

HERE = Path(__file__).resolve().parent
MINUTES = {"s": 1 / 60, "m": 1, "h": 60, "d": 24 * 60, "w": 7 * 24 * 60}


def minutes(duration):
    """A Prometheus duration such as `8d3h` or `30m`, in minutes."""
    return sum(int(n) * MINUTES[unit] for n, unit in re.findall(r"(\d+)([smhdw])", duration))


def evaluation_interval(group):
    """How often promtool evaluates the rules for `group`: every minute, as Prometheus does,
    unless the group's series are sampled more coarsely. A week of hourly samples evaluated
    every minute is 11,700 evaluations of every rule where 780 (every 15 minutes) see exactly
    the same samples: the two week-long business groups were two thirds of the check's CPU.
    Capped at 15 minutes so every `for:` in the rules (30m and up for those alerts) still spans
    several evaluations."""
    return f"{min(max(int(minutes(group.get('interval', '1m'))), 1), 15)}m"


def split_groups(groups, parts):
    """The test groups in `parts` lists of about equal cost. promtool evaluates every rule at
    each evaluation interval up to a group's last eval_time, so that time over the interval is
    the group's cost."""
    def cost(group):
        cases = group.get("alert_rule_test", []) + group.get("promql_expr_test", [])
        last = max((minutes(case["eval_time"]) for case in cases), default=0)
        return last / minutes(evaluation_interval(group))

    chunks = [[] for _ in range(parts)]
    loads = [0.0] * parts
    for group in sorted(groups, key=cost, reverse=True):
        lightest = loads.index(min(loads))
        chunks[lightest].append(group)
        loads[lightest] += cost(group)
    return [chunk for chunk in chunks if chunk]


def test_rules(promtool, tests, directory):
    """`promtool test rules` on the groups split over one file per core, all at once: promtool
    runs the groups of a file one after another on one core, and each group starts from empty
    storage, so the split gives the same verdicts in a fraction of the time (the week-long
    business groups alone are minutes of CPU). Returns (passed, output of the failed files)."""
    processes = []
    by_interval = {}
    for group in tests["tests"]:
        by_interval.setdefault(evaluation_interval(group), []).append(group)
    for interval, groups in sorted(by_interval.items()):
        for index, chunk in enumerate(split_groups(groups, os.cpu_count() or 1)):
            test_file = Path(directory) / f"rules_test_{interval}_{index}.yml"
            file = tests | {"evaluation_interval": interval, "tests": chunk}
            test_file.write_text(yaml.safe_dump(file, sort_keys=False))
            processes.append(subprocess.Popen([promtool, "test", "rules", test_file.name], cwd=directory,
                                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                              text=True))
    failed = []
    for process in processes:
        output = process.communicate()[0]
        if process.returncode != 0:
            failed.append(output)
    return not failed, "".join(failed)


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
        passed, output = test_rules(promtool, tests, directory)
        tally.check(passed, f"promtool test rules:\n{output}")
    cases = sum(len(t.get("alert_rule_test", [])) + len(t.get("promql_expr_test", [])) for t in tests["tests"])
    print(f"promtool: {len(records)} recording rules and {len(alerts)} alerts checked; "
          f"{len(tests['tests'])} unit test groups, {cases} cases; every alert tested firing and quiet")
    return tally.close()


if __name__ == "__main__":
    sys.exit(main())
