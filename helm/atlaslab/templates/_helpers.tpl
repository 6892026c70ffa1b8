{{- define "atlaslab.labels" -}}
app.kubernetes.io/name: atlaslab
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end }}

{{- define "atlaslab.prefix" -}}
{{- dig "kubernetes" "namespace_prefix" "atlaslab-" .Values.atlaslab -}}
{{- end }}

{{/* Kubernetes resource name of a GPU request: whole GPU, MIG profile or shared seat. */}}
{{- define "atlaslab.gpuResource" -}}
{{- $gpu := .gpu -}}
{{- if $gpu.count -}}{{ dig "kubernetes" "gpu_resource" "nvidia.com/gpu" .site }}
{{- else if $gpu.mig -}}nvidia.com/mig-{{ $gpu.mig }}
{{- else -}}{{ dig "kubernetes" "shared_gpu_resource" "nvidia.com/gpu.shared" .site }}
{{- end -}}
{{- end }}

{{/* A site-config size (512M, 2G, 1GiB or bytes) as a Kubernetes quantity; site sizes are binary (G = GiB). */}}
{{- define "atlaslab.memory" -}}
{{- $m := toString . | trimSuffix "B" -}}
{{- if regexMatch "^[0-9.]+[KMGT]$" $m -}}{{ $m }}i{{- else -}}{{ $m }}{{- end -}}
{{- end }}

{{/* Environment ids a tenant's members may start (the tenant's own list; courses and teams add per user). */}}
{{- define "atlaslab.tenantEnvs" -}}
{{- $envs := list -}}
{{- range $t := .tenant.environments | default list }}{{ $envs = append $envs $t }}{{ end -}}
{{- range $cid, $c := .site.courses | default dict }}{{ if eq $c.tenant $.tid }}{{ range $e := $c.environments | default list }}{{ $envs = append $envs $e }}{{ end }}{{ end }}{{ end -}}
{{- range $tid2, $t := .site.teams | default dict }}{{ if eq $t.tenant $.tid }}{{ range $e := $t.environments | default list }}{{ $envs = append $envs $e }}{{ end }}{{ end }}{{ end -}}
{{- $envs | uniq | toJson -}}
{{- end }}
