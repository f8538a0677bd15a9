variable "project_id" {
  type        = string
  description = "Google Cloud project."
}

variable "region" {
  type        = string
  description = "Region of the Autopilot cluster (regional: nodes in every zone of it)."
}

variable "name" {
  type        = string
  description = "Name stem (naming module's base)."
}

variable "labels" {
  type        = map(string)
  description = "Labels for the cluster (resource_labels) and the node service account's bindings."
}

variable "network_id" {
  type        = string
  description = "VPC id from the network module."
}

variable "subnet_id" {
  type        = string
  description = "GKE subnet id from the network module."
}

variable "pods_range_name" {
  type        = string
  description = "Secondary range name for pods."
}

variable "services_range_name" {
  type        = string
  description = "Secondary range name for Services."
}

variable "release_channel" {
  type        = string
  description = "GKE release channel: REGULAR for dev and prod, RAPID to try upcoming versions."
  default     = "REGULAR"
  validation {
    condition     = contains(["RAPID", "REGULAR", "STABLE"], var.release_channel)
    error_message = "release_channel must be RAPID, REGULAR or STABLE."
  }
}

variable "master_ipv4_cidr_block" {
  type        = string
  description = "The /28 the control plane's private endpoint uses."
  default     = "172.16.0.0/28"
  validation {
    condition     = can(cidrhost(var.master_ipv4_cidr_block, 0)) && endswith(var.master_ipv4_cidr_block, "/28")
    error_message = "master_ipv4_cidr_block must be a /28."
  }
}

variable "master_authorized_networks" {
  type = list(object({
    cidr_block   = string
    display_name = string
  }))
  description = "Networks allowed to reach the control plane's public endpoint (CI, operators). Empty = none: reach it through the private endpoint only."
  default     = []
}

variable "deletion_protection" {
  type        = bool
  description = "Refuse to destroy the cluster (prod: true)."
  default     = true
}

variable "maintenance_start_time" {
  type        = string
  description = "Daily maintenance window start (UTC, RFC 3339 time of day, e.g. 03:00), at the mesh's quietest hour."
  default     = "03:00"
  validation {
    condition     = can(regex("^[0-2][0-9]:[0-5][0-9]$", var.maintenance_start_time))
    error_message = "maintenance_start_time must be HH:MM."
  }
}

variable "rbac_security_group" {
  type        = string
  description = "Google Group (gke-security-groups@<domain>) whose nested groups get Kubernetes RBAC; null = none."
  default     = null
  nullable    = true
}
