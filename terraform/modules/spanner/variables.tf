variable "project_id" {
  type        = string
  description = "Google Cloud project."
}

variable "name" {
  type        = string
  description = "Name stem (naming module's base): instance <name>, database `voxmesh`."
}

variable "labels" {
  type        = map(string)
  description = "Labels for the instance."
}

variable "instance_config" {
  type        = string
  description = "Instance configuration: a regional one (regional-europe-west1: 99.99%) or a multi-region one (eur6, nam-eur-asia1: 99.999%)."
  validation {
    condition     = can(regex("^(regional-[a-z]+-[a-z]+[0-9]|[a-z]{3}[0-9]+|nam-eur-asia[0-9]|[a-z]+-[a-z]+-[a-z]+[0-9]*)$", var.instance_config))
    error_message = "instance_config must be an instance configuration name such as regional-europe-west1 or eur6."
  }
}

variable "processing_units" {
  type        = number
  description = "Fixed compute: processing units (100-900 in steps of 100, then multiples of 1000 = nodes). Ignored when autoscaling is set."
  default     = 100
  validation {
    condition     = (var.processing_units >= 100 && var.processing_units < 1000 && var.processing_units % 100 == 0) || (var.processing_units >= 1000 && var.processing_units % 1000 == 0)
    error_message = "processing_units must be 100-900 in steps of 100, or a multiple of 1000."
  }
}

variable "autoscaling" {
  type = object({
    min_processing_units                  = number
    max_processing_units                  = number
    high_priority_cpu_utilization_percent = number
    storage_utilization_percent           = number
  })
  description = "Managed autoscaling between min and max processing units at the CPU and storage targets; null = fixed processing_units."
  default     = null
  nullable    = true
  validation {
    condition     = var.autoscaling == null || try(var.autoscaling.min_processing_units >= 1000 && var.autoscaling.max_processing_units >= var.autoscaling.min_processing_units && var.autoscaling.min_processing_units % 1000 == 0 && var.autoscaling.max_processing_units % 1000 == 0, false)
    error_message = "autoscaling limits must be whole nodes (multiples of 1000 processing units) with max >= min."
  }
  validation {
    condition     = var.autoscaling == null || try(var.autoscaling.high_priority_cpu_utilization_percent >= 10 && var.autoscaling.high_priority_cpu_utilization_percent <= 90, false)
    error_message = "high_priority_cpu_utilization_percent must be 10-90 (Google recommends 65 for regional instances, 45 for multi-region)."
  }
}

variable "database" {
  type        = string
  description = "Database id (spanner.database in config/)."
  default     = "voxmesh"
  validation {
    condition     = can(regex("^[a-z][a-z0-9_-]{0,28}[a-z0-9]$", var.database))
    error_message = "database must be 2-30 characters: lower-case letters, digits, _ and -."
  }
}

variable "ddl_file" {
  type        = string
  description = "The schema: config/spanner.ddl (read through the spanner_ddl module, the same rule the services use). Change it by appending statements only: the provider applies new statements, and a changed earlier one would recreate the database (deletion protection refuses that)."
}

variable "deletion_protection" {
  type        = bool
  description = "Refuse to delete the database, in Terraform and in Spanner (drop protection)."
  default     = true
}

variable "version_retention_period" {
  type        = string
  description = "Point-in-time recovery window (1h-7d)."
  default     = "7d"
  validation {
    condition     = can(regex("^([1-9][0-9]*[hm]|[1-7]d)$", var.version_retention_period))
    error_message = "version_retention_period must be like 1h, 72h or 7d (at most 7d)."
  }
}

variable "backup_cron" {
  type        = string
  description = "When the daily full backup runs (cron, UTC)."
  default     = "0 2 * * *"
}

variable "backup_retention_days" {
  type        = number
  description = "Days each scheduled backup is kept."
  default     = 14
  validation {
    condition     = var.backup_retention_days >= 1 && var.backup_retention_days <= 366
    error_message = "backup_retention_days must be 1-366."
  }
}
