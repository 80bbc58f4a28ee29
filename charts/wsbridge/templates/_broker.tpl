{{/*
The RabbitMQ broker of `backend: rabbitmq` Channels: whether one is
configured, the Secret and key holding its URL, and the volume, mount and
flag with which the controller, gateway and dispatcher read it (a file, so
the URL never shows in a pod spec or a process listing).
*/}}
{{- define "wsbridge.brokerEnabled" -}}
{{- if or .Values.broker.url .Values.broker.existingSecret .Values.rabbitmq.enabled }}true{{ end }}
{{- end }}

{{- define "wsbridge.brokerSecretName" -}}
{{- .Values.broker.existingSecret | default (printf "%s-broker" (include "wsbridge.fullname" .)) }}
{{- end }}

{{- define "wsbridge.brokerSecretKey" -}}
{{- if .Values.broker.existingSecret }}{{ .Values.broker.existingSecretKey }}{{ else }}url{{ end }}
{{- end }}

{{- define "wsbridge.brokerMountPath" -}}
/var/run/secrets/wsbridge/broker
{{- end }}

{{/* The container argument naming the URL's file. */}}
{{- define "wsbridge.brokerArgs" -}}
{{- if include "wsbridge.brokerEnabled" . }}
- --rabbitmq-url-file
- {{ include "wsbridge.brokerMountPath" . }}/url
{{- end }}
{{- end }}

{{- define "wsbridge.brokerVolumeMounts" -}}
{{- if include "wsbridge.brokerEnabled" . }}
- name: broker
  mountPath: {{ include "wsbridge.brokerMountPath" . }}
  readOnly: true
{{- end }}
{{- end }}

{{- define "wsbridge.brokerVolumes" -}}
{{- if include "wsbridge.brokerEnabled" . }}
- name: broker
  secret:
    secretName: {{ include "wsbridge.brokerSecretName" . }}
    items:
      - key: {{ include "wsbridge.brokerSecretKey" . }}
        path: url
{{- end }}
{{- end }}
