output "bucket_name" {
  description = "Media bucket name (gcs.bucket in config/)."
  value       = google_storage_bucket.media.name
}

output "tier_ages" {
  description = "Storage class -> age (days) at which complete bodies enter it."
  value       = module.tiers.tier_ages
}
