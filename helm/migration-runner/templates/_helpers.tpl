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

{{/*
One runner container. Takes a dict: values (this chart's values), fullname, name (container
name), command (migrate or wait), args (extra arguments).
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
    - name: DATABASE_URL_FILE
      value: {{ printf "/var/run/secrets/migration-runner/%s" .values.database.secretKey | quote }}
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
    - name: database-url
      mountPath: /var/run/secrets/migration-runner
      readOnly: true
  resources:
    {{- toYaml .values.resources | nindent 4 }}
  securityContext:
    {{- toYaml .values.securityContext | nindent 4 }}
  terminationMessagePolicy: FallbackToLogsOnError
{{- end -}}

{{/*
The pod volume holding the database URL file (each key of the Secret is a file named after
it). Takes the same dict. No "items" remapping and an explicit "optional", which podman kube
play (4.3) needs.
*/}}
{{- define "migration-runner.volumes" -}}
- name: database-url
  secret:
    secretName: {{ include "migration-runner.secretName" . }}
    optional: false
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
{{- define "migration-runner.initContainer" -}}
{{- $fullname := printf "%s-%s" .root.Release.Name "migration-runner" | trunc 52 | trimSuffix "-" -}}
{{- $args := list -}}
{{- if eq .values.initContainer.command "wait" -}}
{{- $args = list (printf "--wait-timeout=%vs" .values.initContainer.waitTimeoutSeconds) -}}
{{- else -}}
{{- $args = list (printf "--lock-wait-timeout=%vs" .values.job.lockWaitTimeoutSeconds) -}}
{{- end -}}
{{- include "migration-runner.container" (dict "values" .values "fullname" $fullname "name" "migration-runner" "command" .values.initContainer.command "args" $args) -}}
{{- end -}}

{{- define "migration-runner.initContainerVolumes" -}}
{{- $fullname := printf "%s-%s" .root.Release.Name "migration-runner" | trunc 52 | trimSuffix "-" -}}
{{- include "migration-runner.volumes" (dict "values" .values "fullname" $fullname) -}}
{{- end -}}
