variable "project_id" {
  type        = string
  description = "Google Cloud project."
}

variable "region" {
  type        = string
  description = "Region of the instance (the cluster's)."
}

variable "name" {
  type        = string
  description = "Name stem (naming module's base)."
}

variable "labels" {
  type        = map(string)
  description = "Labels for the instance."
}

variable "network_id" {
  type        = string
  description = "VPC id; the instance is reached through private service access."
}

variable "private_services_connection" {
  type        = string
  description = "The private service access connection (an explicit dependency: it must exist first)."
}

variable "tier" {
  type        = string
  description = "BASIC (one node, dev) or STANDARD_HA (primary + replica with automatic failover, prod)."
  default     = "STANDARD_HA"
  validation {
    condition     = contains(["BASIC", "STANDARD_HA"], var.tier)
    error_message = "tier must be BASIC or STANDARD_HA."
  }
}

variable "memory_size_gb" {
  type        = number
  description = "Capacity in GB (see the capacity model in terraform/README.md)."
  default     = 5
  validation {
    condition     = var.memory_size_gb >= 1 && var.memory_size_gb <= 300
    error_message = "memory_size_gb must be 1-300."
  }
}

variable "redis_version" {
  type        = string
  description = "Redis version."
  default     = "REDIS_7_2"
  validation {
    condition     = can(regex("^REDIS_[0-9]+(_[0-9]+)?$", var.redis_version))
    error_message = "redis_version must be like REDIS_7_2."
  }
}

variable "rdb_snapshot_period" {
  type        = string
  description = "How often an RDB snapshot persists the data (push de-duplication, unread counts, registrations)."
  default     = "ONE_HOUR"
  validation {
    condition     = contains(["ONE_HOUR", "SIX_HOURS", "TWELVE_HOURS", "TWENTY_FOUR_HOURS"], var.rdb_snapshot_period)
    error_message = "rdb_snapshot_period must be ONE_HOUR, SIX_HOURS, TWELVE_HOURS or TWENTY_FOUR_HOURS."
  }
}
