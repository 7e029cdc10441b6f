{{/* Names and labels. */}}
{{- define "relay.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "relay.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "relay.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release's objects: the relay, its metrics Service, the dev Redis. */}}
{{- define "relay.baseLabels" -}}
app.kubernetes.io/name: {{ include "relay.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* The relay's pods (not the dev Redis's). */}}
{{- define "relay.selectorLabels" -}}
{{ include "relay.baseLabels" . }}
app.kubernetes.io/component: relay
{{- end }}

{{/* Common labels, without a component: each object adds its own. */}}
{{- define "relay.labels" -}}
helm.sh/chart: {{ include "relay.chart" . }}
{{ include "relay.baseLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: relay
{{- end }}

{{- define "relay.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "relay.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "relay.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* Whether the bundled dev Redis is used: no URL given and dev enabled. */}}
{{- define "relay.devRedis" -}}
{{- if and .Values.redis.dev.enabled (not .Values.redis.url) (not .Values.redis.existingSecret) }}true{{ end }}
{{- end }}

{{- define "relay.devRedisName" -}}
{{- printf "%s-redis" (include "relay.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
relay.drainTimeout as whole seconds: "30s" -> 30, "2m" -> 120. The schema
allows only these two forms, so the arithmetic below is exact.
*/}}
{{- define "relay.drainSeconds" -}}
{{- $d := toString .Values.relay.drainTimeout }}
{{- if hasSuffix "m" $d }}
{{- mul (trimSuffix "m" $d | atoi) 60 }}
{{- else }}
{{- trimSuffix "s" $d | atoi }}
{{- end }}
{{- end }}

{{/* Longer than the preStop sleep plus the drain, so no pod is killed mid-drain. */}}
{{- define "relay.terminationGracePeriodSeconds" -}}
{{- if .Values.terminationGracePeriodSeconds }}
{{- $min := add (int .Values.preStopSleepSeconds) (include "relay.drainSeconds" . | atoi) 1 }}
{{- if lt (int .Values.terminationGracePeriodSeconds) $min }}
{{- fail (printf "terminationGracePeriodSeconds must be at least preStopSleepSeconds + relay.drainTimeout + 1 = %d, so Kubernetes never kills a draining pod" $min) }}
{{- end }}
{{- .Values.terminationGracePeriodSeconds }}
{{- else }}
{{- add (int .Values.preStopSleepSeconds) (include "relay.drainSeconds" . | atoi) 15 }}
{{- end }}
{{- end }}

{{/*
A setting as the string the relay reads. Helm reads numbers in values files as
floats, which print as 1.048576e+06; whole numbers print as integers here.
*/}}
{{- define "relay.setting" -}}
{{- if kindIs "float64" . }}{{ int64 . | toString | quote }}{{ else }}{{ toString . | quote }}{{ end }}
{{- end }}
