{{/* Chart name, overridable. */}}
{{- define "wsbridge.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 40 | trimSuffix "-" }}
{{- end }}

{{/*
Prefix of every object name: the release name, plus the chart name unless the
release name already contains it. Truncated so that "<prefix>-controller-metrics"
stays within 63 characters.
*/}}
{{- define "wsbridge.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "wsbridge.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object. */}}
{{- define "wsbridge.labels" -}}
helm.sh/chart: {{ include "wsbridge.chart" . }}
{{ include "wsbridge.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: wsbridge
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "wsbridge.selectorLabels" -}}
app.kubernetes.io/name: {{ include "wsbridge.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Labels of one role: (dict "ctx" $ "component" "controller"). */}}
{{- define "wsbridge.componentLabels" -}}
{{ include "wsbridge.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "wsbridge.componentSelectorLabels" -}}
{{ include "wsbridge.selectorLabels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* The container image of every role. */}}
{{- define "wsbridge.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{- define "wsbridge.workerImage" -}}
{{- default (include "wsbridge.image" .) .Values.controller.workerImage }}
{{- end }}

{{- define "wsbridge.controllerServiceAccountName" -}}
{{- default (printf "%s-controller" (include "wsbridge.fullname" .)) .Values.controller.serviceAccount.name }}
{{- end }}

{{- define "wsbridge.gatewayServiceAccountName" -}}
{{- default (printf "%s-gateway" (include "wsbridge.fullname" .)) .Values.gateway.serviceAccount.name }}
{{- end }}

{{/* In-cluster URL of the gateway Service; Channel addresses are built on it. */}}
{{- define "wsbridge.gatewayUrl" -}}
{{- $host := printf "%s-gateway.%s.svc" (include "wsbridge.fullname" .) .Release.Namespace }}
{{- if eq (int .Values.gateway.service.port) 80 }}
{{- printf "http://%s" $host }}
{{- else }}
{{- printf "http://%s:%d" $host (int .Values.gateway.service.port) }}
{{- end }}
{{- end }}

{{/*
Pod and container security contexts: the Kubernetes "restricted" Pod Security
Standard, always (not configurable).
*/}}
{{- define "wsbridge.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "wsbridge.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
capabilities:
  drop:
    - ALL
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* Environment shared by every role. */}}
{{- define "wsbridge.commonEnv" -}}
- name: RUST_LOG
  value: {{ .Values.logLevel | quote }}
- name: WSBRIDGE_LISTEN
  value: "0.0.0.0:8080"
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: POD_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
# The pod's own address, denied as a destination (no loops through itself).
- name: POD_IP
  valueFrom:
    fieldRef:
      fieldPath: status.podIP
{{- end }}

{{/* Ports, probes and volume mounts shared by every role's container. */}}
{{- define "wsbridge.containerCommon" -}}
ports:
  - name: http
    containerPort: 8080
    protocol: TCP
livenessProbe:
  httpGet:
    path: /healthz
    port: http
  initialDelaySeconds: 5
  periodSeconds: 10
  timeoutSeconds: 2
  failureThreshold: 3
readinessProbe:
  httpGet:
    path: /readyz
    port: http
  periodSeconds: 5
  timeoutSeconds: 2
  failureThreshold: 3
securityContext:
  {{- include "wsbridge.containerSecurityContext" . | nindent 2 }}
volumeMounts:
  - name: tmp
    mountPath: /tmp
{{- end }}

{{/* Command-line flags of the outbound destination policy (controller, gateway). */}}
{{- define "wsbridge.destinationArgs" -}}
{{- /* The gateway's Service is a destination that would loop through wsbridge. */}}
- --own-service
- {{ printf "%s-gateway.%s" (include "wsbridge.fullname" .) .Release.Namespace | quote }}
{{- range .Values.destinations.deny }}
- --destination-deny
- {{ . | quote }}
{{- end }}
{{- range .Values.destinations.allow }}
- --destination-allow
- {{ . | quote }}
{{- end }}
{{- if .Values.destinations.allowLinkLocal }}
- --allow-link-local
{{- end }}
{{- end }}

{{/* The controller's flags for the NetworkPolicy of each worker. */}}
{{- define "wsbridge.workerIngressArgs" -}}
{{- if .Values.networkPolicy.enabled }}
- --gateway-pod-labels
- {{ printf "app.kubernetes.io/name=%s,app.kubernetes.io/instance=%s,app.kubernetes.io/component=gateway" (include "wsbridge.name" .) .Release.Name | quote }}
{{- with .Values.networkPolicy.metricsScraper.namespace }}
- --metrics-scraper-namespace
- {{ . | quote }}
{{- end }}
{{- range $k, $v := .Values.networkPolicy.metricsScraper.podLabels }}
- --metrics-scraper-pod-labels
- {{ printf "%s=%s" $k $v | quote }}
{{- end }}
{{- else }}
- --worker-network-policy=false
{{- end }}
{{- end }}
