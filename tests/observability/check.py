"""Every query of every dashboard and alert, run against the real thing; run by tests/observability.rs.

Usage: python3 tests/observability/check.py PROMETHEUS_URL STORE_URL

- Each Prometheus expression of each dashboard panel (helm/understudy/dashboards/*.json) and template
  variable, with Grafana's variables put in as Grafana would, is run through Prometheus's HTTP API and
  must return series.
- Each alert of helm/understudy/alerts/understudy.rules.yaml: Prometheus loaded it and evaluates it
  without error, and its expression without the threshold (`… > 1`) returns series: the metrics it
  watches are there, with the labels it groups by.
- Each SQL query (Grafana's Postgres data source) runs against the store with `psql` and returns rows; the
  template variables' queries give the values the panels' queries are run with.

Prints `ok …` per query and `FAIL …` per failure; exits non-zero on any failure.
"""

import json
import os
import re
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CHART = os.path.join(ROOT, "helm", "understudy")
PROMETHEUS, STORE = sys.argv[1].rstrip("/"), sys.argv[2]
failures = []
checked = 0


def fail(msg):
    failures.append(msg)
    print(f"FAIL {msg}")


def ok(msg):
    global checked
    checked += 1
    print(f"ok   {msg}")


def api(path, **params):
    url = f"{PROMETHEUS}{path}?{urllib.parse.urlencode(params, doseq=True)}"
    with urllib.request.urlopen(url, timeout=30) as r:
        body = json.load(r)
    if body.get("status") != "success":
        raise RuntimeError(f"{path}: {body}")
    return body["data"]


def promql(expr):
    """Grafana's variables as Grafana puts them in: every instance, a rate window of a few scrapes."""
    return expr.replace("$instance", ".*").replace("$__rate_interval", "15s")


def series_of(expr):
    data = api("/api/v1/query", query=promql(expr))
    return data["result"]


def sql(query):
    out = subprocess.run(["psql", STORE, "-X", "-q", "-At", "-F", "\t", "-v", "ON_ERROR_STOP=1", "-c", query],
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(out.stderr.strip())
    return [line.split("\t") for line in out.stdout.splitlines() if line]


def quoted(values):
    return ",".join("'" + v.replace("'", "''") + "'" for v in values)


def sql_with(query, variables):
    now = int(time.time())
    query = query.replace("$__unixEpochFrom()", str(now - 3600)).replace("$__unixEpochTo()", str(now + 60))
    query = query.replace("$__interval_ms", "1000")
    for name, value in variables.items():
        query = query.replace(f"${name}", value)
    return query


def panels(dashboard):
    for p in dashboard.get("panels", []):
        yield p
        yield from p.get("panels", [])


def check_dashboard(path):
    d = json.load(open(path))
    name = os.path.basename(path)
    variables = {}
    for v in d.get("templating", {}).get("list", []):
        if v["type"] != "query":
            continue
        query = v["query"]
        try:
            if v["datasource"]["type"] == "prometheus":
                m = re.fullmatch(r"label_values\((\w+), *(\w+)\)", query)
                if not m:
                    raise RuntimeError(f"not label_values(metric, label): {query}")
                values = api(f"/api/v1/label/{m[2]}/values", **{"match[]": m[1]})
                if not values:
                    raise RuntimeError("no values")
            else:
                rows = sql_with(query, variables)
                values = [r[0] for r in sql(rows)]
                if not values:
                    raise RuntimeError("no rows")
                # Multi-value variables go into SQL quoted and comma-separated; a single value as it is.
                variables[v["name"]] = quoted(values) if v.get("multi") else values[0]
            ok(f"{name}: variable ${v['name']}: {len(values)} values")
        except Exception as e:
            fail(f"{name}: variable ${v['name']}: {e}")
    for p in panels(d):
        for t in p.get("targets", []):
            what = f"{name}: {p['title']} [{t.get('refId')}]"
            try:
                if "expr" in t:
                    result = series_of(t["expr"])
                    if not result:
                        raise RuntimeError(f"no series for {promql(t['expr'])}")
                    ok(f"{what}: {len(result)} series")
                else:
                    rows = sql(sql_with(t["rawSql"], variables))
                    if not rows:
                        raise RuntimeError(f"no rows for {sql_with(t['rawSql'], variables)}")
                    ok(f"{what}: {len(rows)} rows")
            except Exception as e:
                fail(f"{what}: {e}")


def without_threshold(expr):
    """`a > 1 and b > 0` → [`a`, `b`]: what the alert compares, which must exist whether it fires or not."""
    parts = re.split(r"\s+and\s+", expr)
    return [re.sub(r"\s*(>|<|==|!=|>=|<=)\s*[-+0-9.e]+\s*$", "", p) for p in parts]


def check_alerts():
    rules_file = yaml.safe_load(open(os.path.join(CHART, "alerts", "understudy.rules.yaml")))
    wanted = [r for g in rules_file["groups"] for r in g["rules"]]
    loaded = {r["name"]: r for g in api("/api/v1/rules")["groups"] for r in g["rules"]}
    for rule in wanted:
        what = f"alert {rule['alert']}"
        got = loaded.get(rule["alert"])
        if got is None:
            fail(f"{what}: not loaded by Prometheus")
            continue
        if got.get("health") != "ok" or got.get("lastError"):
            fail(f"{what}: health {got.get('health')!r}, {got.get('lastError')!r}")
            continue
        for part in without_threshold(rule["expr"]):
            try:
                result = series_of(part)
                if not result:
                    raise RuntimeError(f"no series for {part}")
                ok(f"{what}: {part}: {len(result)} series")
            except Exception as e:
                fail(f"{what}: {e}")


for f in sorted(os.listdir(os.path.join(CHART, "dashboards"))):
    if f.endswith(".json"):
        check_dashboard(os.path.join(CHART, "dashboards", f))
check_alerts()
print(f"{checked} queries returned data, {len(failures)} did not")
if failures:
    sys.exit(1)
