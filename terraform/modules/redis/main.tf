# Memorystore for Redis: push de-duplication, the push job stream, unread counts and device
# registrations of the notification sender. Not on the live path. AUTH and in-transit TLS
# on (redis.password_file, redis.tls_ca_file in config/), RDB persistence: after a failover
# or restart at most one snapshot period of de-duplication and counts is lost, and unread
# counts are rebuilt from the header store.

resource "google_redis_instance" "notifications" {
  project        = var.project_id
  name           = "${var.name}-redis"
  region         = var.region
  tier           = var.tier
  memory_size_gb = var.memory_size_gb
  redis_version  = var.redis_version
  labels         = var.labels

  authorized_network      = var.network_id
  connect_mode            = "PRIVATE_SERVICE_ACCESS"
  auth_enabled            = true
  transit_encryption_mode = "SERVER_AUTHENTICATION"

  persistence_config {
    persistence_mode    = "RDB"
    rdb_snapshot_period = var.rdb_snapshot_period
  }

  maintenance_policy {
    weekly_maintenance_window {
      day = "TUESDAY"
      start_time {
        hours   = 3
        minutes = 0
      }
    }
  }

  lifecycle {
    precondition {
      condition     = var.private_services_connection != ""
      error_message = "private service access must exist before Memorystore."
    }
  }
}
