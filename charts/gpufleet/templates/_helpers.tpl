{{/* Chart name, overridable. */}}
{{- define "gpufleet.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Prefix of every resource name: the release name, plus the chart name unless it holds it. */}}
{{- define "gpufleet.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := include "gpufleet.name" . -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Labels on every resource. */}}
{{- define "gpufleet.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "gpufleet.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: gpufleet
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Labels that select the operator's pods (never change across upgrades: selectors are immutable). */}}
{{- define "gpufleet.selectorLabels" -}}
app.kubernetes.io/name: {{ include "gpufleet.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "gpufleet.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "gpufleet.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "gpufleet.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* The Secret holding the operator's token key. */}}
{{- define "gpufleet.tokenKeySecretName" -}}
{{- default (printf "%s-token-key" (include "gpufleet.fullname" .)) .Values.tokenKey.existingSecret -}}
{{- end -}}

{{/* Namespaces that get the worker NetworkPolicy. */}}
{{- define "gpufleet.workerNamespaces" -}}
{{- toJson (default .Values.watchNamespaces .Values.networkPolicy.workerNamespaces) -}}
{{- end -}}

{{/* The operator's permissions, generated from gpufleet/rbac.py by hack/sync_chart.py. */}}
{{- define "gpufleet.rbacRules" -}}
{{- .Files.Get "files/rbac-rules.yaml" -}}
{{- end -}}

{{/* RBAC rules of one group, each preceded by the reason it exists. Argument: a list of rules. */}}
{{- define "gpufleet.renderRules" -}}
{{- range . }}
  # {{ .reason }}
  - apiGroups: {{ toJson .apiGroups }}
    resources: {{ toJson .resources }}
    verbs: {{ toJson .verbs }}
{{- end }}
{{- end -}}

{{/* The operator's ServiceAccount as an RBAC subject list. */}}
{{- define "gpufleet.rbacSubjects" -}}
- kind: ServiceAccount
  name: {{ include "gpufleet.serviceAccountName" . }}
  namespace: {{ .Release.Namespace }}
{{- end -}}
