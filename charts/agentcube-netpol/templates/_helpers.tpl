{{/* The name every object keeps, as in deploy/ (one release per cluster). */}}
{{- define "acn.name" -}}agentcube-netpol{{- end -}}

{{/* Labels of every object: deploy/'s, and Helm's. */}}
{{- define "acn.labels" -}}
app.kubernetes.io/name: agentcube-netpol
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "acn.selectorLabels" -}}
app.kubernetes.io/name: agentcube-netpol
app.kubernetes.io/component: webhook
{{- end -}}

{{- define "acn.image" -}}
{{- if .Values.image.digest -}}
{{ .Values.image.repository }}@{{ .Values.image.digest }}
{{- else -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}
{{- end -}}

{{- define "acn.serviceName" -}}agentcube-netpol-webhook{{- end -}}

{{/* The canary of the isolation hold: the value, or our Service's ClusterIP:443. */}}
{{- define "acn.canary" -}}
{{- if .Values.isolationHold.canary -}}
{{ .Values.isolationHold.canary }}
{{- else -}}
{{- $service := lookup "v1" "Service" .Release.Namespace (include "acn.serviceName" .) -}}
{{- if not (and $service $service.spec.clusterIP) -}}
{{- fail "isolationHold.enabled: set isolationHold.canary (ADDRESS:PORT), or install once without the hold so the Service has its ClusterIP, then upgrade with it" -}}
{{- end -}}
{{ $service.spec.clusterIP }}:443
{{- end -}}
{{- end -}}

{{/*
The policy flags: only where a value differs from the program's default, so the default
install runs deploy/'s exact command.
*/}}
{{- define "acn.policyArgs" -}}
{{- $v := .Values -}}
{{- if ne $v.agentcube.namespace "agentcube" }}
- --agentcube-namespace={{ $v.agentcube.namespace }}
{{- end }}
{{- range $key, $value := $v.agentcube.routerLabels }}
- --router-label={{ $key }}={{ $value }}
{{- end }}
{{- range $key, $value := $v.agentcube.workloadManagerLabels }}
- --workload-manager-label={{ $key }}={{ $value }}
{{- end }}
{{- range $v.agentcube.privilegedGroups }}
- --privileged-group={{ . }}
{{- end }}
{{- range $v.agentcube.privilegedUsers }}
- --privileged-user={{ . }}
{{- end }}
{{- range $v.dns.peers }}
- --dns-peer={{ toJson . }}
{{- end }}
{{- if $v.dns.toAnywhere }}
- --dns-to-anywhere
{{- end }}
{{- if $v.denyWidening }}
- --deny-widening
{{- end }}
{{- if ne $v.claimLabelInjection "auto" }}
- --claim-label-injection={{ $v.claimLabelInjection }}
{{- end }}
{{- if $v.isolationHold.enabled }}
- --isolation-canary={{ include "acn.canary" . }}
- --isolation-canary-image={{ include "acn.image" . }}
{{- end }}
{{- if ne (toString $v.leaseSeconds) "15" }}
- --lease-seconds={{ $v.leaseSeconds }}
{{- end }}
{{- if ne $v.domains.backend "resolve" }}
- --domain-backend={{ $v.domains.backend }}
{{- end }}
{{- range $v.domains.denyAnswers }}
- --deny-answers={{ . }}
{{- end }}
{{- if $v.domains.dnsServer }}
- --dns-server={{ $v.domains.dnsServer }}
{{- end }}
{{- if ne (toString $v.domains.ttlFloorSeconds) "30" }}
- --domain-ttl-floor={{ $v.domains.ttlFloorSeconds }}
{{- end }}
{{- if ne (toString $v.domains.ttlCeilingSeconds) "300" }}
- --domain-ttl-ceiling={{ $v.domains.ttlCeilingSeconds }}
{{- end }}
{{- if ne (toString $v.domains.graceSeconds) "300" }}
- --domain-grace={{ $v.domains.graceSeconds }}
{{- end }}
{{- end -}}
