{{- /* The gateway's names and labels (component `gateway`, so that no selector of
the operator's matches its pods). */ -}}
{{- define "llmops.gateway.fullname" -}}
{{- printf "%s-gateway" (include "llmops.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "llmops.gateway.selectorLabels" -}}
app.kubernetes.io/name: {{ include "llmops.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: gateway
{{- end -}}

{{- define "llmops.gateway.labels" -}}
{{ include "llmops.gateway.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: llmops
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}
