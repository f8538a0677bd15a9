output "uptime_check_id" {
  description = "Uptime check id."
  value       = google_monitoring_uptime_check_config.gateway.uptime_check_id
}

output "alert_policy_ids" {
  description = "Alert policy names."
  value = [
    google_monitoring_alert_policy.uptime.name,
    google_monitoring_alert_policy.live_relay.name,
    google_monitoring_alert_policy.durable_ack.name,
    google_monitoring_alert_policy.errors.name,
    google_monitoring_alert_policy.restarts.name,
  ]
}
