{{/*
The Secret holding the installation key that every Bridge's send credential
is derived from. The controller creates it with a random key when absent
(so no key is ever rendered into a manifest); the gateway mounts it.
*/}}
{{- define "wsbridge.sendKeySecretName" -}}
{{- .Values.sendKey.secretName | default (printf "%s-send-key" (include "wsbridge.fullname" .)) }}
{{- end }}

{{/* Where the gateway's container finds the key. */}}
{{- define "wsbridge.sendKeyMountPath" -}}
/var/run/secrets/wsbridge/send-key
{{- end }}

{{/*
The controller's copy of every usable signing secret (one key per signed
Subscription, `{namespace}.{name}`), created and kept by the controller;
the gateway and the dispatcher mount it (optional: it appears once the
controller wrote it) to sign what they deliver, as workers do.
*/}}
{{- define "wsbridge.deliveryKeysSecretName" -}}
{{- printf "%s-delivery-keys" (include "wsbridge.fullname" .) }}
{{- end }}

{{- define "wsbridge.deliveryKeysMountPath" -}}
/var/run/secrets/wsbridge/delivery-keys
{{- end }}

{{/* The argument, volume mount and volume of a role that signs deliveries. */}}
{{- define "wsbridge.deliveryKeysArgs" -}}
- --delivery-keys-dir
- {{ include "wsbridge.deliveryKeysMountPath" . }}
{{- end }}

{{- define "wsbridge.deliveryKeysVolumeMounts" -}}
- name: delivery-keys
  mountPath: {{ include "wsbridge.deliveryKeysMountPath" . }}
  readOnly: true
{{- end }}

{{- define "wsbridge.deliveryKeysVolumes" -}}
- name: delivery-keys
  secret:
    secretName: {{ include "wsbridge.deliveryKeysSecretName" . }}
    optional: true
{{- end }}
