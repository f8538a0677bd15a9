variable "project_id" {
  type        = string
  description = "Google Cloud project."
}

variable "labels" {
  type        = map(string)
  description = "Labels for the secrets."
}

variable "name" {
  type        = string
  description = "Name stem (naming module's base), for secret ids."
}

variable "service_account_ids" {
  type        = map(string)
  description = "Service account id per service kind (naming module)."
  validation {
    condition     = alltrue([for kind in ["router", "header", "body", "notification", "gateway"] : contains(keys(var.service_account_ids), kind)])
    error_message = "service_account_ids must name router, header, body, notification and gateway."
  }
}

variable "workload_pool" {
  type        = string
  description = "Workload Identity pool of the cluster (gke module): <project>.svc.id.goog."
}

variable "namespace" {
  type        = string
  description = "Kubernetes namespace of the mesh (deploy/ uses voxmesh)."
  default     = "voxmesh"
}

variable "media_bucket" {
  type        = string
  description = "Media bucket: the body store's service account gets object access on it, nothing else does."
}

variable "spanner_instance" {
  type        = string
  description = "Spanner instance of the header store."
}

variable "spanner_database" {
  type        = string
  description = "Spanner database: the header store's service account gets database access on it only."
}

variable "secret_replica_locations" {
  type        = list(string)
  description = "Regions the secrets are replicated to (user-managed replication keeps them in your jurisdiction)."
  validation {
    condition     = length(var.secret_replica_locations) >= 1
    error_message = "at least one replica location."
  }
}

variable "storage_data_access_logs" {
  type        = bool
  description = "Record Cloud Storage data writes in Cloud Audit Logs (who wrote or deleted which object)."
  default     = true
}
