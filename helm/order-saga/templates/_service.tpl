{{/*
One gRPC service of the saga: its Deployment, its Service and, when enabled, its
PodDisruptionBudget. The one template every service is rendered from (services.yaml
ranges over .Values.services); what differs between services is in values and in
"order-saga.serviceFacts".

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
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ $name }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "order-saga.labels" $ctx | nindent 4 }}
  {{- with include "order-saga.checkovSkips" (dict "root" $root "image" $svc.image) | trim }}
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
    type: RollingUpdate
    rollingUpdate:
      maxSurge: 1
      maxUnavailable: 0
  template:
    metadata:
      labels:
        {{- include "order-saga.labels" $ctx | nindent 8 }}
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
      containers:
        - name: {{ $facts.component }}
          image: {{ include "order-saga.image" (dict "root" $root "image" $svc.image) | quote }}
          imagePullPolicy: {{ $root.Values.image.pullPolicy }}
          ports:
            - name: grpc
              containerPort: {{ $svc.port | int64 }}
              protocol: TCP
          env:
            - name: {{ $p }}_LISTEN_ADDR
              value: {{ printf "0.0.0.0:%d" ($svc.port | int64) | quote }}
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
          # overall "" SERVING as soon as it starts, the named one only once ready.
          startupProbe:
            grpc:
              port: {{ $svc.port | int64 }}
              service: {{ $facts.healthService }}
            periodSeconds: 1
            failureThreshold: 30
          readinessProbe:
            grpc:
              port: {{ $svc.port | int64 }}
              service: {{ $facts.healthService }}
            periodSeconds: 2
            failureThreshold: 1
            timeoutSeconds: 1
          livenessProbe:
            grpc:
              port: {{ $svc.port | int64 }}
              service: {{ $facts.healthService }}
            periodSeconds: 10
            failureThreshold: 3
            timeoutSeconds: 2
          resources:
            {{- toYaml $svc.resources | nindent 12 }}
          securityContext:
            {{- include "order-saga.containerSecurityContext" 65532 | nindent 12 }}
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
{{- end }}
