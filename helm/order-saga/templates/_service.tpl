{{/*
One gRPC service of the saga: its Deployment, its Service and, when enabled, its
PodDisruptionBudget; with a SQLite store on persistence, its PersistentVolumeClaim; with
the in-chart PostgreSQL, the Secret holding its DATABASE_URL. The one template every
service is rendered from (services.yaml ranges over .Values.services); what differs
between services is in values and in "order-saga.serviceFacts".

Call with (dict "root" $ "key" "payment" "svc" .Values.services.payment).
*/}}
{{- define "order-saga.service" -}}
{{- $root := .root }}
{{- $svc := .svc }}
{{- $facts := index (include "order-saga.serviceFacts" $root | fromYaml) .key }}
{{- $name := include "order-saga.serviceName" (dict "root" $root "key" .key) }}
{{- $ctx := dict "root" $root "component" $facts.component }}
{{- $p := $facts.envPrefix }}
{{- $shutdown := $root.Values.shutdown }}
{{- /* The service waits drainDelayMs for endpoints to drop it, then drains for up to
gracePeriodSecs; the kubelet must not SIGKILL it before, so leave 5 s more. */}}
{{- $drainSecs := div (add (int64 $shutdown.drainDelayMs) 999) 1000 }}
{{- $terminationGrace := add $drainSecs (int64 $shutdown.gracePeriodSecs) 5 }}
{{- $store := $svc.store }}
{{- $pg := $root.Values.postgresql }}
{{- $tls := $root.Values.tls }}
{{- $metrics := $root.Values.metrics }}
{{- include "order-saga.tlsCheck" $root }}
{{- /* SQLite keeps its file under /data: a claim (one pod at a time, so Recreate) or, with
persistence off, an emptyDir that dies with the pod. PostgreSQL and memory need no volume. */}}
{{- $sqlite := eq $store.backend "sqlite" }}
{{- $claim := and $sqlite $svc.persistence.enabled }}
{{- $dataName := include "order-saga.serviceDataName" (dict "root" $root "key" .key) }}
{{- /* PostgreSQL: the service's own Secret (store.existingSecret) wins, else the in-chart
PostgreSQL; values.schema.json has already refused a URL Secret on another backend. */}}
{{- $postgres := eq $store.backend "postgres" }}
{{- $inChartPostgres := and $postgres (not $store.existingSecret) }}
{{- if and $inChartPostgres (not $pg.enabled) }}
{{- fail (printf "services.%s.store.backend=postgres needs services.%s.store.existingSecret (a Secret holding the PostgreSQL URL) or postgresql.enabled=true" .key .key) }}
{{- end }}
{{- $probePort := ternary $tls.healthPort $svc.port $tls.enabled | int64 }}
{{- $skips := list }}
{{- if and $inChartPostgres $svc.image.digest (not $pg.image.digest) }}
{{- $skips = append $skips "CKV_K8S_43=the wait-for-postgresql init container runs the pinned upstream postgres tag; set postgresql.image.digest to pull it by digest" }}
{{- end }}
{{- if $postgres }}
{{- $skips = append $skips "CKV_K8S_35=the binaries read the PostgreSQL URL only from the DATABASE_URL variable (no file option); it comes from a Secret by secretKeyRef and never appears in the manifest" }}
{{- end }}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ $name }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "order-saga.labels" $ctx | nindent 4 }}
  {{- with include "order-saga.checkovSkips" (dict "root" $root "image" $svc.image "extra" $skips) | trim }}
  annotations:
    {{- . | nindent 4 }}
  {{- end }}
spec:
  replicas: {{ $svc.replicaCount | int64 }}
  revisionHistoryLimit: 3
  selector:
    matchLabels:
      {{- include "order-saga.selectorLabels" $ctx | nindent 6 }}
  strategy:
    {{- if $claim }}
    # The SQLite file is on a ReadWriteOnce claim: the old pod must be gone before the new
    # one opens it (two writers would corrupt it; a surge pod would also wait for the volume).
    type: Recreate
    {{- else }}
    type: RollingUpdate
    rollingUpdate:
      maxSurge: 1
      maxUnavailable: 0
    {{- end }}
  template:
    metadata:
      labels:
        {{- include "order-saga.labels" $ctx | nindent 8 }}
      {{- if $metrics.enabled }}
      # For a Prometheus that discovers pods by annotation (the community chart's default job).
      annotations:
        prometheus.io/scrape: "true"
        prometheus.io/port: {{ $metrics.port | int64 | toString | quote }}
        prometheus.io/path: /metrics
      {{- end }}
    spec:
      # Service links would add variables such as ORDER_SAGA_ORDER_PORT for every
      # Service in the namespace; one starting with {{ $p }}_ would be read as a setting
      # (unknown fields are denied) and stop the service at start-up.
      enableServiceLinks: false
      automountServiceAccountToken: false
      terminationGracePeriodSeconds: {{ $terminationGrace }}
      {{- with $root.Values.imagePullSecrets }}
      imagePullSecrets:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      securityContext:
        {{- include "order-saga.podSecurityContext" 65532 | nindent 8 }}
      {{- if $inChartPostgres }}
      # The service exits (69) when its store cannot be opened: on a fresh install, wait
      # here until the in-chart PostgreSQL takes connections instead of crash-looping.
      initContainers:
        - name: wait-for-postgresql
          image: {{ include "order-saga.image" (dict "root" $root "image" $pg.image) | quote }}
          imagePullPolicy: {{ $pg.image.pullPolicy }}
          command:
            - sh
            - -c
            - until pg_isready --quiet --host "$PGHOST" --port 5432 --username "$PGUSER"; do sleep 1; done
          env:
            - name: PGHOST
              value: {{ include "order-saga.postgresqlName" $root | quote }}
            - name: PGUSER
              value: {{ $pg.auth.username | quote }}
          resources:
            {{- include "order-saga.waitResources" $root | nindent 12 }}
          securityContext:
            {{- include "order-saga.containerSecurityContext" 65532 | nindent 12 }}
      {{- end }}
      containers:
        - name: {{ $facts.component }}
          image: {{ include "order-saga.image" (dict "root" $root "image" $svc.image) | quote }}
          imagePullPolicy: {{ $root.Values.image.pullPolicy }}
          ports:
            - name: grpc
              containerPort: {{ $svc.port | int64 }}
              protocol: TCP
            {{- if $tls.enabled }}
            # Plaintext, grpc.health.v1.Health only: kubelet gRPC probes cannot speak TLS.
            - name: health
              containerPort: {{ $tls.healthPort | int64 }}
              protocol: TCP
            {{- end }}
            {{- if $metrics.enabled }}
            # GET /metrics, plaintext HTTP (Prometheus text exposition).
            - name: metrics
              containerPort: {{ $metrics.port | int64 }}
              protocol: TCP
            {{- end }}
          env:
            - name: {{ $p }}_LISTEN_ADDR
              value: {{ printf "0.0.0.0:%d" ($svc.port | int64) | quote }}
            - name: {{ $p }}_METRICS_LISTEN_ADDR
              value: {{ ternary (printf "0.0.0.0:%d" ($metrics.port | int64)) "" $metrics.enabled | quote }}
            {{- if $tls.enabled }}
            - name: {{ $p }}_HEALTH_LISTEN_ADDR
              value: {{ printf "0.0.0.0:%d" ($tls.healthPort | int64) | quote }}
            - name: {{ $p }}_TLS__CERT_FILE
              value: {{ printf "%s/tls.crt" (include "order-saga.tlsDir" $root) | quote }}
            - name: {{ $p }}_TLS__KEY_FILE
              value: {{ printf "%s/tls.key" (include "order-saga.tlsDir" $root) | quote }}
            {{- if $tls.mutual }}
            - name: {{ $p }}_TLS__CLIENT_CA_FILE
              value: {{ printf "%s/client-ca.crt" (include "order-saga.tlsDir" $root) | quote }}
            {{- end }}
            {{- end }}
            - name: {{ $p }}_STORE__BACKEND
              value: {{ $store.backend | quote }}
            {{- if $sqlite }}
            - name: {{ $p }}_STORE__DATA_DIR
              value: /data
            - name: {{ $p }}_STORE__SQLITE_SYNCHRONOUS
              value: {{ $store.sqliteSynchronous | quote }}
            {{- else if $store.existingSecret }}
            - name: DATABASE_URL
              valueFrom:
                secretKeyRef:
                  name: {{ $store.existingSecret }}
                  key: {{ $store.existingSecretKey }}
            {{- else if and $postgres $pg.auth.existingSecret }}
            # postgresql.auth.existingSecret: the chart never sees the password, so the URL
            # is put together by the kubelet ($(VAR) expansion); the password must be URL-safe.
            - name: DATABASE_PASSWORD
              valueFrom:
                secretKeyRef:
                  name: {{ $pg.auth.existingSecret }}
                  key: {{ $pg.auth.secretKey }}
            - name: DATABASE_URL
              value: {{ printf "postgres://%s:$(DATABASE_PASSWORD)@%s:5432/%s" $pg.auth.username (include "order-saga.postgresqlName" $root) (include "order-saga.databaseName" .key) | quote }}
            {{- else if $postgres }}
            - name: DATABASE_URL
              valueFrom:
                secretKeyRef:
                  name: {{ include "order-saga.serviceDatabaseSecretName" (dict "root" $root "key" .key) }}
                  key: DATABASE_URL
            {{- end }}
            - name: {{ $p }}_LIMITS__MAX_CONCURRENT_REQUESTS
              value: {{ $svc.limits.maxConcurrentRequests | int64 | toString | quote }}
            - name: {{ $p }}_LIMITS__REQUEST_TIMEOUT_MS
              value: {{ $svc.limits.requestTimeoutMs | int64 | toString | quote }}
            - name: {{ $p }}_SHUTDOWN__DRAIN_DELAY_MS
              value: {{ $shutdown.drainDelayMs | int64 | toString | quote }}
            - name: {{ $p }}_SHUTDOWN__GRACE_PERIOD_SECS
              value: {{ $shutdown.gracePeriodSecs | int64 | toString | quote }}
            - name: {{ $p }}_FAULTS__TRANSIENT_ERROR_RATE
              value: {{ $svc.faults.transientErrorRate | toString | quote }}
            - name: {{ $p }}_FAULTS__LATENCY_MS
              value: {{ $svc.faults.latencyMs | int64 | toString | quote }}
            {{- if $facts.businessFaults }}
            - name: {{ $p }}_FAULTS__FAILURE_RATE
              value: {{ $svc.faults.failureRate | toString | quote }}
            - name: {{ $p }}_FAULTS__ALLOW_INJECTION
              value: {{ $svc.faults.allowInjection | toString | quote }}
            {{- end }}
            {{- include "order-saga.commonEnv" (dict "root" $root "component" $facts.component "image" $svc.image) | trim | nindent 12 }}
          # Native gRPC probes ask for the named service: tonic-health reports the
          # overall "" SERVING as soon as it starts, the named one only once its store is
          # open and it listens.{{ if $tls.enabled }} With TLS they go to the plaintext health port.{{ end }}
          # Timeouts and thresholds leave room for a busy node, where one slow answer (a 1 s
          # timeout, failureThreshold 1) dropped a healthy pod from its Service. A pod being
          # shut down leaves the endpoints when it is deleted, not through this probe.
          startupProbe:
            grpc:
              port: {{ $probePort }}
              service: {{ $facts.healthService }}
            periodSeconds: 1
            failureThreshold: 60
            timeoutSeconds: 3
          readinessProbe:
            grpc:
              port: {{ $probePort }}
              service: {{ $facts.healthService }}
            periodSeconds: 2
            failureThreshold: 3
            timeoutSeconds: 3
          livenessProbe:
            grpc:
              port: {{ $probePort }}
              service: {{ $facts.healthService }}
            periodSeconds: 10
            failureThreshold: 3
            timeoutSeconds: 5
          resources:
            {{- toYaml $svc.resources | nindent 12 }}
          securityContext:
            {{- include "order-saga.containerSecurityContext" 65532 | nindent 12 }}
          volumeMounts:
            # The root filesystem is read-only; SQLite (and anything else) may need temp files.
            - name: tmp
              mountPath: /tmp
            {{- if $sqlite }}
            - name: data
              mountPath: /data
            {{- end }}
            {{- if $tls.enabled }}
            - name: tls
              mountPath: {{ include "order-saga.tlsDir" $root }}
              readOnly: true
            {{- end }}
      volumes:
        - name: tmp
          emptyDir:
            sizeLimit: 64Mi
        {{- if $claim }}
        - name: data
          persistentVolumeClaim:
            claimName: {{ $dataName }}
        {{- else if $sqlite }}
        # persistence.enabled=false: the SQLite file lives and dies with the pod.
        - name: data
          emptyDir:
            sizeLimit: {{ $svc.persistence.size | quote }}
        {{- end }}
        {{- if $tls.enabled }}
        # Its certificate and key, and (mutual TLS) the CA of the client certificates: the
        # ca.crt of tls.clientSecretName, so no client key is mounted here.
        - name: tls
          projected:
            defaultMode: 0440
            sources:
              - secret:
                  name: {{ $tls.secretName }}
                  items:
                    - key: tls.crt
                      path: tls.crt
                    - key: tls.key
                      path: tls.key
              {{- if $tls.mutual }}
              - secret:
                  name: {{ $tls.clientSecretName }}
                  items:
                    - key: ca.crt
                      path: client-ca.crt
              {{- end }}
        {{- end }}
---
apiVersion: v1
kind: Service
metadata:
  name: {{ $name }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "order-saga.labels" $ctx | nindent 4 }}
  {{- with include "order-saga.checkovSkips" (dict "root" $root) | trim }}
  annotations:
    {{- . | nindent 4 }}
  {{- end }}
spec:
  type: ClusterIP
  selector:
    {{- include "order-saga.selectorLabels" $ctx | nindent 4 }}
  ports:
    - name: grpc
      port: {{ $svc.port | int64 }}
      targetPort: grpc
      protocol: TCP
      appProtocol: grpc
    {{- if $metrics.enabled }}
    - name: metrics
      port: {{ $metrics.port | int64 }}
      targetPort: metrics
      protocol: TCP
      appProtocol: http
    {{- end }}
{{- if $root.Values.podDisruptionBudget.enabled }}
---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ $name }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "order-saga.labels" $ctx | nindent 4 }}
spec:
  {{- with $root.Values.podDisruptionBudget }}
  {{- if kindIs "string" .maxUnavailable }}
  maxUnavailable: {{ .maxUnavailable | quote }}
  {{- else }}
  maxUnavailable: {{ .maxUnavailable | int64 }}
  {{- end }}
  {{- end }}
  selector:
    matchLabels:
      {{- include "order-saga.selectorLabels" $ctx | nindent 6 }}
{{- end }}
{{- if $claim }}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata:
  name: {{ $dataName }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "order-saga.labels" $ctx | nindent 4 }}
  {{- with include "order-saga.checkovSkips" (dict "root" $root) | trim }}
  annotations:
    {{- . | nindent 4 }}
  {{- end }}
spec:
  accessModes:
    {{- toYaml $svc.persistence.accessModes | nindent 4 }}
  {{- with include "order-saga.storageClass" $svc.persistence.storageClass | trim }}
  {{- . | nindent 2 }}
  {{- end }}
  resources:
    requests:
      storage: {{ $svc.persistence.size | quote }}
{{- end }}
{{- if and $inChartPostgres (not $pg.auth.existingSecret) }}
---
# DATABASE_URL of {{ $facts.component }}: its own database in the in-chart PostgreSQL.
apiVersion: v1
kind: Secret
metadata:
  name: {{ include "order-saga.serviceDatabaseSecretName" (dict "root" $root "key" .key) }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "order-saga.labels" $ctx | nindent 4 }}
  {{- with include "order-saga.checkovSkips" (dict "root" $root) | trim }}
  annotations:
    {{- . | nindent 4 }}
  {{- end }}
type: Opaque
data:
  DATABASE_URL: {{ printf "postgres://%s:%s@%s:5432/%s" $pg.auth.username (urlquery $pg.auth.password) (include "order-saga.postgresqlName" $root) (include "order-saga.databaseName" .key) | b64enc | quote }}
{{- end }}
{{- end }}
