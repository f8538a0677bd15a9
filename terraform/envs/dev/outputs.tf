output "cluster" {
  description = "GKE cluster name and region."
  value       = module.voxmesh.cluster
}

output "image_repository" {
  description = "Artifact Registry path for the voxmesh image."
  value       = module.voxmesh.image_repository
}

output "service_accounts" {
  description = "Google service account per kind (Workload Identity annotations)."
  value       = module.voxmesh.service_accounts
}

output "edge_ip" {
  description = "Load balancer IP (after the second apply)."
  value       = module.voxmesh.edge_ip
}

output "kubernetes_env" {
  description = "VOXMESH__ settings for deploy/overlays/<env>/cloud.env."
  value       = module.voxmesh.kubernetes_env
}

output "kubernetes_service_accounts" {
  description = "Workload Identity annotations for deploy/overlays/<env>/service-accounts.yaml."
  value       = module.voxmesh.kubernetes_service_accounts
}

output "redis_auth_string" {
  description = "Memorystore AUTH string."
  value       = module.voxmesh.redis_auth_string
  sensitive   = true
}

output "redis_ca_pem" {
  description = "Memorystore server CA certificate."
  value       = module.voxmesh.redis_ca_pem
}

output "secret_ids" {
  description = "Secret Manager secrets to fill."
  value       = module.voxmesh.secret_ids
}
