output "service_account_emails" {
  description = "Google service account per kind (annotate voxmesh-<kind> Kubernetes service accounts with it)."
  value       = { for kind, sa in google_service_account.kind : kind => sa.email }
}

output "secret_ids" {
  description = "Secret Manager secret ids: auth, internal_ca, push_credentials."
  value = {
    auth             = google_secret_manager_secret.auth.secret_id
    internal_ca      = google_secret_manager_secret.internal_ca.secret_id
    push_credentials = google_secret_manager_secret.push_credentials.secret_id
  }
}
