{{/* Resource name of a service: <release>-<service>, e.g. plg-ingest. */}}
{{- define "plg.name" -}}
{{- printf "%s-%s" .root.Release.Name .name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "plg.labels" -}}
app.kubernetes.io/name: {{ .name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/part-of: plg
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version }}
{{- end -}}

{{- define "plg.selector" -}}
app.kubernetes.io/name: {{ .name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
{{- end -}}

{{- define "plg.image" -}}
{{- printf "%s:%s" .Values.image.repository .Values.image.tag -}}
{{- end -}}

{{/* A variable from a Secret the operator created: name and key from .Values.secrets.<ref>. */}}
{{- define "plg.secretEnv" -}}
{{- $ref := index .root.Values.secrets .ref -}}
- name: {{ .env }}
  valueFrom:
    secretKeyRef:
      name: {{ required (printf "secrets.%s.name" .ref) $ref.name }}
      key: {{ required (printf "secrets.%s.key" .ref) $ref.key }}
{{- end -}}

{{/* What every plg process reads: Kafka, the registry, PostgreSQL, the environment name. */}}
{{- define "plg.commonEnv" -}}
- name: KAFKA_BOOTSTRAP_SERVERS
  value: {{ .Values.kafka.bootstrapServers | quote }}
- name: SCHEMA_REGISTRY_URL
  value: {{ printf "http://%s-schema-registry:%v" .Release.Name (index .Values.services "schema-registry").port | quote }}
- name: PLG_ENVIRONMENT
  value: {{ .Values.environment | quote }}
{{ include "plg.secretEnv" (dict "root" . "env" "DATABASE_URL" "ref" "databaseUrl") }}
{{ include "plg.secretEnv" (dict "root" . "env" "SCHEMA_REGISTRY_ADMIN_TOKEN" "ref" "registryAdminToken") }}
{{ include "plg.secretEnv" (dict "root" . "env" "PLG_DLQ_KEY" "ref" "dlqKey") }}
{{- end -}}
