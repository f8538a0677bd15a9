# Lifecycle rules of the media bucket, computed and validated without a provider, so the
# tier ages are checked offline with `terraform test` (tests/tiers.tftest.hcl).
#
# Complete bodies live under `bodies_prefix` and move to colder classes as they age
# (Nearline -> Coldline -> Archive). The body store's segment log (one segment object per
# commit window for all of a node's live messages) lives under `segment_prefix`: segments are
# deleted by the body store once every message in them is complete; the age rule here is
# the safety net for segments a crashed node left behind. Noncurrent versions (what a recall
# or delete leaves while versioning is on) are kept for a short recovery window only.

terraform {
  required_version = ">= 1.9"
}

variable "bodies_prefix" {
  type        = string
  description = "Object prefix of complete message bodies (the body store's `bodies/`)."
  default     = "bodies/"
  validation {
    condition     = can(regex("^[a-z0-9_-]+/$", var.bodies_prefix))
    error_message = "bodies_prefix must be one path segment ending in /."
  }
}

variable "segment_prefix" {
  type        = string
  description = "Object prefix of the body store's shared segment log (live chunks of many messages per object)."
  default     = "segments/"
  validation {
    condition     = can(regex("^[a-z0-9_-]+/$", var.segment_prefix))
    error_message = "segment_prefix must be one path segment ending in /."
  }
  validation {
    condition     = !startswith(var.segment_prefix, var.bodies_prefix) && !startswith(var.bodies_prefix, var.segment_prefix)
    error_message = "segment_prefix and bodies_prefix must not overlap: the segment cleanup would delete bodies."
  }
}

variable "nearline_age_days" {
  type        = number
  description = "Age in days at which a complete body moves from Standard to Nearline."
  default     = 30
  validation {
    condition     = var.nearline_age_days >= 1 && floor(var.nearline_age_days) == var.nearline_age_days
    error_message = "nearline_age_days must be a whole number of days, at least 1."
  }
}

variable "coldline_age_days" {
  type        = number
  description = "Age in days at which a body moves to Coldline; at least 30 days after Nearline (its minimum storage duration)."
  default     = 90
  validation {
    condition     = var.coldline_age_days >= var.nearline_age_days + 30
    error_message = "coldline_age_days must be at least nearline_age_days + 30 (Nearline's minimum storage duration)."
  }
}

variable "archive_age_days" {
  type        = number
  description = "Age in days at which a body moves to Archive; at least 90 days after Coldline (its minimum storage duration). null = never."
  default     = 365
  nullable    = true
  validation {
    condition     = var.archive_age_days == null || try(var.archive_age_days >= var.coldline_age_days + 90, false)
    error_message = "archive_age_days must be null or at least coldline_age_days + 90 (Coldline's minimum storage duration)."
  }
}

variable "segment_retention_days" {
  type        = number
  description = "Segments older than this are deleted: longer than any message stays live (the body store abandons a silent one after body_store.abandon_after_s) plus recovery time."
  default     = 2
  validation {
    condition     = var.segment_retention_days >= 1 && var.segment_retention_days < var.nearline_age_days
    error_message = "segment_retention_days must be at least 1 and below nearline_age_days (segments are never tiered)."
  }
}

variable "noncurrent_retention_days" {
  type        = number
  description = "Days a noncurrent version (a recalled or deleted body, with versioning on) is kept before it is deleted for good."
  default     = 7
  validation {
    condition     = var.noncurrent_retention_days >= 1 && var.noncurrent_retention_days <= 30
    error_message = "noncurrent_retention_days must be 1-30: a recalled message must really go."
  }
}

locals {
  tiers = concat(
    [{ class = "NEARLINE", age = var.nearline_age_days, from = ["STANDARD"] }],
    [{ class = "COLDLINE", age = var.coldline_age_days, from = ["STANDARD", "NEARLINE"] }],
    var.archive_age_days == null ? [] : [
      { class = "ARCHIVE", age = var.archive_age_days, from = ["STANDARD", "NEARLINE", "COLDLINE"] }
    ],
  )
  rules = concat(
    [for tier in local.tiers : {
      action_type                = "SetStorageClass"
      storage_class              = tier.class
      age                        = tier.age
      matches_prefix             = [var.bodies_prefix]
      matches_storage_class      = tier.from
      days_since_noncurrent_time = null
      with_state                 = "LIVE"
    }],
    [
      {
        action_type                = "Delete"
        storage_class              = null
        age                        = var.segment_retention_days
        matches_prefix             = [var.segment_prefix]
        matches_storage_class      = []
        days_since_noncurrent_time = null
        with_state                 = "ANY"
      },
      {
        action_type                = "Delete"
        storage_class              = null
        age                        = null
        matches_prefix             = []
        matches_storage_class      = []
        days_since_noncurrent_time = var.noncurrent_retention_days
        with_state                 = "ARCHIVED"
      },
      {
        action_type                = "AbortIncompleteMultipartUpload"
        storage_class              = null
        age                        = 1
        matches_prefix             = []
        matches_storage_class      = []
        days_since_noncurrent_time = null
        with_state                 = "ANY"
      },
    ],
  )
}

output "rules" {
  description = "Lifecycle rules for google_storage_bucket (action type, storage class, and conditions)."
  value       = local.rules
}

output "tier_ages" {
  description = "Storage class -> age in days at which complete bodies enter it."
  value       = { for tier in local.tiers : tier.class => tier.age }
}
