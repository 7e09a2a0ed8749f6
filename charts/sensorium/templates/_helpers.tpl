{{/* Names and labels shared by every object of the chart. */}}
{{- define "sensorium.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "sensorium.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains (include "sensorium.name" .) .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "sensorium.name" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "sensorium.selectorLabels" -}}
app.kubernetes.io/name: {{ include "sensorium.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "sensorium.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "sensorium.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: agent
{{- end -}}

{{- define "sensorium.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "sensorium.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "sensorium.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* Does the chart ship any policy? */}}
{{- define "sensorium.hasPolicies" -}}
{{- if or .Values.policies .Values.bundledPolicies -}}true{{- end -}}
{{- end -}}

{{/*
The agent config: .Values.config with the keys the chart owns set here. node_name is not written: the
agent reads NODE_NAME (downward API) when the key is absent.
*/}}
{{- define "sensorium.agentConfig" -}}
{{- $cfg := deepCopy (default dict .Values.config) -}}
{{- $_ := unset $cfg "node_name" -}}
{{- $_ := set $cfg "api" (dict "enabled" true "socket" "/var/run/sensorium/api.sock") -}}
{{- $_ := set $cfg "metrics" (dict "enabled" .Values.metrics.enabled "address" "0.0.0.0" "port" (int .Values.metrics.port) "bpf_stats" (.Values.metrics.bpfStats | default false)) -}}
{{- if include "sensorium.hasPolicies" . -}}
{{- $_ := set $cfg "policies" (dict "directory" "/etc/sensorium/policies") -}}
{{- end -}}
{{- $k8s := deepCopy (default dict (get $cfg "kubernetes")) -}}
{{- $_ := set $k8s "enabled" true -}}
{{- $_ := set $cfg "kubernetes" $k8s -}}
{{- toYaml $cfg -}}
{{- end -}}

{{/* The enforcement state directory to mount from the node: set only with config.enforcement.persist. */}}
{{- define "sensorium.stateDir" -}}
{{- $enf := default dict (get (default dict .Values.config) "enforcement") -}}
{{- if get $enf "persist" -}}
{{- $dir := default "/var/lib/sensorium" (get $enf "state_dir") -}}
{{- if not (hasPrefix "/" $dir) -}}
{{- fail (printf "config.enforcement.state_dir: %q must be an absolute path" $dir) -}}
{{- end -}}
{{- if not (hasPrefix "/sys/fs/bpf/" (printf "%s/" (default "/sys/fs/bpf/sensorium" (get $enf "pin_dir")))) -}}
{{- fail "config.enforcement.pin_dir: must be under /sys/fs/bpf (the bpf hostPath the chart mounts), or pins die with the pod" -}}
{{- end -}}
{{- $dir -}}
{{- end -}}
{{- end -}}
