variable "project_id" {
  type        = string
  description = "Google Cloud project the mesh runs in."
}

variable "environment" {
  type        = string
  description = "dev or prod."
}

variable "region" {
  type        = string
  description = "Region of the cluster, the media bucket, Memorystore and the registry."
}

variable "zones" {
  type        = list(string)
  description = "Zones of the region that run Envoy (its NEGs back the load balancer)."
}

variable "domains" {
  type        = list(string)
  description = "Public host names (managed certificate, uptime check)."
}

variable "edge_enabled" {
  type        = bool
  description = "Create the load balancer. Off for the first apply: it needs Envoy's NEGs, which exist once deploy/ is applied."
  default     = false
}

variable "spanner_instance_config" {
  type        = string
  description = "Spanner instance configuration (regional-<region> or a multi-region such as eur6)."
}

variable "spanner_processing_units" {
  type        = number
  description = "Fixed Spanner compute when spanner_autoscaling is null."
  default     = 100
}

variable "spanner_autoscaling" {
  type = object({
    min_processing_units                  = number
    max_processing_units                  = number
    high_priority_cpu_utilization_percent = number
    storage_utilization_percent           = number
  })
  description = "Spanner managed autoscaling; null = fixed processing units."
  default     = null
}

variable "redis_tier" {
  type        = string
  description = "Memorystore tier: BASIC or STANDARD_HA."
  default     = "STANDARD_HA"
}

variable "redis_memory_gb" {
  type        = number
  description = "Memorystore capacity in GB."
  default     = 5
}

variable "media_tiers" {
  type = object({
    nearline_age_days = number
    coldline_age_days = number
    archive_age_days  = number
  })
  description = "Ages in days at which complete bodies move to Nearline, Coldline and Archive."
  default = {
    nearline_age_days = 30
    coldline_age_days = 90
    archive_age_days  = 365
  }
}

variable "segment_prefix" {
  type        = string
  description = "Prefix of the body store's segment log in the media bucket (cleaned up by age)."
  default     = "segments/"
}

variable "segment_retention_days" {
  type        = number
  description = "Leftover segments are deleted after this many days."
  default     = 2
}

variable "deletion_protection" {
  type        = bool
  description = "Protect the cluster and the database from deletion."
  default     = true
}

variable "master_authorized_networks" {
  type = list(object({
    cidr_block   = string
    display_name = string
  }))
  description = "Networks that may reach the cluster's control plane."
  default     = []
}

variable "ci_service_account" {
  type        = string
  description = "Service account (email) Cloud Build pushes images as; empty = none."
  default     = ""
}

variable "notification_channels" {
  type        = list(string)
  description = "Monitoring notification channels for alerts."
  default     = []
}

variable "extra_labels" {
  type        = map(string)
  description = "Labels added to every resource."
  default     = {}
}
