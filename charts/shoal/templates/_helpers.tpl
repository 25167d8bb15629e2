{{/*
Names, labels, images and RBAC rules shared by the templates.
*/}}

{{/* The chart's name, or nameOverride. */}}
{{- define "shoal.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The full name of the release's objects: fullnameOverride, or <release>-<chart> unless the release name already says it. */}}
{{- define "shoal.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* Labels of every object of the release. */}}
{{- define "shoal.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "shoal.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: shoal
{{- end }}

{{/* Labels that select the operator's pods. */}}
{{- define "shoal.selectorLabels" -}}
app.kubernetes.io/name: {{ include "shoal.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* The operator's ServiceAccount. */}}
{{- define "shoal.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "shoal.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The image tag: image.tag, or the chart's appVersion. */}}
{{- define "shoal.tag" -}}
{{- default .Chart.AppVersion .Values.image.tag }}
{{- end }}

{{/* The operator image: repository:tag, or repository@digest when a digest is set. */}}
{{- define "shoal.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (include "shoal.tag" .) }}
{{- end }}
{{- end }}

{{/* The registry path next to the operator image (ghcr.io/shoal-dev for ghcr.io/shoal-dev/shoal-operator). */}}
{{- define "shoal.imagePrefix" -}}
{{- if contains "/" .Values.image.repository }}
{{- printf "%s/" (dir .Values.image.repository) }}
{{- end }}
{{- end }}

{{/* Image of CPU Ray nodes of fleets that name none. */}}
{{- define "shoal.servingImage" -}}
{{- default (printf "%sshoal-serving:%s" (include "shoal.imagePrefix" .) (include "shoal.tag" .)) .Values.serving.image }}
{{- end }}

{{/* Image of GPU Ray workers of fleets that name none. */}}
{{- define "shoal.gpuImage" -}}
{{- default (printf "%sshoal-serving:%s-gpu" (include "shoal.imagePrefix" .) (include "shoal.tag" .)) .Values.serving.gpuImage }}
{{- end }}

{{/* "true" when the operator runs with kopf peering: asked for, or more than one replica. */}}
{{- define "shoal.peering" -}}
{{- if or .Values.operator.peering.enabled (gt (int .Values.replicaCount) 1) }}true{{ end }}
{{- end }}

{{/* Name of the kopf peering object. */}}
{{- define "shoal.peeringName" -}}
{{- default (include "shoal.fullname" .) .Values.operator.peering.name }}
{{- end }}

{{/* "true" when the operator watches every namespace. */}}
{{- define "shoal.clusterwide" -}}
{{- if not .Values.operator.watchNamespaces }}true{{ end }}
{{- end }}

{{/*
RBAC rules for the operator's work in a namespace (or in all of them, in a ClusterRole).
Each verb is one the operator is seen to use in tests/integration/chart (an audit log of the
operator running under this identity); see docs/sre.md for what each is for.
*/}}
{{- define "shoal.namespacedRules" -}}
# Watch fleets, policies and tenants (the operator reads them from its watch cache, never
# with a get); kopf keeps its state in annotations and a finalizer (patch).
- apiGroups: ["shoal.dev"]
  resources: ["modelfleets", "routingpolicies", "tenants"]
  verbs: ["list", "watch", "patch"]
# Write their status (conditions, replicas, cost, the fitted router, tenants' keys and use).
- apiGroups: ["shoal.dev"]
  resources: ["modelfleets/status", "routingpolicies/status", "tenants/status"]
  verbs: ["patch"]
# Each fleet's RayService: server-side apply (patch, and create when it is new), watched for
# KubeRay's status, deleted with the fleet. A get before the first write and before a delete:
# an object of the name that the fleet does not own is neither written over nor deleted.
- apiGroups: ["ray.io"]
  resources: ["rayservices"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# Calibration data (read), router artifacts (server-side apply: patch, and create when new;
# read back by the periodic re-check; deleted).
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["get", "create", "patch", "delete"]
{{- if .Values.rbac.feedbackKeys }}
# Each fleet's completion-id signing key: a Secret created once, with a random key, where none
# exists (create only: the operator never reads, lists or changes a Secret for it; the fleet's
# ownerReference garbage-collects it).
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["create"]
{{- end }}
{{- if or .Values.rbac.embedderSecrets .Values.rbac.tenantSecrets }}
# The API key an openai embedder names (embedder.apiKeySecretRef), read to fit the router
# (rbac.embedderSecrets); tenants' API keys (Tenant spec.apiKeys), read every
# tenants.keyResyncSeconds and only digested (rbac.tenantSecrets). A get by name only: no
# list, no watch.
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get"]
{{- end }}
# Each fleet's endpoint Service: server-side apply (patch, create when new), deleted with the
# fleet; read (get) before the first write and before a delete, as every child below: only
# an object that names the fleet in its ownerReferences is written over or deleted.
- apiGroups: [""]
  resources: ["services"]
  verbs: ["get", "create", "patch", "delete"]
# Each fleet's NetworkPolicy and its workers' PodDisruptionBudget: server-side apply (patch,
# create when new); garbage-collected with the fleet through their ownerReferences.
- apiGroups: ["networking.k8s.io"]
  resources: ["networkpolicies"]
  verbs: ["get", "create", "patch", "delete"]
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["get", "create", "patch", "delete"]
# Each fleet's HTTPRoute when it names a Gateway (spec.serving.gateway): server-side apply
# (patch, create when new), deleted when the gateway is removed or with the fleet.
- apiGroups: ["gateway.networking.k8s.io"]
  resources: ["httproutes"]
  verbs: ["get", "create", "patch", "delete"]
{{- if eq .Values.serving.fqdnPolicies "cilium" }}
# Each Restricted fleet's CiliumNetworkPolicy naming its external models' hosts (toFQDNs).
- apiGroups: ["cilium.io"]
  resources: ["ciliumnetworkpolicies"]
  verbs: ["get", "create", "patch", "delete"]
{{- end }}
# Events about fleets and policies (kopf posts core/v1 events).
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
{{- if and (include "shoal.peering" .) (not (include "shoal.clusterwide" .)) }}
# Peering in each watched namespace: replicas announce themselves in the KopfPeering's status.
- apiGroups: ["kopf.dev"]
  resources: ["kopfpeerings"]
  verbs: ["list", "watch", "patch"]
{{- end }}
{{- end }}

{{/* Cluster-scoped rules of the cluster-wide operator. */}}
{{- define "shoal.clusterRules" -}}
# kopf notices CRDs that appear after it starts (KubeRay's RayService, say).
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  verbs: ["list", "watch"]
{{- if include "shoal.peering" . }}
# Cluster-wide peering: replicas announce themselves in the ClusterKopfPeering's status.
- apiGroups: ["kopf.dev"]
  resources: ["clusterkopfpeerings"]
  verbs: ["list", "watch", "patch"]
{{- end }}
{{- end }}
