{{/* The Fulcrum image (extender, rebuild controller, webhook): repository:tag, tag defaulting to appVersion. */}}
{{- define "fulcrum.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{/* The prefix of every object name the chart creates (values.yaml, fullnameOverride): "fulcrum"
unless fullnameOverride is set, never the release name. Components add their suffix:
fulcrum-scheduler, fulcrum-rebuild, fulcrum-webhook, fulcrum-config, ... */}}
{{- define "fulcrum.fullname" -}}
{{ .Values.fullnameOverride | default "fulcrum" }}
{{- end }}

{{/* The name of both webhook configurations: fulcrum.io, or <fullnameOverride>.fulcrum.io. */}}
{{- define "fulcrum.webhookConfigurationName" -}}
{{- $name := include "fulcrum.fullname" . }}
{{- if eq $name "fulcrum" }}fulcrum.io{{ else }}{{ $name }}.fulcrum.io{{ end }}
{{- end }}

{{/* The Secret the webhook serves its certificate from: webhook.certificate.secretName, or
<fullname>-webhook-tls (what `fulcrum webhook-cert --service <fullname>-webhook` creates). */}}
{{- define "fulcrum.webhookSecretName" -}}
{{ .Values.webhook.certificate.secretName | default (printf "%s-webhook-tls" (include "fulcrum.fullname" .)) }}
{{- end }}

{{/* The webhook Service's DNS name, the name its serving certificate must carry. */}}
{{- define "fulcrum.webhookHost" -}}
{{ include "fulcrum.fullname" . }}-webhook.{{ .Release.Namespace }}.svc
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
    name: {{ include "fulcrum.fullname" .root }}-webhook
    port: 443
    path: {{ .path }}
  {{- with .caBundle }}
  caBundle: {{ . }}
  {{- end }}
{{- end }}

{{/* A pod's affinity: the component's own anti-affinity (its replicas on different nodes:
required for fulcrum-scheduler, preferred for the others) merged with .Values.affinity, whose
nodeAffinity and podAffinity are used as given and whose podAntiAffinity terms come after the
chart's. Arguments: root, name (the pods' app.kubernetes.io/name), required (bool). */}}
{{- define "fulcrum.affinity" -}}
{{- $extra := .root.Values.affinity | default dict }}
{{- $anti := $extra.podAntiAffinity | default dict -}}
affinity:
  {{- with omit $extra "podAntiAffinity" }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
  podAntiAffinity:
    {{- if .required }}
    requiredDuringSchedulingIgnoredDuringExecution:
    - topologyKey: kubernetes.io/hostname
      labelSelector:
        matchLabels:
          app.kubernetes.io/name: {{ .name }}
    {{- with $anti.requiredDuringSchedulingIgnoredDuringExecution }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
    {{- with $anti.preferredDuringSchedulingIgnoredDuringExecution }}
    preferredDuringSchedulingIgnoredDuringExecution:
    {{- toYaml . | nindent 4 }}
    {{- end }}
    {{- else }}
    {{- with $anti.requiredDuringSchedulingIgnoredDuringExecution }}
    requiredDuringSchedulingIgnoredDuringExecution:
    {{- toYaml . | nindent 4 }}
    {{- end }}
    preferredDuringSchedulingIgnoredDuringExecution:
    - weight: 100
      podAffinityTerm:
        topologyKey: kubernetes.io/hostname
        labelSelector:
          matchLabels:
            app.kubernetes.io/name: {{ .name }}
    {{- with $anti.preferredDuringSchedulingIgnoredDuringExecution }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
    {{- end }}
{{- end }}

{{/* Where a pod runs and what it pulls with: imagePullSecrets, nodeSelector, tolerations. */}}
{{- define "fulcrum.podPlacement" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
{{- toYaml . | nindent 0 }}
{{- end }}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
{{- toYaml . | nindent 0 }}
{{- end }}
{{- end }}

{{/* The log flags of every Fulcrum process (`fulcrum serve|rebuild|webhook`, fulcrum/logs.py). */}}
{{- define "fulcrum.logFlags" -}}
- --log-level={{ .Values.log.level }}
- --log-format={{ .Values.log.format }}
{{- end }}

{{/* The environment of every Fulcrum container: the chart's, the plugins volume on PYTHONPATH
(with .plugins, when plugins.packages lists any: fulcrum.pluginsInit), the component's own (.env,
a list of EnvVar), then extraEnv, last so that it can override any of them. */}}
{{- define "fulcrum.env" -}}
env:
- name: PYTHONDONTWRITEBYTECODE
  value: "1"
- name: HOME
  value: /tmp
{{- if and .plugins .root.Values.plugins.packages }}
- name: PYTHONPATH
  value: /opt/fulcrum-plugins
{{- end }}
{{- with .env }}
{{ toYaml . }}
{{- end }}
{{- with .root.Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* The node agent's image (node.image): each empty field is the chart's image's. */}}
{{- define "fulcrum.nodeImage" -}}
{{- $image := .Values.node.image | default dict -}}
{{ $image.repository | default .Values.image.repository }}:{{ $image.tag | default .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{/* Plugin packages (values.yaml, plugins): the init container of a pod of the extender or the
rebuild controller that pip-installs them into the volume "plugins"; nothing when none are
listed. */}}
{{- define "fulcrum.pluginsInit" -}}
{{- with .Values.plugins }}
{{- if .packages }}
initContainers:
- name: install-plugins
  image: {{ .installer.repository }}:{{ .installer.tag }}
  imagePullPolicy: {{ .installer.pullPolicy }}
  # --no-deps: Fulcrum and its dependencies are the image's (fulcrum is on no index)
  command:
  - python
  - -m
  - pip
  - install
  - --no-deps
  - --no-cache-dir
  - --disable-pip-version-check
  - --target=/opt/fulcrum-plugins
  {{- range .pipArgs }}
  - {{ . | quote }}
  {{- end }}
  {{- range .packages }}
  - {{ . | quote }}
  {{- end }}
  env:
  - name: HOME
    value: /tmp
  resources:
    {{- toYaml .resources | nindent 4 }}
  {{- include "fulcrum.containerSecurityContext" $ | nindent 2 }}
  volumeMounts:
  - name: plugins
    mountPath: /opt/fulcrum-plugins
  - name: plugins-tmp
    mountPath: /tmp
{{- end }}
{{- end }}
{{- end }}

{{/* The plugins volume, read-only, in the container of a Fulcrum process (with
fulcrum.pluginsInit); nothing when no plugin packages are listed. */}}
{{- define "fulcrum.pluginsMount" -}}
{{- if .Values.plugins.packages }}
- name: plugins
  mountPath: /opt/fulcrum-plugins
  readOnly: true
{{- end }}
{{- end }}

{{/* The volumes of fulcrum.pluginsInit; nothing when no plugin packages are listed. */}}
{{- define "fulcrum.pluginsVolumes" -}}
{{- if .Values.plugins.packages }}
- name: plugins
  emptyDir:
    sizeLimit: {{ .Values.plugins.sizeLimit }}
- name: plugins-tmp
  emptyDir:
    sizeLimit: 256Mi
{{- end }}
{{- end }}
