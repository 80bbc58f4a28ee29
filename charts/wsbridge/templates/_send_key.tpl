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
