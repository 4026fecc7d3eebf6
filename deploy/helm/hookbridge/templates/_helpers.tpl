{{/* Chart name, overridable. */}}
{{- define "hookbridge.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified app name: the release name, plus the chart name unless it contains it. */}}
{{- define "hookbridge.fullname" -}}
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

{{- define "hookbridge.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "hookbridge.selectorLabels" -}}
app.kubernetes.io/name: {{ include "hookbridge.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: gateway
{{- end }}

{{- define "hookbridge.labels" -}}
helm.sh/chart: {{ include "hookbridge.chart" . }}
{{ include "hookbridge.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* The Secret holding the signing secrets: the existing one, or the one this chart creates. */}}
{{- define "hookbridge.secretName" -}}
{{- if .Values.secrets.existingSecret }}
{{- .Values.secrets.existingSecret }}
{{- else }}
{{- printf "%s-stripe" (include "hookbridge.fullname" .) }}
{{- end }}
{{- end }}

{{/* The port of an "IP:PORT" listen address ("0.0.0.0:8080", "[::]:8080"). */}}
{{- define "hookbridge.portOf" -}}
{{- $port := regexFind "[0-9]+$" (toString .) }}
{{- if not $port }}
{{- fail (printf "cannot read a port from listen address %q; write it as IP:PORT" (toString .)) }}
{{- end }}
{{- $port }}
{{- end }}

{{- define "hookbridge.webhookPort" -}}
{{- include "hookbridge.portOf" (.Values.config.listen | default "0.0.0.0:8080") }}
{{- end }}

{{- define "hookbridge.adminPort" -}}
{{- include "hookbridge.portOf" (.Values.config.admin_listen | default "127.0.0.1:9090") }}
{{- end }}

{{/*
Guards for mistakes that would only show in production:
- an admin port bound to loopback, which the kubelet's probes cannot reach;
- a grace period too short for preStop sleep + ack_timeout + 1s (checked when ack_timeout is
  written in whole seconds, like "5s"; tests/deploy.rs checks every form).
*/}}
{{- define "hookbridge.validate" -}}
{{- $admin := toString (.Values.config.admin_listen | default "127.0.0.1:9090") }}
{{- if or (hasPrefix "127." $admin) (hasPrefix "localhost" $admin) (hasPrefix "[::1]" $admin) }}
{{- fail (printf "config.admin_listen is %q: in a pod it must listen on all interfaces (0.0.0.0:PORT) so that the kubelet's probes reach /healthz and /readyz" $admin) }}
{{- end }}
{{- $ack := toString (.Values.config.ack_timeout | default "5s") }}
{{- if regexMatch "^[0-9]+s$" $ack }}
{{- $need := add (int (trimSuffix "s" $ack)) (int .Values.preStopSleepSeconds) 1 }}
{{- if le (int .Values.terminationGracePeriodSeconds) $need }}
{{- fail (printf "terminationGracePeriodSeconds (%d) must exceed preStopSleepSeconds + ack_timeout + 1s (%d)" (int .Values.terminationGracePeriodSeconds) $need) }}
{{- end }}
{{- end }}
{{- end }}
