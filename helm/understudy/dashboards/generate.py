#!/usr/bin/env python3
"""Understudy's Grafana dashboards, written with Grafana's own typed builders (grafana-foundation-sdk, from
Grafana's schemas): `python3 helm/understudy/dashboards/generate.py` writes technical.json, business.json
and load-run.json beside this file, which the chart ships as ConfigMaps. Edit this file, not the JSON;
tests/observability.rs fails when the JSON is not what this writes (`--check`), or when Grafana's schema
models, decoding it, drop or change any of it.

- technical: Prometheus (`$datasource`), the service's own metrics.
- business: SQL over the store (`$store`, Grafana's Postgres data source), with batch, tenant and time.
- load-run: SQL over the store for one load run (`$run`).
"""

import json
import pathlib
import sys

from grafana_foundation_sdk.builders import dashboard, heatmap, prometheus, stat, table, timeseries
from grafana_foundation_sdk.cog import variants as cogvariants
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import DataSourceRef, VariableRefresh

HERE = pathlib.Path(__file__).parent
PROMETHEUS = DataSourceRef(type_val="prometheus", uid="${datasource}")
STORE = DataSourceRef(type_val="grafana-postgresql-datasource", uid="${store}")
# Statuses that end a message badly, as the store has them.
FAILED = "('BOUNCE', 'REJECT', 'COMPLAINT', 'UNDELIVERED', 'FAILED')"


# --- Prometheus -------------------------------------------------------------------------------------------

def prom(expr, legend="", fmt=None):
    q = prometheus.Dataquery().expr(expr).legend_format(legend or "__auto").datasource(PROMETHEUS)
    if fmt:
        q = q.format(fmt)
    return q


def sel(extra=""):
    """The label selector every technical query carries: the chosen instances."""
    return '{instance=~"$instance"' + (", " + extra if extra else "") + "}"


def rate(metric, by, extra=""):
    return f"sum by ({by}) (rate({metric}{sel(extra)}[$__rate_interval]))"


def quantile(q, metric, by):
    return f"histogram_quantile({q}, sum by ({by}, le) (rate({metric}_bucket{sel()}[$__rate_interval])))"


def series(title, unit, *targets, description="", span=12, stacked=False):
    p = timeseries.Panel().title(title).unit(unit).span(span).height(8).datasource(PROMETHEUS)
    if description:
        p = p.description(description)
    for i, t in enumerate(targets):
        p = p.with_target(t.ref_id(chr(ord("A") + i)))
    if stacked:
        p = p.fill_opacity(30)
    return p


def technical():
    d = (
        dashboard.Dashboard("Understudy: technical")
        .uid("understudy-technical")
        .tags(["understudy"])
        .description("Understudy's service: messages in, acks out, lag, lifecycles, the store, the front doors.")
        .refresh("30s")
        .time("now-1h", "now")
        .with_variable(dashboard.DatasourceVariable("datasource").label("Prometheus").type("prometheus"))
        .with_variable(
            dashboard.QueryVariable("instance")
            .label("Instance")
            .datasource(PROMETHEUS)
            .query("label_values(understudy_lifecycles_in_flight, instance)")
            .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
            .multi(True)
            .include_all(True)
            .all_value(".*")
        )
    )
    d = d.with_row(dashboard.Row("Messages and acks"))
    d = d.with_panel(series(
        "Outbound messages in, by channel", "reqps",
        prom(rate("understudy_messages_consumed_total", "channel"), "{{channel}}"),
        description="Outbound messages consumed from Kafka and decoded, per second.",
    ))
    d = d.with_panel(series(
        "Acks out, by channel and status", "reqps",
        prom(rate("understudy_events_emitted_total", "channel, status"), "{{channel}} {{status}}"),
        description="Ack events delivered to the ack topic, per second.",
        stacked=True,
    ))
    d = d.with_panel(
        heatmap.Panel().title("Emission lag").span(12).height(8).datasource(PROMETHEUS)
        .description("Emitted minus scheduled time of every ack: how far Understudy runs behind its scenario.")
        .with_target(prom("sum by (le) (rate(understudy_emission_lag_seconds_bucket" + sel() + "[$__rate_interval]))",
                          "{{le}}", "heatmap").ref_id("A"))
    )
    d = d.with_panel(series(
        "Emission lag p99, by channel", "s",
        prom(quantile(0.99, "understudy_emission_lag_seconds", "channel"), "{{channel}} p99"),
        prom(quantile(0.5, "understudy_emission_lag_seconds", "channel"), "{{channel}} p50"),
    ))
    d = d.with_panel(series(
        "Consumer lag, by partition", "short",
        prom("sum by (topic, partition) (understudy_consumer_lag_messages" + sel() + ")", "{{topic}}/{{partition}}"),
        description="High watermark minus consumed position: messages waiting on the outbound topic.",
    ))
    d = d.with_panel(series(
        "Lifecycles in flight and asleep", "short",
        prom("sum by (channel) (understudy_lifecycles_in_flight" + sel() + ")", "{{channel}} in flight"),
        prom("sum by (channel) (understudy_lifecycles_asleep" + sel() + ")", "{{channel}} asleep"),
        description="Lifecycles not finished; asleep: parked in their channel actor until shortly before their next step.",
    ))
    d = d.with_row(dashboard.Row("Store and stages"))
    d = d.with_panel(series(
        "Persister batch size", "short",
        prom(quantile(0.5, "understudy_persist_batch_rows", "instance"), "{{instance}} p50"),
        prom(quantile(0.99, "understudy_persist_batch_rows", "instance"), "{{instance}} p99"),
        span=8,
    ))
    d = d.with_panel(series(
        "Persister write latency", "s",
        prom(quantile(0.5, "understudy_persist_seconds", "instance"), "{{instance}} p50"),
        prom(quantile(0.99, "understudy_persist_seconds", "instance"), "{{instance}} p99"),
        prom(rate("understudy_persist_errors_total", "instance"), "{{instance}} failed writes/s"),
        span=8,
    ))
    d = d.with_panel(series(
        "Backpressure, by stage", "percentunit",
        prom("sum by (stage) (rate(understudy_backpressure_micros_total" + sel() + "[$__rate_interval])) / 1e6",
             "{{stage}}"),
        description="Share of time each data path waited on a full stage downstream.",
        span=8,
    ))
    d = d.with_panel(series(
        "Dead letters, by reason", "reqps",
        prom(rate("understudy_messages_dead_lettered_total", "reason"), "{{reason}}"),
        prom(rate("understudy_dead_letter_failed_total", "reason"), "{{reason}} (not taken by the DLQ)"),
        span=8,
    ))
    d = d.with_panel(series(
        "Scenario reloads", "short",
        prom("sum by (result) (increase(understudy_scenario_reloads_total" + sel() + "[$__rate_interval]))",
             "{{result}}"),
        span=8,
    ))
    d = d.with_panel(
        stat.Panel().title("Stages down").span(8).height(8).datasource(PROMETHEUS)
        .description("Pipeline stages that stopped (the service exits and is restarted); 0 when all run.")
        .with_target(prom("count(understudy_stage_up" + sel() + " == 0) or vector(0)", "down").ref_id("A"))
        .with_target(prom("sum(understudy_stage_up" + sel() + ")", "running").ref_id("B"))
    )
    d = d.with_row(dashboard.Row("Front doors and webhooks"))
    d = d.with_panel(series(
        "Front door requests, by vendor and status", "reqps",
        prom(rate("understudy_http_requests_total", "vendor, status"), "{{vendor}} {{status}}"),
        prom(rate("understudy_http_rate_limited_total", "vendor"), "{{vendor}} rate-limited"),
        stacked=True,
    ))
    d = d.with_panel(series(
        "Front door response time", "s",
        prom(quantile(0.5, "understudy_http_request_seconds", "vendor"), "{{vendor}} p50"),
        prom(quantile(0.99, "understudy_http_request_seconds", "vendor"), "{{vendor}} p99"),
    ))
    d = d.with_panel(series(
        "Webhook attempts, by vendor and outcome", "reqps",
        prom(rate("understudy_webhook_attempts_total", "vendor, outcome"), "{{vendor}} {{outcome}}"),
        prom(rate("understudy_webhook_retries_total", "vendor"), "{{vendor}} retried"),
        stacked=True,
    ))
    d = d.with_panel(series(
        "Webhook latency", "s",
        prom(quantile(0.5, "understudy_webhook_seconds", "vendor"), "{{vendor}} p50"),
        prom(quantile(0.99, "understudy_webhook_seconds", "vendor"), "{{vendor}} p99"),
    ))
    return d


# --- SQL over the store ------------------------------------------------------------------------------------

class Sql(cogvariants.Dataquery):
    """A query of Grafana's Postgres data source (the SDK has no builder for it): raw SQL in code mode."""

    def __init__(self, ref_id, raw_sql, fmt):
        self.ref_id, self.raw_sql, self.fmt = ref_id, raw_sql, fmt

    def to_json(self):
        return {"refId": self.ref_id, "datasource": STORE.to_json(), "editorMode": "code", "rawQuery": True,
                "rawSql": self.raw_sql, "format": self.fmt}


class SqlBuilder:
    def __init__(self, raw_sql, fmt="table", ref_id="A"):
        self.query = Sql(ref_id, " ".join(raw_sql.split()), fmt)

    def build(self):
        return self.query


def sql_panel(kind, title, sql, fmt="table", unit=None, description="", span=12):
    p = kind.Panel().title(title).span(span).height(8).datasource(STORE).with_target(SqlBuilder(sql, fmt))
    if unit:
        p = p.unit(unit)
    if description:
        p = p.description(description)
    return p


def store_variable():
    return dashboard.DatasourceVariable("store").label("Store").type("grafana-postgresql-datasource")


def sql_variable(name, label, sql):
    return (
        dashboard.QueryVariable(name).label(label).datasource(STORE).query(" ".join(sql.split()))
        .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED).multi(True).include_all(True)
    )


# Messages and events of the chosen batches and tenants, in the dashboard's time range (the store keeps
# microseconds since the epoch).
def events_where(alias="e"):
    return (f"{alias}.batch_id IN ($batch) AND COALESCE({alias}.tenant_id, '-') IN ($tenant)"
            f" AND {alias}.emitted_at_us BETWEEN $__unixEpochFrom()::bigint * 1000000 AND $__unixEpochTo()::bigint * 1000000")


def messages_where(alias="m"):
    return (f"{alias}.batch_id IN ($batch) AND COALESCE({alias}.tenant_id, '-') IN ($tenant)"
            f" AND {alias}.received_at_us BETWEEN $__unixEpochFrom()::bigint * 1000000 AND $__unixEpochTo()::bigint * 1000000")


def business():
    in_range = "received_at_us BETWEEN $__unixEpochFrom()::bigint * 1000000 AND $__unixEpochTo()::bigint * 1000000"
    d = (
        dashboard.Dashboard("Understudy: business")
        .uid("understudy-business")
        .tags(["understudy"])
        .description("What the platform's messages came to, from the store: delivery, statuses, failures, batches.")
        .refresh("1m")
        .time("now-24h", "now")
        .with_variable(store_variable())
        .with_variable(sql_variable("batch", "Batch",
                                    f"SELECT DISTINCT batch_id FROM messages WHERE {in_range} ORDER BY 1"))
        .with_variable(sql_variable("tenant", "Tenant",
                                    f"SELECT DISTINCT COALESCE(tenant_id, '-') FROM messages WHERE {in_range} ORDER BY 1"))
    )
    d = d.with_panel(sql_panel(stat, "Delivery rate", f"""
        SELECT 100.0 * count(DISTINCT e.payload_id) FILTER (WHERE e.status = 'DELIVERY')
               / NULLIF((SELECT count(*) FROM messages m WHERE {messages_where()}), 0) AS "delivered"
        FROM events e WHERE {events_where()}""", unit="percent", span=6,
        description="Messages with a DELIVERY ack, of the messages received."))
    d = d.with_panel(sql_panel(stat, "Messages", f"""
        SELECT m.channel, count(*) AS messages FROM messages m WHERE {messages_where()}
        GROUP BY m.channel ORDER BY m.channel""", span=6))
    d = d.with_panel(sql_panel(stat, "Failed", f"""
        SELECT count(DISTINCT e.payload_id) AS "failed" FROM events e
        WHERE {events_where()} AND e.status IN {FAILED}""", span=6,
        description="Messages with a BOUNCE, REJECT, COMPLAINT, UNDELIVERED or FAILED ack."))
    d = d.with_panel(sql_panel(stat, "Webhooks not delivered", f"""
        SELECT count(*) AS "attempts" FROM webhook_attempts a
        WHERE a.outcome <> 'delivered'
          AND a.attempted_at_us BETWEEN $__unixEpochFrom()::bigint * 1000000 AND $__unixEpochTo()::bigint * 1000000""", span=6))
    d = d.with_panel(sql_panel(timeseries, "Statuses over time", f"""
        SELECT to_timestamp(floor(e.emitted_at_us / ($__interval_ms * 1000.0)) * $__interval_ms / 1000.0) AS time,
               e.status AS metric, count(*) AS value
        FROM events e WHERE {events_where()} GROUP BY 1, 2 ORDER BY 1""", fmt="time_series", span=24))
    d = d.with_panel(sql_panel(table, "Status distribution, by channel", f"""
        SELECT e.channel, e.status, count(*) AS events,
               round(100.0 * count(*) / sum(count(*)) OVER (PARTITION BY e.channel), 1) AS "share %"
        FROM events e WHERE {events_where()} GROUP BY 1, 2 ORDER BY 1, 3 DESC"""))
    d = d.with_panel(sql_panel(table, "Failures, by error code", f"""
        SELECT e.channel, e.status, COALESCE(e.error_code, '-') AS error_code,
               COALESCE(e.bounce_type, '-') AS bounce_type, min(e.error_reason) AS reason, count(*) AS events
        FROM events e WHERE {events_where()} AND e.status IN {FAILED}
        GROUP BY 1, 2, 3, 4 ORDER BY events DESC LIMIT 100"""))
    d = d.with_panel(sql_panel(table, "Failures, by tenant", f"""
        SELECT COALESCE(e.tenant_id, '-') AS tenant, e.channel,
               count(DISTINCT e.payload_id) FILTER (WHERE e.status IN {FAILED}) AS failed,
               count(DISTINCT e.payload_id) FILTER (WHERE e.status = 'DELIVERY') AS delivered
        FROM events e WHERE {events_where()} GROUP BY 1, 2 ORDER BY failed DESC"""))
    d = d.with_panel(sql_panel(table, "Batch health", f"""
        WITH msg AS (
            SELECT m.batch_id, count(*) AS messages, min(m.received_at_us) AS first_us
            FROM messages m WHERE {messages_where()} GROUP BY m.batch_id),
        ev AS (
            SELECT e.batch_id, max(e.emitted_at_us) AS last_us,
                   count(DISTINCT e.payload_id) FILTER (WHERE e.status = 'DELIVERY') AS delivered,
                   count(DISTINCT e.payload_id) FILTER (WHERE e.status IN {FAILED}) AS failed
            FROM events e WHERE e.batch_id IN ($batch) GROUP BY e.batch_id)
        SELECT msg.batch_id AS batch, msg.messages, COALESCE(ev.delivered, 0) AS delivered,
               COALESCE(ev.failed, 0) AS failed,
               msg.messages - COALESCE(ev.delivered, 0) - COALESCE(ev.failed, 0) AS open,
               round(100.0 * COALESCE(ev.delivered, 0) / msg.messages, 1) AS "delivered %",
               to_timestamp(msg.first_us / 1e6) AS first_received, to_timestamp(ev.last_us / 1e6) AS last_ack
        FROM msg LEFT JOIN ev USING (batch_id) ORDER BY msg.first_us DESC LIMIT 200""", span=24,
        description="Per batch: messages received, delivered, failed and still open (no final ack yet)."))
    d = d.with_panel(sql_panel(table, "Webhook deliveries, by vendor", """
        SELECT a.vendor, a.outcome, count(*) AS attempts, count(*) FILTER (WHERE a.attempt > 1) AS retries,
               count(*) FILTER (WHERE a.next_attempt_at_us IS NOT NULL) AS retry_due
        FROM webhook_attempts a
        WHERE a.attempted_at_us BETWEEN $__unixEpochFrom()::bigint * 1000000 AND $__unixEpochTo()::bigint * 1000000
        GROUP BY 1, 2 ORDER BY 1, 2""", span=24))
    return d


def load_run():
    this_run = "r.run_id = '$run'"
    d = (
        dashboard.Dashboard("Understudy: load run")
        .uid("understudy-load-run")
        .tags(["understudy"])
        .description("One load run (`understudy load`), from the store: target, sent and resolved, latency, lost and late.")
        .time("now-24h", "now")
        .with_variable(store_variable())
        .with_variable(
            dashboard.QueryVariable("run").label("Run").datasource(STORE)
            .query("SELECT run_id FROM runs GROUP BY run_id ORDER BY max(started_at_us) DESC")
            .refresh(VariableRefresh.ON_DASHBOARD_LOAD)
        )
    )
    totals = [
        ("Planned", "(r.results::jsonb ->> 'planned')::bigint"),
        ("Sent", "(SELECT sum(value::bigint) FROM jsonb_each_text(r.results::jsonb -> 'sent'))"),
        ("Resolved", "(r.results::jsonb ->> 'resolved')::bigint"),
        ("Lost", "(r.results::jsonb ->> 'lost')::bigint"),
        ("Late sends", "(r.results::jsonb ->> 'late')::bigint"),
    ]
    for title, value in totals:
        d = d.with_panel(sql_panel(stat, title, f"SELECT sum({value}) AS value FROM runs r WHERE {this_run}", span=4))
    d = d.with_panel(sql_panel(stat, "Generators", f"SELECT count(*) AS value FROM runs r WHERE {this_run}", span=4))
    d = d.with_panel(sql_panel(timeseries, "Target vs sent vs resolved", f"""
        SELECT to_timestamp(floor(r.started_at_us / 1e6) + s.n - 1) AS time,
               sum((s.v ->> 'target')::bigint) AS target, sum((s.v ->> 'sent')::bigint) AS sent,
               sum((s.v ->> 'resolved')::bigint) AS resolved, sum((s.v ->> 'late')::bigint) AS late
        FROM runs r, jsonb_array_elements(r.results::jsonb -> 'timeline') WITH ORDINALITY AS s(v, n)
        WHERE {this_run} GROUP BY 1 ORDER BY 1""", fmt="time_series", unit="short", span=24,
        description="Per second of the run: messages the profile called for, sent, and given their final outcome."))
    d = d.with_panel(sql_panel(table, "Latency, by status", """
        SELECT channel, status, count(*) AS events,
               round((percentile_cont(0.5) WITHIN GROUP (ORDER BY latency_us) / 1000)::numeric, 1) AS p50_ms,
               round((percentile_cont(0.9) WITHIN GROUP (ORDER BY latency_us) / 1000)::numeric, 1) AS p90_ms,
               round((percentile_cont(0.99) WITHIN GROUP (ORDER BY latency_us) / 1000)::numeric, 1) AS p99_ms,
               round(max(latency_us) / 1000.0, 1) AS max_ms
        FROM run_events WHERE run_id = '$run' AND latency_us IS NOT NULL GROUP BY 1, 2 ORDER BY 1, 2""", span=24,
        description="From each message's intended send time to the status's arrival."))
    d = d.with_panel(sql_panel(timeseries, "Latency p99 over the run, by status", """
        SELECT to_timestamp(floor(intended_at_us / 1e6)) AS time, status AS metric,
               percentile_cont(0.99) WITHIN GROUP (ORDER BY latency_us) / 1000 AS value
        FROM run_events WHERE run_id = '$run' AND latency_us IS NOT NULL GROUP BY 1, 2 ORDER BY 1""",
        fmt="time_series", unit="ms"))
    d = d.with_panel(sql_panel(timeseries, "Lost and not sent over the run", """
        SELECT to_timestamp(floor(intended_at_us / 1e6)) AS time, status AS metric, count(*) AS value
        FROM run_events WHERE run_id = '$run' AND status IN ('LOST', 'NOT_SENT') GROUP BY 1, 2 ORDER BY 1""",
        fmt="time_series", unit="short",
        description="Messages without a final outcome by the end of the wait, and those Kafka refused, by intended send time."))
    return d


def without_nulls(v):
    """The SDK writes unset fields as null (a panel's `options`, for one); Grafana wants them left out."""
    if isinstance(v, dict):
        return {k: without_nulls(x) for k, x in v.items() if x is not None}
    if isinstance(v, list):
        return [without_nulls(x) for x in v]
    return v


def render(builder):
    model = json.loads(json.dumps(builder.build(), cls=JSONEncoder))
    return json.dumps(without_nulls(model), indent=2, sort_keys=True) + "\n"


def schema_differences(data, path=""):
    """Where `data` (a dashboard's JSON) is not what Grafana's schema models make of it: the SDK's Dashboard
    model decodes it and encodes it again, and a field its schema does not have, or a panel or query of a
    kind it does not know, does not come back."""
    from grafana_foundation_sdk.models.dashboard import Dashboard
    back = without_nulls(json.loads(json.dumps(Dashboard.from_json(data), cls=JSONEncoder)))

    def walk(a, b, at):
        if type(a) is not type(b):
            return [f"{at}: {json.dumps(a)[:80]} comes back as {json.dumps(b)[:80]}"]
        if isinstance(a, dict):
            out = [f"{at}.{k}: not in Grafana's schema" for k in a if k not in b]
            return out + [d for k in a if k in b for d in walk(a[k], b[k], f"{at}.{k}")]
        if isinstance(a, list):
            if len(a) != len(b):
                return [f"{at}: {len(a)} items come back as {len(b)}"]
            return [d for i, (x, y) in enumerate(zip(a, b)) for d in walk(x, y, f"{at}[{i}]")]
        return [] if a == b else [f"{at}: {a!r} comes back as {b!r}"]

    return walk(data, back, path)


DASHBOARDS = {"technical.json": technical, "business.json": business, "load-run.json": load_run}

if __name__ == "__main__":
    check = "--check" in sys.argv
    stale = []
    for name, build in DASHBOARDS.items():
        text = render(build())
        path = HERE / name
        if check:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
            elif problems := schema_differences(json.loads(text), name):
                sys.exit("not Grafana's dashboard schema:\n" + "\n".join(problems))
        else:
            path.write_text(text)
            print(f"wrote {path}")
    if stale:
        sys.exit(f"stale: {', '.join(stale)}; run python3 {pathlib.Path(__file__).relative_to(pathlib.Path.cwd())}")
