# One service account per service kind, least privilege, each bound to its Kubernetes
# service account (voxmesh-<kind> in the mesh namespace) through Workload Identity; no key
# files anywhere. Secret Manager holds the auth configuration, the internal CA and the push
# provider credentials; each is readable only by the kind that needs it.

locals {
  # Kubernetes service account per kind, as in deploy/base.
  ksa     = { for kind in keys(var.service_account_ids) : kind => "voxmesh-${kind}" }
  members = { for kind, sa in google_service_account.kind : kind => "serviceAccount:${sa.email}" }
}

resource "google_service_account" "kind" {
  for_each     = var.service_account_ids
  project      = var.project_id
  account_id   = each.value
  display_name = "voxmesh ${each.key}"
  description  = "Runs the voxmesh ${each.key} pods (Workload Identity: ${var.namespace}/${local.ksa[each.key]})."
}

resource "google_service_account_iam_member" "workload_identity" {
  for_each           = google_service_account.kind
  service_account_id = each.value.name
  role               = "roles/iam.workloadIdentityUser"
  member             = "serviceAccount:${var.workload_pool}[${var.namespace}/${local.ksa[each.key]}]"
}

# The body store: objects of the media bucket, and only of it.
resource "google_storage_bucket_iam_member" "body_objects" {
  bucket = var.media_bucket
  role   = "roles/storage.objectUser"
  member = local.members["body"]
}

# The header store: its database, and only it.
resource "google_spanner_database_iam_member" "header_database" {
  project  = var.project_id
  instance = var.spanner_instance
  database = var.spanner_database
  role     = "roles/spanner.databaseUser"
  member   = local.members["header"]
}

# Every kind writes its spans to Cloud Trace (through the collector, or directly).
resource "google_project_iam_member" "trace_agent" {
  for_each = local.members
  project  = var.project_id
  role     = "roles/cloudtrace.agent"
  member   = each.value
}

resource "google_secret_manager_secret" "auth" {
  project   = var.project_id
  secret_id = "${var.name}-auth"
  labels    = var.labels
  replication {
    user_managed {
      dynamic "replicas" {
        for_each = var.secret_replica_locations
        content {
          location = replicas.value
        }
      }
    }
  }
}

resource "google_secret_manager_secret" "internal_ca" {
  project   = var.project_id
  secret_id = "${var.name}-internal-ca"
  labels    = var.labels
  replication {
    user_managed {
      dynamic "replicas" {
        for_each = var.secret_replica_locations
        content {
          location = replicas.value
        }
      }
    }
  }
}

resource "google_secret_manager_secret" "push_credentials" {
  project   = var.project_id
  secret_id = "${var.name}-push-credentials"
  labels    = var.labels
  replication {
    user_managed {
      dynamic "replicas" {
        for_each = var.secret_replica_locations
        content {
          location = replicas.value
        }
      }
    }
  }
}

# Routers verify client tokens: the auth configuration (issuer, audience, keys).
resource "google_secret_manager_secret_iam_member" "auth_router" {
  project   = var.project_id
  secret_id = google_secret_manager_secret.auth.secret_id
  role      = "roles/secretmanager.secretAccessor"
  member    = local.members["router"]
}

# The internal CA (certificate and key) is read by no workload: cert-manager's CA issuer
# gets it as a Kubernetes secret (terraform/README.md, step 4); mesh pods only ever see
# their own certificate and the CA certificate.

# The notification sender: FCM and APNs credentials.
resource "google_secret_manager_secret_iam_member" "push_notification" {
  project   = var.project_id
  secret_id = google_secret_manager_secret.push_credentials.secret_id
  role      = "roles/secretmanager.secretAccessor"
  member    = local.members["notification"]
}

resource "google_project_iam_audit_config" "storage" {
  count   = var.storage_data_access_logs ? 1 : 0
  project = var.project_id
  service = "storage.googleapis.com"
  audit_log_config {
    log_type = "DATA_WRITE"
  }
  audit_log_config {
    log_type = "ADMIN_READ"
  }
}
