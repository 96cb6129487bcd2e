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
   NetworkPolicy, a Service and a ServiceMonitor per Deployment or StatefulSet (a headless
   Service never scraped twice), an HPA naming a workload that exists; for the StatefulSet
   (the ingress and its spool): a headless governing Service, parallel pods, volumes kept on
   scale-down, the spool directory on a mounted claim template, AFTERCART_INGRESS_SPOOL_MAX_BYTES under
   the claim's size, an fsGroup so the non-root user can write it; no Secret in the repository,
   dashboards that parse and carry the sidecar label; KafkaTopics joined by partition share one
   partition count, changelogs are compacted, every topic has min.insync.replicas below its
   replicas and drops personal data within 30 days; KafkaUsers' ACLs name only rendered topics
   (never create/delete/alter) and groups, cover every topic the service reads (restore reads
   too) and writes, and each mounted user Secret has its KafkaUser;
5. the Jobs run by hand (k8s/jobs/: the spool drain) validate the same way, are selected by the
   baseline NetworkPolicy and mount the ingress's spool claim where the ingress mounts it;
6. checkov on the rendered overlays, the hand-run Jobs and the Dockerfile (exceptions are
   annotated inline);
7. the dashboard JSON is what dashboards.py generates.
"""

import json
import re
import sys
import tempfile
from pathlib import Path

import jsonschema
import kubernetes_validate
import yaml

from common import DASHBOARD_DIR, K8S, OVERLAYS, ROOT, Tally, need, render, run

KUBERNETES_VERSIONS = ["1.30.0", "1.37.0"]
# Topics a service joins by partition (it refuses to start, exit 78, when their counts differ),
# and the compacted changelogs (services/*/src/app.rs topic_specs).
SAME_PARTITIONS = [
    ["shopify.checkouts", "shopify.carts", "shopify.orders", "shopify.fulfillments", "shopify.customers",
     "shopify.compliance", "aftercart.abandonments", "aftercart.abandonment-state", "aftercart.data_requests"],
    ["aftercart.referrals-by-shop", "aftercart.referrals-state", "aftercart.referral-invites",
     "aftercart.referral-rewards", "aftercart.data_requests"],
    ["aftercart.audiences-by-shop", "aftercart.audiences-state", "aftercart.audience-batches",
     "aftercart.data_requests"],
    ["aftercart.nudges-by-shop", "aftercart.nudges-state", "aftercart.nudges", "aftercart.data_requests"],
    ["aftercart.journey-by-shop", "aftercart.journey-state", "aftercart.touchpoints", "aftercart.kpis",
     "aftercart.data_requests"],
]
CHANGELOGS = ["aftercart.abandonment-state", "aftercart.referrals-state", "aftercart.audiences-state",
              "aftercart.nudges-state", "aftercart.journey-state"]
# What each service's Kafka user must be allowed on its topics with the default names
# (services/*/src/app.rs topic_specs and consumer.rs): read includes restore reads (the
# abandonment service reads its own events back after a crash, the others their outputs).
RAW = ["shopify.checkouts", "shopify.carts", "shopify.orders", "shopify.fulfillments", "shopify.customers",
       "shopify.compliance"]
USER_NEEDS = {
    "aftercart-kafka-ingress": {"Write": RAW + ["shopify.other", "shopify.quarantine"]},
    "aftercart-kafka-abandonment": {
        "Read": RAW + ["aftercart.abandonments", "aftercart.abandonment-state", "aftercart.data_requests"],
        "Write": ["aftercart.abandonments", "aftercart.abandonment-state", "aftercart.abandonment-dead-letter",
                  "aftercart.data_requests"],
    },
    "aftercart-kafka-referrals": {
        "Read": ["shopify.orders", "shopify.customers", "shopify.compliance", "aftercart.referrals-by-shop",
                 "aftercart.referrals-state", "aftercart.referral-invites", "aftercart.referral-rewards",
                 "aftercart.data_requests"],
        "Write": ["aftercart.referrals-by-shop", "aftercart.referrals-state", "aftercart.referral-invites",
                  "aftercart.referral-rewards", "aftercart.referrals-dead-letter", "aftercart.data_requests"],
    },
    "aftercart-kafka-journey": {
        "Read": ["shopify.checkouts", "shopify.orders", "shopify.fulfillments", "shopify.customers",
                 "shopify.compliance", "aftercart.abandonments", "aftercart.referral-invites",
                 "aftercart.referral-rewards", "aftercart.journey-by-shop", "aftercart.journey-state",
                 "aftercart.touchpoints", "aftercart.kpis", "aftercart.data_requests"],
        "Write": ["aftercart.journey-by-shop", "aftercart.journey-state", "aftercart.touchpoints",
                  "aftercart.kpis", "aftercart.journey-dead-letter", "aftercart.data_requests"],
    },
    "aftercart-kafka-audiences": {
        "Read": ["shopify.orders", "shopify.customers", "shopify.compliance", "aftercart.abandonments",
                 "aftercart.audiences-by-shop", "aftercart.audiences-state", "aftercart.audience-batches",
                 "aftercart.data_requests"],
        "Write": ["aftercart.audiences-by-shop", "aftercart.audiences-state", "aftercart.audience-batches",
                  "aftercart.audiences-dead-letter", "aftercart.data_requests"],
    },
    "aftercart-kafka-nudges": {
        "Read": ["shopify.checkouts", "shopify.orders", "shopify.customers", "shopify.compliance",
                 "aftercart.abandonments", "aftercart.nudges-by-shop", "aftercart.nudges-state",
                 "aftercart.nudges", "aftercart.data_requests"],
        "Write": ["aftercart.nudges-by-shop", "aftercart.nudges-state", "aftercart.nudges",
                  "aftercart.nudges-dead-letter", "aftercart.data_requests"],
    },
}
SCHEMAS = Path(__file__).resolve().parent / "schemas"
# Shopify's redaction duty: personal data gone within 30 days of a request.
MAX_PERSONAL_DATA_MS = 30 * 86400 * 1000


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

    kafka_topic = json.loads((SCHEMAS / "kafkatopic-v1.schema.json").read_text())
    kafka_user = json.loads((SCHEMAS / "kafkauser-v1.schema.json").read_text())
    return {
        ("monitoring.coreos.com/v1", "ServiceMonitor"): model(monitoring.ServiceMonitor),
        ("monitoring.coreos.com/v1", "PrometheusRule"): model(monitoring.PrometheusRule),
        ("kafka.strimzi.io/v1", "KafkaTopic"): jsonschema.Draft202012Validator(kafka_topic),
        ("kafka.strimzi.io/v1", "KafkaUser"): jsonschema.Draft202012Validator(kafka_user),
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


def size_bytes(text):
    """`8GiB`, `1536MiB`, `10Gi`, `4MiB` as bytes (the quantities the manifests and ConfigMaps
    use; decimal units too)."""
    units = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
             "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
    match = re.fullmatch(r"(\d+)\s*([kMGT]i?)?B?", str(text).strip())
    if not match:
        raise ValueError(f"not a size: {text!r}")
    return int(match.group(1)) * units[match.group(2) or ""]


# Where the ingress keeps its spool when AFTERCART_INGRESS_SPOOL_DIR is unset (its default).
SPOOL_DIR_DEFAULT = "/var/lib/aftercart/spool"


def workload_env(container, configmaps):
    """The environment a container gets from its ConfigMaps (later ones win, as in envFrom),
    then its own `env` literals."""
    env = {}
    for source in container.get("envFrom", []):
        env.update(configmaps.get(source.get("configMapRef", {}).get("name"), {}))
    env.update({v["name"]: v["value"] for v in container.get("env", []) if "value" in v})
    return env


def check_statefulset(tally, what, statefulset, by_kind):
    """A StatefulSet holds per-pod state (the ingress spool): it must keep it, and the process
    must be able to write it."""
    spec = statefulset["spec"]
    pod = spec["template"]
    labels = pod["metadata"]["labels"]
    governing = [s for s in by_kind.get("Service", []) if s["metadata"]["name"] == spec.get("serviceName")]
    tally.check(bool(governing) and governing[0]["spec"].get("clusterIP") == "None"
                and selects({"matchLabels": governing[0]["spec"].get("selector", {})}, labels),
                f"{what}: serviceName {spec.get('serviceName')} is a headless Service selecting its pods")
    tally.check(spec.get("podManagementPolicy") == "Parallel", f"{what}: podManagementPolicy Parallel")
    retention = spec.get("persistentVolumeClaimRetentionPolicy", {})
    tally.check(retention.get("whenScaled") == "Retain" and retention.get("whenDeleted") == "Retain",
                f"{what}: claims retained when scaled down or deleted (a spool may hold acknowledged webhooks): {retention}")
    tally.check("replicas" not in spec or not any(
        h["spec"]["scaleTargetRef"]["name"] == statefulset["metadata"]["name"] for h in by_kind.get("HorizontalPodAutoscaler", [])),
        f"{what}: no replicas while an HPA owns the count")
    tally.check(pod["spec"].get("securityContext", {}).get("fsGroup") is not None,
                f"{what}: an fsGroup, so the non-root user can write its volumes")
    claims = {c["metadata"]["name"]: c for c in spec.get("volumeClaimTemplates", [])}
    configmaps = {c["metadata"]["name"]: c.get("data", {}) for c in by_kind.get("ConfigMap", [])}
    for container in pod["spec"]["containers"]:
        cwhat = f"{what} container {container['name']}"
        mounts = {m["mountPath"]: m for m in container.get("volumeMounts", [])}
        for name in claims:
            tally.check(any(m["name"] == name for m in mounts.values()), f"{cwhat}: mounts claim template {name}")
        env = workload_env(container, configmaps)
        if container.get("args", [None])[0] != "ingress":
            continue
        # Bodies not yet authenticated hold at most the body budget: it must fit well inside the
        # memory limit (half at most, the rest is the process's own) and hold one largest body
        # in the three quarters open to large bodies.
        budget = size_bytes(env.get("AFTERCART_INGRESS_BODY_BUDGET_BYTES", "128MiB"))
        largest = size_bytes(env.get("AFTERCART_INGRESS_MAX_BODY_BYTES", "4MiB"))
        memory = container.get("resources", {}).get("limits", {}).get("memory")
        tally.check(memory is not None and budget <= size_bytes(memory) // 2,
                    f"{cwhat}: AFTERCART_INGRESS_BODY_BUDGET_BYTES {budget} is at most half the "
                    f"memory limit {memory}")
        tally.check(budget // 4 * 3 >= largest,
                    f"{cwhat}: AFTERCART_INGRESS_BODY_BUDGET_BYTES {budget} holds one "
                    f"AFTERCART_INGRESS_MAX_BODY_BYTES {largest} body in its large share")
        spool = env.get("AFTERCART_INGRESS_SPOOL_DIR", SPOOL_DIR_DEFAULT)
        if spool == "off":
            continue
        after = duration_seconds(env.get("AFTERCART_INGRESS_SPOOL_AFTER", "1s"))
        deadline = duration_seconds(env.get("AFTERCART_INGRESS_PUBLISH_DEADLINE", "3s"))
        tally.check(after < deadline, f"{cwhat}: AFTERCART_INGRESS_SPOOL_AFTER {after}s < AFTERCART_INGRESS_PUBLISH_DEADLINE {deadline}s")
        on = [m for path, m in mounts.items() if spool == path or spool.startswith(path.rstrip("/") + "/")]
        claim = claims.get(on[0]["name"]) if on else None
        tally.check(claim is not None and not on[0].get("readOnly"),
                    f"{cwhat}: spool {spool} is on a writable volume from a claim template "
                    f"(the root filesystem is read-only, and an emptyDir dies with the node)")
        if claim:
            storage = size_bytes(claim["spec"]["resources"]["requests"]["storage"])
            limit = size_bytes(env.get("AFTERCART_INGRESS_SPOOL_MAX_BYTES", "1GiB"))
            tally.check(limit <= storage * 0.95,
                        f"{cwhat}: AFTERCART_INGRESS_SPOOL_MAX_BYTES {limit} leaves at least 5% of the "
                        f"{storage}-byte volume for filesystem overhead")
            tally.check(claim["spec"].get("accessModes") == ["ReadWriteOnce"],
                        f"{cwhat}: spool claim is ReadWriteOnce (one process per spool directory)")


def check_workload(tally, where, workload, by_kind):
    """A Deployment's or StatefulSet's pods, probes, security and neighbours."""
    name = workload["metadata"]["name"]
    pod = workload["spec"]["template"]
    spec = pod["spec"]
    labels = pod["metadata"]["labels"]
    what = f"{where} {workload['kind']} {name}"
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
        drain = duration_seconds(env.get("AFTERCART_INGRESS_DRAIN_DELAY", "0s"))
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
        monitors = [m for m in by_kind.get("ServiceMonitor", [])
                    if selects(m["spec"]["selector"], service["metadata"].get("labels", {}))]
        if service["spec"].get("clusterIP") == "None":
            # A StatefulSet's headless Service selects the same pods: scraping it too would
            # count every pod twice.
            tally.check(not monitors, f"{what}: headless Service {service['metadata']['name']} is not scraped")
            continue
        tally.check(any(p["name"] == "admin" for p in service["spec"]["ports"]), f"{what}: Service exposes admin")
        tally.check(bool(monitors), f"{what}: a ServiceMonitor scrapes Service {service['metadata']['name']}")
    if workload["kind"] == "StatefulSet":
        check_statefulset(tally, what, workload, by_kind)


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
        for workload in by_kind.get("Deployment", []) + by_kind.get("StatefulSet", []):
            check_workload(tally, overlay, workload, by_kind)
        workloads = {(w["kind"], w["metadata"]["name"]) for k in ("Deployment", "StatefulSet") for w in by_kind.get(k, [])}
        for hpa in by_kind.get("HorizontalPodAutoscaler", []):
            ref = hpa["spec"]["scaleTargetRef"]
            tally.check((ref["kind"], ref["name"]) in workloads,
                        f"{overlay} HPA {hpa['metadata']['name']}: scales {ref['kind']} {ref['name']}, which is rendered")
        topics = {t["spec"]["topicName"]: t["spec"] for t in by_kind.get("KafkaTopic", [])}
        if topics:
            for group in SAME_PARTITIONS:
                counts = {name: topics.get(name, {}).get("partitions") for name in group}
                tally.check(None not in counts.values() and len(set(counts.values())) == 1,
                            f"{overlay}: KafkaTopics joined by partition share one count: {counts}")
            for name in CHANGELOGS:
                policy = topics.get(name, {}).get("config", {}).get("cleanup.policy")
                tally.check(policy == "compact", f"{overlay}: KafkaTopic {name} is compacted ({policy})")
            for name, spec in topics.items():
                config = spec.get("config", {})
                replicas = spec.get("replicas", 1)
                isr = int(config.get("min.insync.replicas", 0))
                tally.check(1 <= isr <= max(1, replicas - 1),
                            f"{overlay}: KafkaTopic {name} min.insync.replicas {isr} is 1..replicas-1 ({replicas})")
                if config.get("cleanup.policy") == "compact":
                    lag = int(config.get("max.compaction.lag.ms", 0))
                    segment = int(config.get("segment.ms", 0))
                    tally.check(0 < lag and 0 < segment and lag + segment <= MAX_PERSONAL_DATA_MS,
                                f"{overlay}: changelog {name} removes a tombstoned value within 30 days "
                                f"(max.compaction.lag.ms {lag} + segment.ms {segment})")
                else:
                    retention = int(config.get("retention.ms", -1))
                    segment = int(config.get("segment.ms", 604800000))
                    tally.check(0 < retention and retention + segment <= MAX_PERSONAL_DATA_MS,
                                f"{overlay}: KafkaTopic {name} holds personal data 30 days at most "
                                f"(retention.ms {retention} + segment.ms {segment})")
        users = {u["metadata"]["name"]: u for u in by_kind.get("KafkaUser", [])}
        for name, needs in USER_NEEDS.items():
            if name not in users:
                continue
            granted = set()
            for acl in users[name]["spec"].get("authorization", {}).get("acls", []):
                if acl["resource"]["type"] == "topic":
                    granted |= {(op, acl["resource"]["name"]) for op in acl["operations"]}
            for operation, needed in needs.items():
                missing = sorted(t for t in needed if (operation, t) not in granted)
                tally.check(not missing, f"{overlay}: KafkaUser {name} may {operation} every topic it uses "
                                         f"(missing: {missing})")
        for name, user in users.items():
            for acl in user["spec"].get("authorization", {}).get("acls", []):
                resource = acl["resource"]
                if resource["type"] == "topic":
                    tally.check(resource.get("patternType") == "literal" and resource["name"] in topics,
                                f"{overlay}: KafkaUser {name} ACL names a rendered KafkaTopic ({resource['name']})")
                    tally.check(not set(acl["operations"]) & {"All", "Create", "Delete", "Alter", "AlterConfigs"},
                                f"{overlay}: KafkaUser {name} may not create, delete or alter {resource['name']}")
                else:
                    tally.check(resource["type"] == "group" and set(acl["operations"]) <= {"Describe", "Read"},
                                f"{overlay}: KafkaUser {name} ACL on {resource['type']} {resource.get('name')} is a group Read")
        for workload in by_kind.get("Deployment", []) + by_kind.get("StatefulSet", []):
            volumes = workload["spec"]["template"]["spec"].get("volumes", [])
            if users:
                # A component patch naming the wrong kind (Deployment for a StatefulSet) is
                # dropped without a word, leaving the service without its credentials.
                tally.check(any(v["name"] == "kafka-user" for v in volumes),
                            f"{overlay} {workload['kind']} {workload['metadata']['name']}: mounts its KafkaUser's Secret")
            for volume in volumes:
                if volume["name"] == "kafka-user":
                    secret = volume["secret"]["secretName"]
                    tally.check(secret in users, f"{overlay} {workload['metadata']['name']}: mounts the Secret of KafkaUser {secret}")
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

    # Jobs run by hand against the prod overlay's objects (k8s/jobs/).
    prod = {}
    for doc in render("prod")[0]:
        prod.setdefault(doc["kind"], []).append(doc)
    ingress = next(s for s in prod["StatefulSet"] if s["metadata"]["name"] == "aftercart-ingress")
    spool_mount = next(m["mountPath"] for m in ingress["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
                       if m["name"] == "spool")
    for path in sorted((K8S / "jobs").glob("*.yaml")):
        for doc in (d for d in yaml.safe_load_all(path.read_text()) if d):
            ident = f"k8s/jobs/{path.name} {doc['kind']} {doc['metadata']['name']}"
            objects += 1
            for version in KUBERNETES_VERSIONS:
                try:
                    kubernetes_validate.validate(doc, version, strict=True)
                    tally.check(True, ident)
                except (kubernetes_validate.SchemaNotFoundError, kubernetes_validate.ValidationError) as error:
                    tally.check(False, f"{ident}: Kubernetes {version}: {error}")
            pod = doc["spec"]["template"]
            tally.check(any(selects(n["spec"]["podSelector"], pod["metadata"]["labels"]) for n in prod["NetworkPolicy"]),
                        f"{ident}: a NetworkPolicy selects its pods")
            claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod["spec"].get("volumes", [])
                      if "persistentVolumeClaim" in v}
            for container in pod["spec"]["containers"]:
                for mount in container.get("volumeMounts", []):
                    claim = claims.get(mount["name"], "")
                    tally.check(claim.startswith(f"spool-{ingress['metadata']['name']}-") and mount["mountPath"] == spool_mount
                                and f"--ingress-spool-dir {spool_mount}" in " ".join(container["args"]),
                                f"{ident}: mounts an ingress spool claim ({claim}) at {spool_mount} and points --ingress-spool-dir there")
        rendered[f"jobs-{path.stem}"] = path.read_text()

    # checkov: the rendered overlays, the hand-run Jobs, then the Dockerfile. Exceptions live next to what they
    # excuse (checkov.io/skip annotations, checkov:skip comments), each with its reason.
    checkov = need("checkov")
    with tempfile.TemporaryDirectory() as directory:
        for overlay, text in rendered.items():
            (Path(directory) / f"{overlay}.yaml").write_text(text)
        for argv, what in (
            ([checkov, "-d", directory, "--framework", "kubernetes"], "rendered overlays and hand-run Jobs"),
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
