# Uptime check on the gateway, alert policies on the services' Prometheus metrics (Managed
# Prometheus scrapes them: deploy/base/monitoring.yaml) and on container restarts, and one
# dashboard. PromQL names: voxmesh_* from each service's /metrics.

locals {
  server_errors = "INTERNAL|UNKNOWN|UNAVAILABLE|DEADLINE_EXCEEDED|DATA_LOSS"
  queries = {
    live_relay_drops = "sum(rate(voxmesh_router_peer_entries_dropped_total[5m])) + sum(rate(voxmesh_router_devices_evicted_total[5m]))"
    router_unary_p99 = "histogram_quantile(0.99, sum by (le) (rate(voxmesh_rpc_handling_seconds_bucket{service=\"router\",method=~\"AppendChunks|StartMessage|SendText\"}[5m])))"
    durable_ack_p99  = "histogram_quantile(0.99, sum by (le) (rate(voxmesh_body_batch_write_seconds_bucket[5m])))"
    error_ratio      = "sum(rate(voxmesh_rpc_handled_total{code=~\"${local.server_errors}\"}[5m])) / clamp_min(sum(rate(voxmesh_rpc_handled_total[5m])), 1e-9)"
    devices          = "sum(voxmesh_router_devices_connected)"
    rpc_rate         = "sum by (service) (rate(voxmesh_rpc_started_total[5m]))"
  }
}

resource "google_monitoring_uptime_check_config" "gateway" {
  project      = var.project_id
  display_name = "${var.name} gateway"
  timeout      = "10s"
  period       = "60s"
  user_labels  = var.labels

  http_check {
    path         = "/"
    port         = 443
    use_ssl      = true
    validate_ssl = true
  }

  monitored_resource {
    type = "uptime_url"
    labels = {
      project_id = var.project_id
      host       = var.gateway_host
    }
  }
}

resource "google_monitoring_alert_policy" "uptime" {
  project               = var.project_id
  display_name          = "${var.name}: gateway unreachable"
  combiner              = "OR"
  notification_channels = var.notification_channels
  user_labels           = var.labels
  conditions {
    display_name = "uptime check failing"
    condition_threshold {
      filter          = "metric.type=\"monitoring.googleapis.com/uptime_check/check_passed\" AND metric.label.check_id=\"${google_monitoring_uptime_check_config.gateway.uptime_check_id}\" AND resource.type=\"uptime_url\""
      comparison      = "COMPARISON_GT"
      threshold_value = 1
      duration        = "120s"
      aggregations {
        alignment_period     = "60s"
        per_series_aligner   = "ALIGN_NEXT_OLDER"
        cross_series_reducer = "REDUCE_COUNT_FALSE"
        group_by_fields      = ["resource.label.host"]
      }
    }
  }
}

resource "google_monitoring_alert_policy" "live_relay" {
  project               = var.project_id
  display_name          = "${var.name}: live relay degraded"
  combiner              = "OR"
  notification_channels = var.notification_channels
  user_labels           = var.labels
  documentation {
    content   = "Live audio is being dropped (peer link entries dropped, slow devices evicted) or the routers' p99 relay call time is above ${var.rpc_p99_s}s. Check router CPU (HPA at its max?), peer link errors in the router logs, and Envoy."
    mime_type = "text/markdown"
  }
  conditions {
    display_name = "live entries dropped"
    condition_prometheus_query_language {
      query    = "${local.queries.live_relay_drops} > 1"
      duration = "300s"
    }
  }
  conditions {
    display_name = "router relay p99"
    condition_prometheus_query_language {
      query    = "${local.queries.router_unary_p99} > ${var.rpc_p99_s}"
      duration = "300s"
    }
  }
}

resource "google_monitoring_alert_policy" "durable_ack" {
  project               = var.project_id
  display_name          = "${var.name}: durable acks slow"
  combiner              = "OR"
  notification_channels = var.notification_channels
  user_labels           = var.labels
  documentation {
    content   = "Body store group commits (what a sender's durable ack waits for) p99 is above ${var.durable_ack_p99_s}s: Cloud Storage latency or body node saturation."
    mime_type = "text/markdown"
  }
  conditions {
    display_name = "durable ack p99"
    condition_prometheus_query_language {
      query    = "${local.queries.durable_ack_p99} > ${var.durable_ack_p99_s}"
      duration = "300s"
    }
  }
}

resource "google_monitoring_alert_policy" "errors" {
  project               = var.project_id
  display_name          = "${var.name}: server errors"
  combiner              = "OR"
  notification_channels = var.notification_channels
  user_labels           = var.labels
  conditions {
    display_name = "server error ratio"
    condition_prometheus_query_language {
      query    = "${local.queries.error_ratio} > ${var.error_ratio}"
      duration = "300s"
    }
  }
}

resource "google_monitoring_alert_policy" "restarts" {
  project               = var.project_id
  display_name          = "${var.name}: containers restarting"
  combiner              = "OR"
  notification_channels = var.notification_channels
  user_labels           = var.labels
  conditions {
    display_name = "restarts in the mesh namespace"
    condition_threshold {
      filter          = "metric.type=\"kubernetes.io/container/restart_count\" AND resource.type=\"k8s_container\" AND resource.label.namespace_name=\"${var.namespace}\""
      comparison      = "COMPARISON_GT"
      threshold_value = 2
      duration        = "0s"
      aggregations {
        alignment_period     = "600s"
        per_series_aligner   = "ALIGN_DELTA"
        cross_series_reducer = "REDUCE_SUM"
        group_by_fields      = ["resource.label.container_name"]
      }
    }
  }
}

resource "google_monitoring_dashboard" "mesh" {
  project = var.project_id
  dashboard_json = jsonencode({
    displayName = "${var.name} mesh"
    mosaicLayout = {
      columns = 12
      tiles = [
        for index, item in [
          ["Connected devices", local.queries.devices],
          ["Calls per second by service", local.queries.rpc_rate],
          ["Router relay call p99 (s)", local.queries.router_unary_p99],
          ["Durable ack (group commit) p99 (s)", local.queries.durable_ack_p99],
          ["Server error ratio", local.queries.error_ratio],
          ["Live entries dropped per second", local.queries.live_relay_drops],
          ] : {
          xPos   = (index % 2) * 6
          yPos   = floor(index / 2) * 4
          width  = 6
          height = 4
          widget = {
            title = item[0]
            xyChart = {
              dataSets = [{
                plotType           = "LINE"
                timeSeriesQuery    = { prometheusQuery = item[1] }
                minAlignmentPeriod = "60s"
              }]
            }
          }
        }
      ]
    }
  })
}
