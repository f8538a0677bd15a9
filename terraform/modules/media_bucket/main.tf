# The media bucket of the body store: uniform access, public access prevention, versioning
# and soft delete, lifecycle tiers for old bodies, cleanup of the segment log, CORS for the
# web app's origin. Object access is granted per service account in the identity module.

module "tiers" {
  source = "../storage_tiers"

  bodies_prefix             = var.bodies_prefix
  segment_prefix            = var.segment_prefix
  nearline_age_days         = var.nearline_age_days
  coldline_age_days         = var.coldline_age_days
  archive_age_days          = var.archive_age_days
  segment_retention_days    = var.segment_retention_days
  noncurrent_retention_days = var.noncurrent_retention_days
}

resource "google_storage_bucket" "media" {
  # checkov:skip=CKV_GCP_62:Access is recorded by Cloud Audit Logs (Data Access for storage.googleapis.com, enabled in the identity module); usage logs would write one object per hour of requests into another bucket.
  # checkov:skip=CKV_GCP_78:Versioning is a variable, on by default (dev may turn it off); checkov cannot evaluate it.
  project  = var.project_id
  name     = var.bucket_name
  location = var.location
  labels   = var.labels

  storage_class               = "STANDARD"
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = false

  versioning {
    enabled = var.versioning
  }

  soft_delete_policy {
    retention_duration_seconds = var.soft_delete_days * 86400
  }

  dynamic "lifecycle_rule" {
    for_each = module.tiers.rules
    content {
      action {
        type          = lifecycle_rule.value.action_type
        storage_class = lifecycle_rule.value.storage_class
      }
      condition {
        age                        = lifecycle_rule.value.age
        matches_prefix             = lifecycle_rule.value.matches_prefix
        matches_storage_class      = lifecycle_rule.value.matches_storage_class
        days_since_noncurrent_time = lifecycle_rule.value.days_since_noncurrent_time
        with_state                 = lifecycle_rule.value.with_state
      }
    }
  }

  cors {
    origin          = var.cors_origins
    method          = ["GET", "HEAD"]
    response_header = ["Content-Type", "Content-Length", "Content-Range", "Range", "ETag"]
    max_age_seconds = 3600
  }
}
