{{/* Names and labels. */}}
{{- define "migration-runner.fullname" -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 52 | trimSuffix "-" -}}
{{- end -}}

{{- define "migration-runner.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* The Secret holding the database URL: the existing one, or the hook Secret. */}}
{{- define "migration-runner.secretName" -}}
{{- if .values.database.createSecret -}}
{{- printf "%s-database" .fullname -}}
{{- else -}}
{{- required "database.existingSecret is required (or set database.createSecret with database.url)" .values.database.existingSecret -}}
{{- end -}}
{{- end -}}

{{/* Where a fleet's targets Secret is mounted (its keys are files there). */}}
{{- define "migration-runner.targetsDir" -}}
/var/run/secrets/migration-runner-targets
{{- end -}}

{{/*
With fleet.enabled: the runner's flag naming the one target source, --targets (the file of
fleet.targets.existingSecret's key), --targets-query or --targets-match; fails the render
unless exactly one is set (values.schema.json says so too, unless skipped). Takes the dict.
*/}}
{{- define "migration-runner.fleetTargets" -}}
{{- $fleet := .values.fleet -}}
{{- $given := list -}}
{{- if $fleet.targets.existingSecret }}{{ $given = append $given "fleet.targets.existingSecret" }}{{ end -}}
{{- if $fleet.targetsQuery }}{{ $given = append $given "fleet.targetsQuery" }}{{ end -}}
{{- if $fleet.targetsMatch }}{{ $given = append $given "fleet.targetsMatch" }}{{ end -}}
{{- if ne (len $given) 1 -}}
{{- fail (printf "fleet.enabled needs exactly one target source: fleet.targets.existingSecret, fleet.targetsQuery or fleet.targetsMatch (given: %s)" (join ", " $given | default "none")) -}}
{{- end -}}
{{- if $fleet.targets.existingSecret -}}
--targets={{ include "migration-runner.targetsDir" . }}/{{ $fleet.targets.key }}
{{- else if $fleet.targetsQuery -}}
--targets-query={{ $fleet.targetsQuery }}
{{- else -}}
--targets-match={{ $fleet.targetsMatch }}
{{- end -}}
{{- end -}}

{{/* Where the migrations come from: "image" (migrations.fromImage), "configMap", or "" (the runner image's own). */}}
{{- define "migration-runner.migrationsSource" -}}
{{- if .values.migrations.configMap -}}configMap{{- else if .values.migrations.fromImage.repository -}}image{{- end -}}
{{- end -}}

{{/*
One runner container. Takes a dict: values (this chart's values), root (the top-level
context), fullname, name (container name), command (migrate, wait or fleet), args (extra
arguments), and optionally extraEnv, and noDatabaseSecret (true: neither DATABASE_URL_FILE nor
the Secret's mount, for a fleet whose targets come from their own file).
*/}}
{{- define "migration-runner.container" -}}
- name: {{ .name }}
  image: {{ printf "%s:%s" .values.image.repository .values.image.tag | quote }}
  imagePullPolicy: {{ .values.image.pullPolicy }}
  args:
    - {{ .command }}
    {{- range .args }}
    - {{ . | quote }}
    {{- end }}
  env:
    {{- if not .noDatabaseSecret }}
    - name: DATABASE_URL_FILE
      value: {{ printf "/var/run/secrets/migration-runner/%s" .values.database.secretKey | quote }}
    {{- end }}
    - name: MIGRATIONS_DIR
      value: {{ .values.migrations.dir | quote }}
    - name: RUNNER_HISTORY_TABLE
      value: {{ .values.migrations.historyTable | quote }}
    - name: RUNNER_LOG_FORMAT
      value: json
    - name: RUNNER_LOG_LEVEL
      value: {{ .values.logLevel | quote }}
    {{- if .values.metrics.pushgatewayUrl }}
    - name: RUNNER_PUSHGATEWAY_URL
      value: {{ .values.metrics.pushgatewayUrl | quote }}
    - name: RUNNER_METRICS_JOB
      value: {{ .values.metrics.job | quote }}
    {{- end }}
    {{- with .extraEnv }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  volumeMounts:
    {{- if not .noDatabaseSecret }}
    - name: database-url
      mountPath: /var/run/secrets/migration-runner
      readOnly: true
    {{- end }}
    {{- if .targetsSecret }}
    - name: targets
      mountPath: {{ include "migration-runner.targetsDir" . }}
      readOnly: true
    {{- end }}
    {{- if include "migration-runner.migrationsSource" . }}
    - name: migrations
      mountPath: {{ .values.migrations.dir | quote }}
      readOnly: true
    {{- end }}
  {{- include "migration-runner.restricted" . | nindent 2 }}
{{- end -}}

{{/* Resources, securityContext and termination message of every container. Takes the same dict. */}}
{{- define "migration-runner.restricted" -}}
resources:
  {{- toYaml .values.resources | nindent 2 }}
securityContext:
  {{- toYaml .values.securityContext | nindent 2 }}
terminationMessagePolicy: FallbackToLogsOnError
{{- end -}}

{{/*
With migrations.fromImage: the init container that copies the migrations out of the
application's image into the "migrations" emptyDir (mounted at /runner-migrations here, and
read-only at migrations.dir in the runner). Runs that image with "command" (default: cp -R
path/. /runner-migrations/), as the pod's user. Takes the same dict; renders nothing otherwise.
*/}}
{{- define "migration-runner.copyContainer" -}}
{{- $from := .values.migrations.fromImage -}}
{{- if eq (include "migration-runner.migrationsSource" .) "image" -}}
- name: copy-migrations
  image: {{ printf "%s:%s" $from.repository $from.tag | quote }}
  imagePullPolicy: {{ $from.pullPolicy }}
  command: {{ toJson ($from.command | default (list "cp" "-R" (printf "%s/." (trimSuffix "/" $from.path)) "/runner-migrations/")) }}
  volumeMounts:
    - name: migrations
      mountPath: /runner-migrations
  {{- include "migration-runner.restricted" . | nindent 2 }}
{{- end -}}
{{- end -}}

{{/*
The pod volumes: the database URL file (each key of the Secret is a file named after it;
not with noDatabaseSecret), a fleet's targets Secret (targetsSecret, its name), and the
migrations' volume if any. Takes the same dict. No "items" remapping and an explicit
"optional", which podman kube play (4.3) needs.
*/}}
{{- define "migration-runner.volumes" -}}
{{- $source := include "migration-runner.migrationsSource" . -}}
{{- if not .noDatabaseSecret }}
- name: database-url
  secret:
    secretName: {{ include "migration-runner.secretName" . }}
    optional: false
{{- end }}
{{- with .targetsSecret }}
- name: targets
  secret:
    secretName: {{ . }}
    optional: false
{{- end }}
{{- if eq $source "configMap" }}
- name: migrations
  configMap:
    name: {{ tpl .values.migrations.configMap .root | quote }}
    optional: false
{{- else if eq $source "image" }}
- name: migrations
  emptyDir: {}
{{- end }}
{{- end -}}

{{/*
For application charts that ship their migrations in a ConfigMap (migrations.configMap): that
ConfigMap, one key per file, built from the parent's own files. A hook one weight before the
Job, so that it exists when the Job starts (an ordinary resource would be created after the
pre-install hooks); like every hook resource it is not managed by the release. Fails at render
time when the files exceed the 1 MiB a ConfigMap holds (keys included). Takes a dict with
"values" and "root" as below, and "files":

  {{- include "migration-runner.migrationsConfigMap" (dict "values" (index .Values "migration-runner") "root" . "files" (.Files.Glob "migrations/*.sql")) }}
*/}}
{{- define "migration-runner.migrationsConfigMap" -}}
{{- $size := 0 -}}
{{- range $path, $bytes := .files -}}
{{- $size = add $size (len (base $path)) (len $bytes) -}}
{{- end -}}
{{- if not .files -}}
{{- fail "migration-runner.migrationsConfigMap: no migration files matched" -}}
{{- end -}}
{{- if gt (int $size) 1048576 -}}
{{- fail (printf "migrations.configMap: the files take %d bytes, over the 1 MiB (1048576 bytes) a ConfigMap can hold; ship them in an image instead (migrations.fromImage)" (int $size)) -}}
{{- end -}}
apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ tpl (required "migrations.configMap (the ConfigMap's name) is required" .values.migrations.configMap) .root | quote }}
  labels:
    {{- include "migration-runner.labels" .root | nindent 4 }}
  annotations:
    helm.sh/hook: pre-install,pre-upgrade
    helm.sh/hook-weight: {{ sub (int .values.job.hookWeight) 1 | quote }}
    helm.sh/hook-delete-policy: before-hook-creation
data:
  {{- .files.AsConfig | nindent 2 }}
{{- end -}}

{{/*
For application charts that depend on this chart: render into a pod spec's initContainers
and volumes. Takes a dict with "values" (this chart's values as the parent sees them, e.g.
(index .Values "migration-runner")) and "root" (the parent's top-level context). See
helm/examples/app.

  initContainers:
    {{- include "migration-runner.initContainer" (dict "values" (index .Values "migration-runner") "root" .) | nindent 8 }}
  volumes:
    {{- include "migration-runner.initContainerVolumes" (dict "values" (index .Values "migration-runner") "root" .) | nindent 8 }}
*/}}
{{/* This chart's fullname as a dependency of the chart whose context is "root" (as its Secret and Job are named). */}}
{{- define "migration-runner.dependencyFullname" -}}
{{- printf "%s-%s" .root.Release.Name "migration-runner" | trunc 52 | trimSuffix "-" -}}
{{- end -}}

{{- define "migration-runner.initContainer" -}}
{{- $ctx := dict "values" .values "root" .root "fullname" (include "migration-runner.dependencyFullname" .) -}}
{{- $args := list -}}
{{- if eq .values.initContainer.command "wait" -}}
{{- $args = list (printf "--wait-timeout=%vs" .values.initContainer.waitTimeoutSeconds) -}}
{{- else -}}
{{- $args = list (printf "--lock-wait-timeout=%vs" .values.job.lockWaitTimeoutSeconds) -}}
{{- end -}}
{{- $containers := list (include "migration-runner.container" (merge (dict "name" "migration-runner" "command" .values.initContainer.command "args" $args) $ctx)) -}}
{{- with include "migration-runner.copyContainer" $ctx -}}
{{- $containers = prepend $containers . -}}
{{- end -}}
{{- join "\n" $containers -}}
{{- end -}}

{{- define "migration-runner.initContainerVolumes" -}}
{{- include "migration-runner.volumes" (dict "values" .values "root" .root "fullname" (include "migration-runner.dependencyFullname" .)) -}}
{{- end -}}
