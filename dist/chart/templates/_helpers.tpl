{{/*
Object names are "callguard-<name>", as config/default's namePrefix makes
them, so that docs, RBAC and kubectl commands work for either install.
*/}}
{{- define "callguard.prefix" -}}
{{- .Chart.Name -}}
{{- end -}}

{{- define "callguard.serviceAccountName" -}}
{{ include "callguard.prefix" . }}-controller-manager
{{- end -}}

{{/* Labels of every object of the chart. */}}
{{- define "callguard.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* The manager's pods: the same selector as config/manager (immutable). */}}
{{- define "callguard.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
control-plane: controller-manager
{{- end -}}

{{/*
An image reference from {repository, tag, digest}, with the chart's
appVersion as the default tag: repository:tag, or repository[:tag]@digest.
Call with (dict "image" .Values.image "root" .).
*/}}
{{- define "callguard.imageRef" -}}
{{- $tag := .image.tag | default .root.Chart.AppVersion | toString -}}
{{- if .image.digest -}}
{{- if .image.tag -}}
{{ .image.repository }}:{{ $tag }}@{{ .image.digest }}
{{- else -}}
{{ .image.repository }}@{{ .image.digest }}
{{- end -}}
{{- else -}}
{{ .image.repository }}:{{ $tag }}
{{- end -}}
{{- end -}}

{{/* The receivers' image: receiverImage, each empty field from image. */}}
{{- define "callguard.receiverImageRef" -}}
{{- $r := .Values.receiverImage | default dict -}}
{{- if $r.repository -}}
{{ include "callguard.imageRef" (dict "image" $r "root" .) }}
{{- else -}}
{{- $img := dict "repository" .Values.image.repository "tag" (coalesce $r.tag .Values.image.tag) "digest" (coalesce $r.digest .Values.image.digest) -}}
{{ include "callguard.imageRef" (dict "image" $img "root" .) }}
{{- end -}}
{{- end -}}

{{/* Namespaces the receivers run in, for the monitors' namespaceSelector. */}}
{{- define "callguard.receiverNamespaceSelector" -}}
{{- if .Values.watchNamespaces -}}
matchNames:
{{- range .Values.watchNamespaces }}
- {{ . }}
{{- end }}
{{- else -}}
any: true
{{- end }}
{{- end -}}

{{/* The relabelings every receiver monitor applies (the alerts rely on them). */}}
{{- define "callguard.receiverRelabelings" -}}
- action: replace
  sourceLabels: [__meta_kubernetes_pod_label_app_kubernetes_io_instance]
  targetLabel: policy
{{- end -}}
