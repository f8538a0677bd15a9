# Cloud Spanner for the header store: instance (fixed processing units or managed
# autoscaling), the database whose DDL is config/spanner.ddl, drop protection and a daily
# backup schedule.

module "ddl" {
  source   = "../spanner_ddl"
  ddl_file = var.ddl_file
}

resource "google_spanner_instance" "headers" {
  project      = var.project_id
  name         = var.name
  display_name = "voxmesh headers (${var.name})"
  config       = var.instance_config
  labels       = var.labels

  processing_units = var.autoscaling == null ? var.processing_units : null

  dynamic "autoscaling_config" {
    for_each = var.autoscaling == null ? [] : [var.autoscaling]
    content {
      autoscaling_limits {
        min_processing_units = autoscaling_config.value.min_processing_units
        max_processing_units = autoscaling_config.value.max_processing_units
      }
      autoscaling_targets {
        high_priority_cpu_utilization_percent = autoscaling_config.value.high_priority_cpu_utilization_percent
        storage_utilization_percent           = autoscaling_config.value.storage_utilization_percent
      }
    }
  }

  force_destroy = false
}

resource "google_spanner_database" "headers" {
  # checkov:skip=CKV_GCP_93:Google-managed encryption at rest; CMEK (encryption_config with a Cloud KMS key) is a choice for teams whose compliance needs it.
  # checkov:skip=CKV_GCP_119:deletion_protection is a variable: true by default and in prod, false in dev on purpose (torn down freely).
  # checkov:skip=CKV_GCP_120:enable_drop_protection follows deletion_protection (see above).
  project                  = var.project_id
  instance                 = google_spanner_instance.headers.name
  name                     = var.database
  database_dialect         = "GOOGLE_STANDARD_SQL"
  ddl                      = module.ddl.statements
  version_retention_period = var.version_retention_period
  deletion_protection      = var.deletion_protection
  enable_drop_protection   = var.deletion_protection
}

resource "google_spanner_backup_schedule" "daily" {
  project  = var.project_id
  instance = google_spanner_instance.headers.name
  database = google_spanner_database.headers.name
  name     = "daily"

  retention_duration = "${var.backup_retention_days * 86400}s"

  spec {
    cron_spec {
      text = var.backup_cron
    }
  }

  full_backup_spec {}
}
