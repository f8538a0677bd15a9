output "network_id" {
  description = "VPC id (projects/…/global/networks/…)."
  value       = google_compute_network.vpc.id
}

output "network_name" {
  description = "VPC name."
  value       = google_compute_network.vpc.name
}

output "subnet_id" {
  description = "GKE subnet id."
  value       = google_compute_subnetwork.gke.id
}

output "pods_range_name" {
  description = "Secondary range name for pods."
  value       = "pods"
}

output "services_range_name" {
  description = "Secondary range name for Services."
  value       = "services"
}

output "private_services_connection" {
  description = "The private service access connection (Memorystore depends on it)."
  value       = google_service_networking_connection.private_services.id
}
