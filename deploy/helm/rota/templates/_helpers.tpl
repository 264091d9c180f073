{{/* Names. */}}
{{- define "rota.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "rota.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "rota.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "rota.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "rota.selector" -}}
app.kubernetes.io/name: {{ include "rota.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "rota.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "rota.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "rota.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* A DNS-1123 label for an app name: lower case, [a-z0-9-]. */}}
{{- define "rota.appLabel" -}}
{{- regexReplaceAll "[^a-z0-9-]" (lower .) "-" | trunc 40 | trimSuffix "-" -}}
{{- end -}}

{{/* Secret names: the existing one, or the chart's. */}}
{{- define "rota.databaseSecret" -}}
{{- default (printf "%s-database" (include "rota.fullname" .)) .Values.database.existingSecret -}}
{{- end -}}
{{- define "rota.adminSecret" -}}
{{- default (printf "%s-admin-token" (include "rota.fullname" .)) .Values.adminToken.existingSecret -}}
{{- end -}}
{{- define "rota.natsAuthSecret" -}}
{{- default (printf "%s-nats-auth" (include "rota.fullname" .)) .Values.nats.auth.existingSecret -}}
{{- end -}}
{{- define "rota.appSecret" -}}
{{- $w := .worker -}}
{{- default (printf "%s-app-%s" (include "rota.fullname" .root) (include "rota.appLabel" $w.app)) $w.secret.existingSecret -}}
{{- end -}}

{{/* The `[nats]` section and the top-level keys both processes share. */}}
{{- define "rota.commonToml" -}}
prefix = {{ .Values.prefix | quote }}
http_listen = {{ printf "0.0.0.0:%v" .port | quote }}
log_format = {{ .Values.logFormat | quote }}

[nats]
url = {{ .Values.nats.url | quote }}
{{- if eq .Values.nats.auth.mode "creds" }}
creds = "/etc/rota/nats-auth/creds"
{{- else if eq .Values.nats.auth.mode "nkey" }}
nkey = "/etc/rota/nats-auth/nkey"
{{- end }}
{{- if .Values.nats.tls.enabled }}
tls_ca = "/etc/rota/nats-tls/ca.crt"
{{- if .Values.nats.tls.clientCert }}
tls_cert = "/etc/rota/nats-tls/tls.crt"
tls_key = "/etc/rota/nats-tls/tls.key"
{{- end }}
{{- end }}
{{- end -}}

{{/* Environment both processes take: logs, and the NATS logins that travel as variables. */}}
{{- define "rota.commonEnv" -}}
- name: RUST_LOG
  value: {{ .Values.logLevel | quote }}
- name: ROTA_CONFIG
  value: /etc/rota/config/rota.toml
{{- if eq .Values.nats.auth.mode "userPassword" }}
- name: ROTA_NATS_USER
  valueFrom:
    secretKeyRef: {name: {{ include "rota.natsAuthSecret" . }}, key: user}
- name: ROTA_NATS_PASSWORD
  valueFrom:
    secretKeyRef: {name: {{ include "rota.natsAuthSecret" . }}, key: password}
{{- else if eq .Values.nats.auth.mode "token" }}
- name: ROTA_NATS_TOKEN
  valueFrom:
    secretKeyRef: {name: {{ include "rota.natsAuthSecret" . }}, key: token}
{{- end }}
{{- end -}}

{{/* Volumes for NATS files (credentials, TLS), shared by both. */}}
{{- define "rota.natsVolumes" -}}
{{- if has .Values.nats.auth.mode (list "creds" "nkey") }}
- name: nats-auth
  secret:
    secretName: {{ include "rota.natsAuthSecret" . }}
    defaultMode: 0440
    items:
      - key: {{ .Values.nats.auth.mode }}
        path: {{ .Values.nats.auth.mode }}
{{- end }}
{{- if .Values.nats.tls.enabled }}
- name: nats-tls
  secret:
    secretName: {{ required "nats.tls.existingSecret is needed with nats.tls.enabled" .Values.nats.tls.existingSecret }}
    defaultMode: 0440
{{- end }}
{{- end -}}

{{- define "rota.natsMounts" -}}
{{- if has .Values.nats.auth.mode (list "creds" "nkey") }}
- name: nats-auth
  mountPath: /etc/rota/nats-auth
  readOnly: true
{{- end }}
{{- if .Values.nats.tls.enabled }}
- name: nats-tls
  mountPath: /etc/rota/nats-tls
  readOnly: true
{{- end }}
{{- end -}}

{{/* Probes on the process's HTTP port. */}}
{{- define "rota.probes" -}}
livenessProbe:
  httpGet: {path: /healthz, port: http}
  periodSeconds: 10
  timeoutSeconds: 2
  failureThreshold: 3
readinessProbe:
  httpGet: {path: /readyz, port: http}
  periodSeconds: 5
  timeoutSeconds: 2
  failureThreshold: 2
startupProbe:
  httpGet: {path: /healthz, port: http}
  periodSeconds: 2
  failureThreshold: 30
{{- end -}}

{{/* A worker's TOML file: `root` is the chart's context, `w` the merged worker entry. */}}
{{- define "rota.workerToml" -}}
{{- $w := .w -}}
{{ include "rota.commonToml" (merge (dict "port" $w.http.port) .root) }}

[worker]
app = {{ $w.app | quote }}
secret_file = "/etc/rota/app/secret"
capacity = {{ $w.capacity }}
tags = [{{ range $j, $t := $w.tags }}{{ if $j }}, {{ end }}{{ $t | quote }}{{ end }}]
allow_shell = {{ $w.allowShell }}
allow_containers = {{ $w.allowContainers }}
state_dir = "/var/lib/rota/state"
{{- end -}}
