#!/usr/bin/env python3
"""Renders every Kustomize overlay and checks what it would deploy:

1. `kubectl kustomize` renders each overlay;
2. every built-in object validates (strict: unknown fields are errors) against the Kubernetes
   OpenAPI schemas of the oldest and newest versions we support (kubernetes-validate);
3. custom resources validate against their CRD schemas: ServiceMonitor and PrometheusRule from
   the Prometheus Operator CRDs (via the cloudcoil models generated from them), KafkaTopic from
   Strimzi's (transcribed in schemas/); any other kind fails;
4. aftercart's own deployment rules: probes on the admin port, resources, hardened security
   context, a grace period above the drain deadline read from the rendered ConfigMaps, a PDB, a
   NetworkPolicy, a Service and a ServiceMonitor per Deployment, no Secret in the repository,
   dashboards that parse and carry the sidecar label; KafkaTopics joined by partition share one
   partition count and changelogs are compacted;
5. checkov on the rendered overlays and on the Dockerfile (exceptions are annotated inline);
6. the dashboard JSON is what dashboards.py generates.
"""

import json
import re
import sys
import tempfile
from pathlib import Path

import jsonschema
import kubernetes_validate

from common import DASHBOARD_DIR, OVERLAYS, ROOT, Tally, need, render, run

KUBERNETES_VERSIONS = ["1.30.0", "1.37.0"]
# Topics a service joins by partition (it refuses to start, exit 78, when their counts differ),
# and the compacted changelogs (services/*/src/app.rs topic_specs).
SAME_PARTITIONS = [
    ["shopify.checkouts", "shopify.carts", "shopify.orders", "shopify.customers", "shopify.compliance",
     "aftercart.abandonments", "aftercart.abandonment-state"],
    ["aftercart.referrals-by-shop", "aftercart.referrals-state", "aftercart.referral-invites",
     "aftercart.referral-rewards"],
    ["aftercart.audiences-by-shop", "aftercart.audiences-state", "aftercart.audience-batches"],
]
CHANGELOGS = ["aftercart.abandonment-state", "aftercart.referrals-state", "aftercart.audiences-state"]
SCHEMAS = Path(__file__).resolve().parent / "schemas"


def strict(schema):
    """Forbids fields a schema does not name (the API server's strict field validation)."""
    if isinstance(schema, dict):
        if schema.get("type") == "object" and "properties" in schema:
            schema.setdefault("additionalProperties", False)
        for value in schema.values():
            strict(value)
    elif isinstance(schema, list):
        for value in schema:
            strict(value)
    return schema


def crd_validators():
    from cloudcoil.models.prometheus_operator import v1 as monitoring

    def model(cls):
        schema = strict(cls.model_json_schema(by_alias=True))
        return jsonschema.Draft202012Validator(schema)

    kafka_topic = json.loads((SCHEMAS / "kafkatopic-v1beta2.schema.json").read_text())
    return {
        ("monitoring.coreos.com/v1", "ServiceMonitor"): model(monitoring.ServiceMonitor),
        ("monitoring.coreos.com/v1", "PrometheusRule"): model(monitoring.PrometheusRule),
        ("kafka.strimzi.io/v1beta2", "KafkaTopic"): jsonschema.Draft202012Validator(kafka_topic),
    }


def duration_seconds(text):
    """`5s`, `1m30s`, `15s` as seconds (the subset of humantime the ConfigMaps use)."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
    parts = re.findall(r"(\d+)(ms|s|m|h|d)", text)
    if not parts or "".join(n + u for n, u in parts) != text.replace(" ", ""):
        raise ValueError(f"not a duration: {text!r}")
    return sum(int(n) * units[u] for n, u in parts)


def selects(selector, labels):
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def check_deployment(tally, where, deployment, by_kind):
    name = deployment["metadata"]["name"]
    pod = deployment["spec"]["template"]
    spec = pod["spec"]
    labels = pod["metadata"]["labels"]
    what = f"{where} Deployment {name}"
    pod_security = spec.get("securityContext", {})
    tally.check(pod_security.get("runAsNonRoot") is True, f"{what}: pod runAsNonRoot")
    tally.check(pod_security.get("seccompProfile", {}).get("type") == "RuntimeDefault",
                f"{what}: seccompProfile RuntimeDefault")
    tally.check(spec.get("automountServiceAccountToken") is False, f"{what}: no service account token")
    tally.check("podAntiAffinity" in spec.get("affinity", {}), f"{what}: pod anti-affinity")
    configmaps = {c["metadata"]["name"]: c.get("data", {}) for c in by_kind.get("ConfigMap", [])}
    for container in spec["containers"]:
        cwhat = f"{what} container {container['name']}"
        security = container.get("securityContext", {})
        tally.check(security.get("allowPrivilegeEscalation") is False, f"{cwhat}: no privilege escalation")
        tally.check(security.get("readOnlyRootFilesystem") is True, f"{cwhat}: read-only root filesystem")
        tally.check(security.get("capabilities", {}).get("drop") == ["ALL"], f"{cwhat}: drops all capabilities")
        resources = container.get("resources", {})
        for kind in ("requests", "limits"):
            for resource in ("cpu", "memory"):
                tally.check(resource in resources.get(kind, {}), f"{cwhat}: {kind}.{resource}")
        for probe in ("livenessProbe", "readinessProbe"):
            port = container.get(probe, {}).get("httpGet", {}).get("port")
            tally.check(port == "admin", f"{cwhat}: {probe} on the admin port")
        tally.check(container.get("readinessProbe", {}).get("httpGet", {}).get("path") == "/readyz",
                    f"{cwhat}: readiness is /readyz")
        # The environment the container gets from its ConfigMaps (later ones win, as in envFrom).
        env = {}
        for source in container.get("envFrom", []):
            ref = source.get("configMapRef", {}).get("name")
            tally.check(ref in configmaps, f"{cwhat}: ConfigMap {ref} is rendered")
            env.update(configmaps.get(ref, {}))
        for variable in container.get("env", []):
            secretish = re.search(r"SECRET|TOKEN|PASSWORD", variable["name"]) and not variable["name"].endswith("_FILE")
            tally.check(not (secretish and "value" in variable), f"{cwhat}: {variable['name']} is not a literal secret")
        drain = duration_seconds(env.get("AFTERCART_DRAIN_DELAY", "0s"))
        shutdown = duration_seconds(env.get("AFTERCART_SHUTDOWN_TIMEOUT", "15s"))
        grace = spec.get("terminationGracePeriodSeconds", 30)
        tally.check(grace > drain + shutdown + 1,
                    f"{cwhat}: terminationGracePeriodSeconds {grace} > drain {drain}s + shutdown {shutdown}s + 1s")
    for kind in ("PodDisruptionBudget", "NetworkPolicy", "Service"):
        matches = [o for o in by_kind.get(kind, [])
                   if selects(o["spec"].get("podSelector") or {"matchLabels": o["spec"].get("selector", {})}
                              if kind != "PodDisruptionBudget" else o["spec"]["selector"], labels)]
        tally.check(bool(matches), f"{what}: a {kind} selects its pods")
    services = [s for s in by_kind.get("Service", []) if selects({"matchLabels": s["spec"]["selector"]}, labels)]
    for service in services:
        tally.check(any(p["name"] == "admin" for p in service["spec"]["ports"]), f"{what}: Service exposes admin")
        monitors = [m for m in by_kind.get("ServiceMonitor", [])
                    if selects(m["spec"]["selector"], service["metadata"]["labels"])]
        tally.check(bool(monitors), f"{what}: a ServiceMonitor scrapes Service {service['metadata']['name']}")


def main():
    tally = Tally("manifests")
    need("kubectl")
    validators = crd_validators()
    rendered = {}
    objects = 0
    for overlay in OVERLAYS:
        try:
            docs, text = render(overlay)
        except RuntimeError as error:
            tally.check(False, str(error))
            continue
        tally.check(True, f"render {overlay}")
        rendered[overlay] = text
        by_kind = {}
        for doc in docs:
            by_kind.setdefault(doc["kind"], []).append(doc)
        for doc in docs:
            objects += 1
            ident = f"{overlay} {doc['kind']} {doc['metadata'].get('name')}"
            crd = validators.get((doc["apiVersion"], doc["kind"]))
            if crd:
                error = jsonschema.exceptions.best_match(crd.iter_errors(doc))
                tally.check(error is None, f"{ident}: CRD schema: {error and '/'.join(map(str, error.path))}: "
                                           f"{error and error.message[:300]}")
                continue
            for version in KUBERNETES_VERSIONS:
                try:
                    kubernetes_validate.validate(doc, version, strict=True)
                    tally.check(True, ident)
                except kubernetes_validate.SchemaNotFoundError:
                    tally.check(False, f"{ident}: no schema for {doc['apiVersion']} {doc['kind']} (unknown kind)")
                    break
                except kubernetes_validate.ValidationError as error:
                    tally.check(False, f"{ident}: Kubernetes {version}: {error.message} at {list(error.path)}")
        tally.check("Secret" not in by_kind, f"{overlay}: no Secret object is rendered (secrets are created out of band)")
        for deployment in by_kind.get("Deployment", []):
            check_deployment(tally, overlay, deployment, by_kind)
        topics = {t["spec"]["topicName"]: t["spec"] for t in by_kind.get("KafkaTopic", [])}
        if topics:
            for group in SAME_PARTITIONS:
                counts = {name: topics.get(name, {}).get("partitions") for name in group}
                tally.check(None not in counts.values() and len(set(counts.values())) == 1,
                            f"{overlay}: KafkaTopics joined by partition share one count: {counts}")
            for name in CHANGELOGS:
                policy = topics.get(name, {}).get("config", {}).get("cleanup.policy")
                tally.check(policy == "compact", f"{overlay}: KafkaTopic {name} is compacted ({policy})")
        for job in by_kind.get("Job", []):
            labels = job["spec"]["template"]["metadata"]["labels"]
            tally.check(any(selects(p["spec"]["podSelector"], labels) for p in by_kind.get("NetworkPolicy", [])),
                        f"{overlay} Job {job['metadata']['name']}: a NetworkPolicy selects its pods")
        for configmap in by_kind.get("ConfigMap", []):
            if configmap["metadata"].get("labels", {}).get("grafana_dashboard") == "1":
                for key, value in configmap["data"].items():
                    try:
                        dashboard = json.loads(value)
                        tally.check(bool(dashboard.get("uid")) and dashboard.get("panels"),
                                    f"{overlay} dashboard {key}: uid and panels")
                    except ValueError as error:
                        tally.check(False, f"{overlay} dashboard {key}: {error}")
        dashboards = [c for c in by_kind.get("ConfigMap", []) if c["metadata"].get("labels", {}).get("grafana_dashboard")]
        tally.check(len(dashboards) == len(list(DASHBOARD_DIR.glob("*.json"))), f"{overlay}: dashboard ConfigMaps carry grafana_dashboard=1")

    # checkov: the rendered overlays, then the Dockerfile. Exceptions live next to what they
    # excuse (checkov.io/skip annotations, checkov:skip comments), each with its reason.
    checkov = need("checkov")
    with tempfile.TemporaryDirectory() as directory:
        for overlay, text in rendered.items():
            (Path(directory) / f"{overlay}.yaml").write_text(text)
        for argv, what in (
            ([checkov, "-d", directory, "--framework", "kubernetes"], "rendered overlays"),
            ([checkov, "-f", str(ROOT / "Dockerfile"), "--framework", "dockerfile"], "Dockerfile"),
        ):
            result = run(argv + ["--skip-download", "--compact", "--quiet", "-o", "json"])
            try:
                report = json.loads(result.stdout)
                reports = report if isinstance(report, list) else [report]
                summary = {k: sum(r["summary"][k] for r in reports) for k in ("passed", "failed", "skipped")}
                failures = [f"{c['check_id']} {c['resource']}" for r in reports for c in r["results"]["failed_checks"]]
            except (ValueError, KeyError, TypeError):
                # No findings at all prints a bare summary instead of JSON.
                summary, failures = {"passed": 0, "failed": 0, "skipped": 0}, []
                tally.check(result.returncode == 0, f"checkov {what}: {result.stdout[-500:]} {result.stderr[-500:]}")
            tally.check(not failures and result.returncode == 0, f"checkov {what}: {failures}")
            print(f"checkov {what}: {summary['passed']} passed, {summary['failed']} failed, "
                  f"{summary['skipped']} skipped (justified inline)")

    generated = run([sys.executable, str(DASHBOARD_DIR / "dashboards.py"), "--check"])
    tally.check(generated.returncode == 0, f"dashboards are generated: {generated.stderr.strip()}")
    print(f"validated {objects} rendered objects ({len(OVERLAYS)} overlays) against Kubernetes "
          f"{' and '.join(KUBERNETES_VERSIONS)} or their CRD schemas")
    return tally.close()


if __name__ == "__main__":
    sys.exit(main())
