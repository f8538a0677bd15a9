output "ip_address" {
  description = "The edge's public IPv4 address: point the domains' A records here."
  value       = google_compute_global_address.edge.address
}

output "web_bucket" {
  description = "Bucket to upload the built web app to (gsutil -m rsync -r gateway/web/dist gs://…)."
  value       = google_storage_bucket.web.name
}
