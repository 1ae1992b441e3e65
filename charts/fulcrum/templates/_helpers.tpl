{{/* The Fulcrum image (extender, rebuild controller, webhook): repository:tag, tag defaulting to appVersion. */}}
{{- define "fulcrum.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{/* The webhook Service's DNS name, the name its serving certificate must carry. */}}
{{- define "fulcrum.webhookHost" -}}
fulcrum-webhook.{{ .Release.Namespace }}.svc
{{- end }}

{{/* The pod security context every Fulcrum pod runs with (Pod Security "restricted"). */}}
{{- define "fulcrum.podSecurityContext" -}}
securityContext:
  runAsNonRoot: true
  runAsUser: 65532
  runAsGroup: 65532
  seccompProfile:
    type: RuntimeDefault
{{- end }}

{{/* The container security context: read-only root, no privilege escalation, no capabilities. */}}
{{- define "fulcrum.containerSecurityContext" -}}
securityContext:
  allowPrivilegeEscalation: false
  readOnlyRootFilesystem: true
  capabilities:
    drop: [ALL]
{{- end }}

{{/* A probe run inside a container whose server listens on 127.0.0.1 only: the argument is the URL. */}}
{{- define "fulcrum.loopbackProbe" -}}
exec:
  command:
  - python
  - -S
  - -c
  - import urllib.request; urllib.request.urlopen("{{ . }}", timeout=2)
{{- end }}

{{/* A webhook's clientConfig: the Service, the path, and the caBundle when there is one. */}}
{{- define "fulcrum.webhookClientConfig" -}}
clientConfig:
  service:
    namespace: {{ .root.Release.Namespace }}
    name: fulcrum-webhook
    port: 443
    path: {{ .path }}
  {{- with .caBundle }}
  caBundle: {{ . }}
  {{- end }}
{{- end }}
