{{/* Names and labels shared by the templates. */}}
{{- define "meshgate.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "meshgate.fullname" -}}
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

{{- define "meshgate.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "meshgate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: meshgate
{{- end -}}

{{/* selector labels; call with (dict "ctx" $ "component" "gateway") */}}
{{- define "meshgate.selector" -}}
app.kubernetes.io/name: {{ include "meshgate.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "meshgate.image" -}}
{{- printf "%s:%s" .Values.image.repository (toString .Values.image.tag) -}}
{{- end -}}

{{- define "meshgate.adminSecretName" -}}
{{- default (printf "%s-admin" (include "meshgate.fullname" .)) .Values.admin.existingSecret -}}
{{- end -}}

{{- define "meshgate.adminServiceName" -}}
{{- printf "%s-admin" (include "meshgate.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "meshgate.etcdName" -}}
{{- printf "%s-etcd" (include "meshgate.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "meshgate.ingressControllerName" -}}
{{- printf "%s-ingress-controller" (include "meshgate.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "meshgate.serviceAccountName" -}}
{{- if .Values.ingressController.serviceAccount.create -}}
{{- default (include "meshgate.ingressControllerName" .) .Values.ingressController.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.ingressController.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "meshgate.meshControllerName" -}}
{{- printf "%s-mesh-controller" (include "meshgate.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "meshgate.meshControllerServiceAccountName" -}}
{{- if .Values.meshController.serviceAccount.create -}}
{{- default (include "meshgate.meshControllerName" .) .Values.meshController.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.meshController.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* HOST:PORT of the mesh controller's plugin stream, as the sidecars dial it (MESHGATE_PLUGINS_ADDRESS) */}}
{{- define "meshgate.meshControllerAddress" -}}
{{- printf "%s.%s.svc:%d" (include "meshgate.meshControllerName" .) .Release.Namespace (int .Values.meshController.port) -}}
{{- end -}}

{{/* the Admin API runs in the etcd and standalone modes (role traditional) */}}
{{- define "meshgate.hasAdmin" -}}
{{- if has .Values.gateway.mode (list "etcd" "standalone") -}}true{{- end -}}
{{- end -}}

{{- define "meshgate.etcdHosts" -}}
{{- if .Values.etcd.bundled.enabled -}}
{{- list (printf "http://%s.%s.svc:2379" (include "meshgate.etcdName" .) .Release.Namespace) | toJson -}}
{{- else -}}
{{- if not .Values.etcd.host -}}
{{- fail "gateway.mode etcd needs etcd.host (or etcd.bundled.enabled: true)" -}}
{{- end -}}
{{- .Values.etcd.host | toJson -}}
{{- end -}}
{{- end -}}

{{/* the node config (config.yaml), APISIX 3.x layout */}}
{{- define "meshgate.nodeConfig" -}}
{{- $g := .Values.gateway -}}
{{- $cfg := dict -}}
{{- $apisix := dict "node_listen" (list (int $g.http.containerPort)) "enable_control" true "control" (dict "ip" "0.0.0.0" "port" (int $g.controlPort)) -}}
{{- if $g.tls.enabled -}}
{{- $_ := set $apisix "ssl" (dict "enable" true "listen" (list (dict "port" (int $g.tls.containerPort)))) -}}
{{- else -}}
{{- $_ := set $apisix "ssl" (dict "enable" false) -}}
{{- end -}}
{{- $_ := set $cfg "apisix" $apisix -}}
{{- $_ := set $cfg "nginx_config" (dict "worker_processes" $g.workerProcesses) -}}
{{- $admin := dict "admin_key" (list (dict "name" "admin" "key" "${{MESHGATE_ADMIN_KEY}}" "role" "admin")) "admin_listen" (dict "ip" "0.0.0.0" "port" (int .Values.admin.port)) "allow_admin" .Values.admin.allow -}}
{{- if eq $g.mode "etcd" -}}
{{- $etcd := dict "host" (include "meshgate.etcdHosts" . | fromJsonArray) "prefix" .Values.etcd.prefix "timeout" (int .Values.etcd.timeout) -}}
{{- if .Values.etcd.user -}}
{{- $_ := set $etcd "user" .Values.etcd.user -}}
{{- $_ := set $etcd "password" .Values.etcd.password -}}
{{- end -}}
{{- $_ := set $cfg "deployment" (dict "role" "traditional" "role_traditional" (dict "config_provider" "etcd") "admin" $admin "etcd" $etcd) -}}
{{- else if eq $g.mode "standalone" -}}
{{- $_ := set $cfg "deployment" (dict "role" "traditional" "role_traditional" (dict "config_provider" "yaml") "admin" $admin) -}}
{{- else if eq $g.mode "data_plane" -}}
{{- $_ := set $cfg "deployment" (dict "role" "data_plane" "role_data_plane" (dict "config_provider" "yaml")) -}}
{{- else -}}
{{- fail (printf "gateway.mode must be etcd, standalone or data_plane, not %q" $g.mode) -}}
{{- end -}}
{{- $_ := set $cfg "plugin_attr" (dict "prometheus" (dict "export_addr" (dict "ip" "0.0.0.0" "port" (int $g.metricsPort)))) -}}
{{- mustMergeOverwrite $cfg (deepCopy $g.extraConfig) | toYaml -}}
{{- end -}}

{{/* The gateway Service's type: gateway.service.type, or APISIX's chart key gateway.type when set
(so `--set gateway.type=NodePort`, as APISIX's install commands write it, works unchanged) */}}
{{- define "meshgate.serviceType" -}}
{{- .Values.gateway.type | default .Values.gateway.service.type -}}
{{- end -}}

{{/* "true" when the ingress controller is on: ingressController.enabled, or APISIX's chart key
ingress-controller.enabled (`--set ingress-controller.enabled=true`) */}}
{{- define "meshgate.ingressControllerEnabled" -}}
{{- $alias := index .Values "ingress-controller" | default dict -}}
{{- if or .Values.ingressController.enabled $alias.enabled -}}true{{- end -}}
{{- end -}}
