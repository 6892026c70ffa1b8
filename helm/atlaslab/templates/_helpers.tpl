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

{{/* A site-config size (2G, 512M, 1.5GiB, or bytes) as whole bytes, for comparisons and plain quantities. */}}
{{- define "atlaslab.bytes" -}}
{{- $v := toString . | trim | upper | trimSuffix "B" | trimSuffix "I" -}}
{{- $unit := regexFind "[KMGT]$" $v -}}
{{- $n := float64 (trimSuffix $unit $v) -}}
{{- $scale := get (dict "K" 1024.0 "M" 1048576.0 "G" 1073741824.0 "T" 1099511627776.0) $unit | default 1.0 -}}
{{- printf "%.0f" (mulf $n $scale) -}}
{{- end }}

{{/* A site-config duration (90s, 1h30m, 2d, or seconds) as whole seconds. */}}
{{- define "atlaslab.seconds" -}}
{{- $v := toString . | trim | lower -}}
{{- if regexMatch "^[0-9.e+]+$" $v -}}{{ printf "%.0f" (float64 $v) }}
{{- else -}}
{{- $total := 0.0 -}}
{{- $units := dict "s" 1.0 "m" 60.0 "h" 3600.0 "d" 86400.0 "w" 604800.0 -}}
{{- range $part := regexFindAll "[0-9.]+[smhdw]" $v -1 -}}
{{- $u := regexFind "[smhdw]$" $part -}}
{{- $total = addf $total (mulf (float64 (trimSuffix $u $part)) (get $units $u)) -}}
{{- end -}}
{{- printf "%.0f" $total -}}
{{- end -}}
{{- end }}
