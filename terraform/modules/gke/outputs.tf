output "cluster_name" {
  description = "Cluster name (for `gcloud container clusters get-credentials`)."
  value       = google_container_cluster.mesh.name
}

output "cluster_location" {
  description = "Cluster region."
  value       = google_container_cluster.mesh.location
}

output "workload_pool" {
  description = "Workload Identity pool, <project>.svc.id.goog (available once the cluster exists)."
  value       = google_container_cluster.mesh.workload_identity_config[0].workload_pool
}

output "node_service_account" {
  description = "Email of the nodes' service account (reads images from Artifact Registry)."
  value       = google_service_account.nodes.email
}
