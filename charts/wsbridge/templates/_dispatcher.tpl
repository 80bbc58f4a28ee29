{{/* The dispatcher's ServiceAccount (it runs only with a broker). */}}
{{- define "wsbridge.dispatcherServiceAccountName" -}}
{{- default (printf "%s-dispatcher" (include "wsbridge.fullname" .)) .Values.dispatcher.serviceAccount.name }}
{{- end }}
