{{/* The release's base name. */}}
{{- define "kca.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "kca.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The name of a component's objects: <fullname>-<component>. Call with (list $ "gateway"). */}}
{{- define "kca.componentName" -}}
{{- $root := index . 0 -}}
{{- printf "%s-%s" (include "kca.fullname" $root | trunc 45 | trimSuffix "-") (index . 1) -}}
{{- end -}}

{{/* Selector labels of a component. Call with (list $ "gateway"). */}}
{{- define "kca.selectorLabels" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: {{ include "kca.name" $root }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{/* Every label of a component's objects. Call with (list $ "gateway"). */}}
{{- define "kca.labels" -}}
{{- $root := index . 0 -}}
{{ include "kca.selectorLabels" . }}
helm.sh/chart: {{ printf "%s-%s" $root.Chart.Name $root.Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/version: {{ $root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ $root.Release.Service }}
app.kubernetes.io/part-of: kilo-cloud-agent
{{- with $root.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "kca.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "kca.sandboxImage" -}}
{{- printf "%s:%s" .Values.sandbox.image.repository (default .Chart.AppVersion .Values.sandbox.image.tag) -}}
{{- end -}}

{{- define "kca.secretName" -}}
{{- required "secrets.existingSecret must name the Secret holding the services' secrets" .Values.secrets.existingSecret -}}
{{- end -}}

{{- define "kca.natsUrl" -}}
{{- if .Values.nats.enabled -}}
{{- printf "nats://%s:4222" (include "kca.componentName" (list . "nats")) -}}
{{- else -}}
{{- required "externalNats.url is required when nats.enabled is false" .Values.externalNats.url -}}
{{- end -}}
{{- end -}}

{{- define "kca.serviceUrl" -}}
{{- $root := index . 0 -}}
{{- $component := index . 1 -}}
{{- $svc := index $root.Values.services $component -}}
{{- printf "http://%s:%v" (include "kca.componentName" (list $root $component)) $svc.port -}}
{{- end -}}

{{/*
The plain (non-secret) environment of a component, as a YAML mapping: what the chart
derives (ports, the URLs of the other services, the sandbox settings), then the
component's own `env` values, which win.
*/}}
{{- define "kca.configData" -}}
{{- $root := index . 0 -}}
{{- $component := index . 1 -}}
{{- $svc := index $root.Values.services $component -}}
{{- $d := dict "HOST" "0.0.0.0" "PORT" (toString $svc.port) "LOG_LEVEL" $root.Values.logLevel -}}
{{- /* The event log: gateway (Subscribe), session (lifecycle) and sandbox-manager (writer, owner of the stream and its retention). */ -}}
{{- if has $component (list "gateway" "session" "sandbox-manager") -}}
{{- $_ := set $d "NATS_URL" (include "kca.natsUrl" $root) -}}
{{- $_ := set $d "EVENTS_STREAM" $root.Values.events.stream -}}
{{- $_ := set $d "EVENTS_SUBJECT_PREFIX" $root.Values.events.subjectPrefix -}}
{{- end -}}
{{- if eq $component "gateway" -}}
{{- $_ := set $d "SESSION_SERVICE_URL" (include "kca.serviceUrl" (list $root "session")) -}}
{{- end -}}
{{- if eq $component "session" -}}
{{- $_ := set $d "SANDBOX_MANAGER_URL" (include "kca.serviceUrl" (list $root "sandbox-manager")) -}}
{{- end -}}
{{- if eq $component "sandbox-manager" -}}
{{- $s := $root.Values.sandbox -}}
{{- $_ := set $d "EVENTS_MAX_AGE_MS" (toString (mul (int $root.Values.events.retention.maxAgeHours) 3600000)) -}}
{{- $_ := set $d "EVENTS_MAX_BYTES" (toString (int64 $root.Values.events.retention.maxBytes)) -}}
{{- $_ := set $d "TOKEN_SERVICE_URL" (include "kca.serviceUrl" (list $root "token")) -}}
{{- $_ := set $d "SANDBOX_DRIVER" "kubernetes" -}}
{{- $_ := set $d "KILO_PROVIDER" $root.Values.kiloProvider.kind -}}
{{- if eq $root.Values.kiloProvider.kind "openai-compatible" -}}
{{- $_ := set $d "KILO_PROVIDER_BASE_URL" (required "kiloProvider.baseUrl is required for openai-compatible" $root.Values.kiloProvider.baseUrl) -}}
{{- $_ := set $d "KILO_PROVIDER_ID" $root.Values.kiloProvider.id -}}
{{- end -}}
{{- $_ := set $d "K8S_SANDBOX_NAMESPACE" $s.namespace -}}
{{- $_ := set $d "K8S_SANDBOX_INSTANCE" $root.Release.Name -}}
{{- $_ := set $d "K8S_SANDBOX_IMAGE" (include "kca.sandboxImage" $root) -}}
{{- $_ := set $d "K8S_SANDBOX_IMAGE_PULL_POLICY" $s.image.pullPolicy -}}
{{- with $s.imagePullSecrets }}{{- $_ := set $d "K8S_SANDBOX_IMAGE_PULL_SECRETS" (join "," .) -}}{{- end -}}
{{- with $s.runtimeClassName }}{{- $_ := set $d "K8S_SANDBOX_RUNTIME_CLASS" . -}}{{- end -}}
{{- with $s.priorityClassName }}{{- $_ := set $d "K8S_SANDBOX_PRIORITY_CLASS" . -}}{{- end -}}
{{- $_ := set $d "K8S_SANDBOX_SERVICE_ACCOUNT" (include "kca.componentName" (list $root "sandbox")) -}}
{{- $_ := set $d "K8S_SANDBOX_RUN_AS_USER" (toString $s.runAsUser) -}}
{{- $_ := set $d "K8S_SANDBOX_RUN_AS_GROUP" (toString $s.runAsGroup) -}}
{{- $_ := set $d "K8S_SANDBOX_FS_GROUP" (toString $s.fsGroup) -}}
{{- $_ := set $d "K8S_SANDBOX_CPU_REQUEST" (toString $s.resources.requests.cpu) -}}
{{- $_ := set $d "K8S_SANDBOX_CPU_LIMIT" (toString $s.resources.limits.cpu) -}}
{{- $_ := set $d "K8S_SANDBOX_MEMORY_REQUEST" (toString $s.resources.requests.memory) -}}
{{- $_ := set $d "K8S_SANDBOX_MEMORY_LIMIT" (toString $s.resources.limits.memory) -}}
{{- $_ := set $d "K8S_SANDBOX_EPHEMERAL_STORAGE_REQUEST" (toString (index $s.resources.requests "ephemeral-storage")) -}}
{{- $_ := set $d "K8S_SANDBOX_EPHEMERAL_STORAGE_LIMIT" (toString (index $s.resources.limits "ephemeral-storage")) -}}
{{- $_ := set $d "K8S_SANDBOX_WORKSPACE_VOLUME" $s.workspace.volume -}}
{{- $_ := set $d "K8S_SANDBOX_WORKSPACE_SIZE" (toString $s.workspace.size) -}}
{{- with $s.workspace.storageClassName }}{{- $_ := set $d "K8S_SANDBOX_WORKSPACE_STORAGE_CLASS" . -}}{{- end -}}
{{- $_ := set $d "K8S_SANDBOX_HOME_SIZE" (toString $s.homeSize) -}}
{{- $_ := set $d "K8S_SANDBOX_TMP_SIZE" (toString $s.tmpSize) -}}
{{- $_ := set $d "K8S_SANDBOX_IDLE_TIMEOUT_MS" (toString (mul (int $s.idleTimeoutMinutes) 60000)) -}}
{{- $_ := set $d "K8S_SANDBOX_POD_START_TIMEOUT_MS" (toString (mul (int $s.podStartTimeoutSeconds) 1000)) -}}
{{- with $s.nodeSelector }}{{- $_ := set $d "K8S_SANDBOX_NODE_SELECTOR" (toJson .) -}}{{- end -}}
{{- with $s.tolerations }}{{- $_ := set $d "K8S_SANDBOX_TOLERATIONS" (toJson .) -}}{{- end -}}
{{- end -}}
{{- range $k, $v := $svc.env -}}
{{- $_ := set $d $k (toString $v) -}}
{{- end -}}
{{- toYaml $d -}}
{{- end -}}

{{/* A NetworkPolicy peer: the pods of a component. Call with (list $ "session"). */}}
{{- define "kca.peer" -}}
- podSelector:
    matchLabels:
      {{- include "kca.selectorLabels" . | nindent 6 }}
{{- end -}}
{{- define "kca.anywhere" -}}
- ipBlock:
    cidr: 0.0.0.0/0
{{- end -}}
