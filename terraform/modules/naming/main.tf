# Names and labels for every voxmesh resource of one deployment: one rule in one place.
# No provider: checked offline with `terraform test` (tests/naming.tftest.hcl).

terraform {
  required_version = ">= 1.6"
}

variable "project_id" {
  type        = string
  description = "Google Cloud project the deployment lives in."
  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{4,28}[a-z0-9]$", var.project_id))
    error_message = "project_id must be a Google Cloud project id: 6-30 characters, lower-case letters, digits and hyphens, starting with a letter."
  }
}

variable "environment" {
  type        = string
  description = "Deployment environment: dev or prod (becomes the `environment` label and part of every name)."
  validation {
    condition     = contains(["dev", "prod"], var.environment)
    error_message = "environment must be dev or prod."
  }
}

variable "prefix" {
  type        = string
  description = "Short name every resource name starts with."
  default     = "voxmesh"
  validation {
    condition     = can(regex("^[a-z][a-z0-9]{1,11}$", var.prefix))
    error_message = "prefix must be 2-12 lower-case letters and digits, starting with a letter (service account ids are at most 30 characters)."
  }
}

variable "extra_labels" {
  type        = map(string)
  description = "Labels added to the standard ones on every resource (e.g. cost centre, team)."
  default     = {}
  validation {
    condition = alltrue([
      for k, v in var.extra_labels :
      can(regex("^[a-z][a-z0-9_-]{0,62}$", k)) && can(regex("^[a-z0-9_-]{0,63}$", v))
    ])
    error_message = "label keys must start with a lower-case letter; keys and values use lower-case letters, digits, _ and -, at most 63 characters."
  }
}

locals {
  # <prefix>-<env>: "voxmesh-prod". Service accounts: <prefix>-<env>-<kind> must fit 30.
  base = "${var.prefix}-${var.environment}"
  labels = merge(var.extra_labels, {
    app         = "voxmesh"
    environment = var.environment
    managed-by  = "terraform"
  })
  service_kinds = ["router", "header", "body", "notification", "gateway"]
}

output "base" {
  description = "Name stem of the deployment, <prefix>-<environment>."
  value       = local.base
}

output "labels" {
  description = "Labels for every resource that takes them."
  value       = local.labels
}

output "bucket_name" {
  description = "Media bucket name (globally unique: carries the project id)."
  value       = "${var.project_id}-${local.base}-media"
}

output "web_bucket_name" {
  description = "Static web app bucket name."
  value       = "${var.project_id}-${local.base}-web"
}

output "service_account_ids" {
  description = "Service account id per service kind (<= 30 characters each)."
  value       = { for kind in local.service_kinds : kind => substr("${local.base}-${kind}", 0, 30) }
}

output "service_kinds" {
  description = "The service kinds that run as their own workload and service account."
  value       = local.service_kinds
}
