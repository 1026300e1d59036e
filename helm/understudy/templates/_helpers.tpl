{{- define "understudy.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "understudy.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "understudy.selectorLabels" -}}
app.kubernetes.io/name: {{ include "understudy.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "understudy.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "understudy.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "understudy.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "understudy.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The store is shared by every replica unless there is one replica and no URL: then SQLite in the pod. */}}
{{- define "understudy.sqlite" -}}
{{- if not (or .Values.store.url .Values.store.existingSecret .Values.existingConfigSecret (dig "store" "url" "" .Values.config)) -}}true{{- end -}}
{{- end -}}

{{/* Checks that stop a release that could not work, with the reason. */}}
{{- define "understudy.validate" -}}
{{- if not .Values.kafka.brokers -}}
{{- fail "kafka.brokers is required: the bootstrap servers of the Kafka that carries the platform's outbound topic (the embedded broker serves one process only)" -}}
{{- end -}}
{{- if and (include "understudy.sqlite" .) (gt (int .Values.replicaCount) 1) -}}
{{- fail "store.url or store.existingSecret is required when replicaCount > 1: replicas resume each other's lifecycles from the store, so they must share a Postgres database" -}}
{{- end -}}
{{- if and .Values.scenario.files (not (hasKey .Values.scenario.files .Values.scenario.file)) -}}
{{- fail (printf "scenario.file %q is not one of scenario.files (%s)" .Values.scenario.file (keys .Values.scenario.files | sortAlpha | join ", ")) -}}
{{- end -}}
{{- end -}}

{{/* The scenario file's path in the container. */}}
{{- define "understudy.scenarioPath" -}}
{{- if .Values.scenario.files -}}
scenarios/custom/{{ .Values.scenario.file }}
{{- else if hasPrefix "scenarios/" .Values.scenario.file -}}
{{ .Values.scenario.file }}
{{- else -}}
scenarios/{{ .Values.scenario.file }}
{{- end -}}
{{- end -}}

{{/* understudy.yaml: what the chart sets, with .Values.config merged over it. */}}
{{- define "understudy.config" -}}
{{- $kafka := dict
  "brokers" .Values.kafka.brokers
  "group_id" .Values.kafka.groupId
  "input_topics" .Values.kafka.inputTopics
  "ack_topic" .Values.kafka.ackTopic
  "dlq_topic" .Values.kafka.dlqTopic
  "create_topics" .Values.kafka.createTopics
  "partitions" (int .Values.kafka.partitions)
  "replication_factor" (int .Values.kafka.replicationFactor)
  "librdkafka" .Values.kafka.librdkafka -}}
{{- $store := dict
  "batch_rows" (int .Values.store.batchRows)
  "flush_interval_ms" (int .Values.store.flushIntervalMs)
  "max_connections" (int .Values.store.maxConnections) -}}
{{- if .Values.store.url -}}
{{- $_ := set $store "url" .Values.store.url -}}
{{- else if include "understudy.sqlite" . -}}
{{- $_ := set $store "url" "sqlite:///srv/understudy/data/understudy.db" -}}
{{- end -}}
{{- $base := dict
  "kafka" $kafka
  "store" $store
  "scenario" (dict "path" (include "understudy.scenarioPath" .) "reload_interval_ms" (int .Values.scenario.reloadIntervalMs))
  "telemetry" (dict "metrics_addr" (printf "0.0.0.0:%d" (int .Values.telemetry.metricsPort)) "log_format" .Values.telemetry.logFormat "log_level" .Values.telemetry.logLevel) -}}
{{- toYaml (mustMergeOverwrite $base (deepCopy .Values.config)) -}}
{{- end -}}

{{/* Load runs store their parts for generator 0 (and `understudy report`) to merge: a shared store. */}}
{{- define "understudy.validateLoadTests" -}}
{{- if include "understudy.sqlite" . -}}
{{- fail "loadTests need store.url or store.existingSecret: the generators of a run store their parts in the shared Postgres store, where generator 0 and `understudy report` merge them" -}}
{{- end -}}
{{- if lt (int .Values.loadTests.generators) 1 -}}
{{- fail "loadTests.generators must be at least 1" -}}
{{- end -}}
{{- end -}}
