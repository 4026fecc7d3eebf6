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
  written in whole seconds, like "5s"; tests/it/deploy.rs checks every form).
*/}}
{{- define "hookbridge.validate" -}}
{{- range list "sinks" "routes" }}
{{- if hasKey $.Values.config . }}
{{- fail (printf "config.%s: give %s as the top-level value `%s`, which replaces the chart's default as a whole" . . .) }}
{{- end }}
{{- end }}
{{- if or (not .Values.sinks) (not .Values.routes) }}
{{- fail "sinks and routes are required: give the bridge's `sinks` (a map) and `routes` (a list); each replaces the default as a whole. Complete examples: the chart's ci/*-values.yaml" }}
{{- end }}
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

{{/* hookbridge's config file: `config` plus the `sinks` and `routes` values, each given whole. */}}
{{- define "hookbridge.config" -}}
{{- $config := deepCopy .Values.config }}
{{- $_ := set $config "sinks" .Values.sinks }}
{{- $_ := set $config "routes" .Values.routes }}
{{- toYaml $config }}
{{- end }}

{{/* The pods' service account. */}}
{{- define "hookbridge.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "hookbridge.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The signing secrets the chart's Secret holds, as a dict {current, previous}: the values given,
else (an upgrade that gives none) the data of the release's existing Secret, unchanged; else
a failure naming both ways to provide them.
*/}}
{{- define "hookbridge.secretData" -}}
{{- if .Values.secrets.current }}
{{- $current := toString .Values.secrets.current }}
{{- if not (hasPrefix "whsec_" $current) }}
{{- fail "secrets.current must be a Stripe signing secret (whsec_...)" }}
{{- end }}
{{- toJson (dict "current" ($current | b64enc) "previous" (.Values.secrets.previous | default $current | toString | b64enc)) }}
{{- else }}
{{- $existing := lookup "v1" "Secret" .Release.Namespace (include "hookbridge.secretName" .) }}
{{- if and $existing $existing.data }}
{{- toJson (dict "current" (index $existing.data "current") "previous" (index $existing.data "previous")) }}
{{- else }}
{{- fail "no signing secret: set secrets.existingSecret to the name of a Secret with keys current and previous, or pass the secret with --set secrets.current=whsec_... (from the Stripe dashboard)" }}
{{- end }}
{{- end }}
{{- end }}
