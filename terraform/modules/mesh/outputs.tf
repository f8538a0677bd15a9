output "cluster" {
  description = "GKE cluster name and region (gcloud container clusters get-credentials NAME --region REGION)."
  value       = { name = module.gke.cluster_name, region = module.gke.cluster_location }
}

output "image_repository" {
  description = "Where Cloud Build pushes the voxmesh image."
  value       = module.registry.repository_url
}

output "service_accounts" {
  description = "Google service account per kind, for the Workload Identity annotations in deploy/overlays/<env>/."
  value       = module.identity.service_account_emails
}

output "edge_ip" {
  description = "Public IP of the load balancer (null until edge_enabled)."
  value       = var.edge_enabled ? module.edge[0].ip_address : null
}

output "kubernetes_env" {
  description = "The deployment's settings as VOXMESH__ variables: write to deploy/overlays/<env>/cloud.env (terraform output -raw kubernetes_env > …)."
  value = join("\n", [
    "VOXMESH__SPANNER__PROJECT=${var.project_id}",
    "VOXMESH__SPANNER__INSTANCE=${module.spanner.instance}",
    "VOXMESH__SPANNER__DATABASE=${module.spanner.database}",
    "VOXMESH__GCS__PROJECT=${var.project_id}",
    "VOXMESH__GCS__BUCKET=${module.media.bucket_name}",
    "VOXMESH__REDIS__HOST=${module.redis.host}",
    "VOXMESH__REDIS__PORT=${module.redis.port}",
    "VOXMESH__TRACING__GCP_PROJECT=${var.project_id}",
    "VOXMESH__AUTH__ISSUER=https://securetoken.google.com/${var.project_id}",
    "VOXMESH__AUTH__AUDIENCE=${var.project_id}",
    "",
  ])
}

output "kubernetes_service_accounts" {
  description = "Workload Identity annotations as a kustomize patch: write to deploy/overlays/<env>/service-accounts.yaml."
  value = join("---\n", [
    for ksa, kind in {
      router  = "router", header = "header", body = "body", notification = "notification",
      gateway = "gateway", otel-collector = "gateway"
    } : <<-YAML
      apiVersion: v1
      kind: ServiceAccount
      metadata:
        name: voxmesh-${ksa}
        annotations:
          iam.gke.io/gcp-service-account: ${module.identity.service_account_emails[kind]}
      YAML
  ])
}

output "redis_auth_string" {
  description = "Memorystore AUTH string, for the voxmesh-redis Kubernetes secret."
  value       = module.redis.auth_string
  sensitive   = true
}

output "redis_ca_pem" {
  description = "Memorystore's server CA, for the voxmesh-redis Kubernetes secret."
  value       = module.redis.server_ca_pem
}

output "secret_ids" {
  description = "Secret Manager secrets to fill (auth, internal CA, push credentials)."
  value       = module.identity.secret_ids
}
