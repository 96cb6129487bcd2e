#!/usr/bin/env python3
"""Renders two panels of the aftercart / Overview dashboard to docs/img/overview-panels.png, from
a real Prometheus scraping `aftercart dev` under about a minute of demo traffic, so a README
reader sees what ops will see. The queries are read from the dashboard JSON, not retyped.

Run with `make dashboard-png` (needs prometheus; matplotlib comes from tests/ops/requirements.txt).
"""

import shutil
import sys
import tempfile
import time
from datetime import datetime

import matplotlib

matplotlib.use("Agg")
import matplotlib.dates as mdates  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402

from common import ROOT, dashboards, panels, substitute, write_rule_file  # noqa: E402
from live import LiveStack  # noqa: E402

PANELS = [("aftercart-overview.json", "Webhooks/s by status"), ("aftercart-overview.json", "Answer latency")]
TRAFFIC_SECONDS = 75
OUTPUT = ROOT / "docs" / "img" / "overview-panels.png"


def main():
    workdir = tempfile.mkdtemp(prefix="aftercart-plot-")
    try:
        with LiveStack(workdir) as stack:
            stack.start_dev()
            stack.start_prometheus(write_rule_file(workdir))
            started = time.time()
            tick = 0
            while time.time() - started < TRAFFIC_SECONDS:
                stack.send("--demo")
                if tick % 4 == 0:
                    stack.send("--sample", "orders_paid", "--shopify-secrets", "not-the-secret", expect_ok=False)
                if 20 < time.time() - started < 40:  # a burst in the middle
                    for _ in range(3):
                        stack.send("--demo")
                tick += 1
                time.sleep(2)
            time.sleep(3)
            boards = dashboards()
            figure, axes = plt.subplots(1, len(PANELS), figsize=(13, 4.2), dpi=110)
            for axis, (board, title) in zip(axes, PANELS):
                panel = next(p for p in panels(boards[board]) if p.get("title") == title)
                unit = panel["fieldConfig"]["defaults"].get("unit")
                for target in panel["targets"]:
                    expr = substitute(target["expr"]).replace("[1m]", "[15s]")
                    data = stack.query_range(expr, seconds=TRAFFIC_SECONDS + 5, step=1)
                    for series in sorted(data["result"], key=lambda s: str(s["metric"])):
                        legend = target["legendFormat"]
                        for key, value in series["metric"].items():
                            legend = legend.replace("{{" + key + "}}", value)
                        xs = [datetime.fromtimestamp(float(t)) for t, _ in series["values"]]
                        ys = [float(v) * (1000 if unit == "s" else 1) for _, v in series["values"]]
                        axis.plot(xs, ys, label=legend or "value", linewidth=1.4)
                axis.set_title(f"aftercart / Overview: {title}", fontsize=10, loc="left")
                axis.set_ylabel({"reqps": "requests/s", "s": "milliseconds"}.get(unit, unit))
                axis.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M:%S"))
                axis.grid(alpha=0.3)
                axis.legend(fontsize=8, loc="upper left")
            figure.suptitle("aftercart dev stack, ~1 min of `aftercart send --demo` traffic "
                            "(Prometheus scraping every 1 s, rate over 15 s)", fontsize=10)
            figure.tight_layout()
            OUTPUT.parent.mkdir(parents=True, exist_ok=True)
            figure.savefig(OUTPUT)
            print(f"wrote {OUTPUT}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
