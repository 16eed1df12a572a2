{{/* The name of every object: the release's, or fqdngate alone. */}}
{{- define "fqdngate.name" -}}
{{- if eq .Release.Name "fqdngate" -}}fqdngate{{- else -}}{{ printf "%s-fqdngate" .Release.Name | trunc 63 | trimSuffix "-" }}{{- end -}}
{{- end -}}

{{- define "fqdngate.labels" -}}
app.kubernetes.io/name: fqdngate
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "fqdngate.selector" -}}
app.kubernetes.io/name: fqdngate
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}
