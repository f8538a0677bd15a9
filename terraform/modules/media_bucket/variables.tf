variable "project_id" {
  type        = string
  description = "Google Cloud project."
}

variable "bucket_name" {
  type        = string
  description = "Bucket name (gcs.bucket in config/), from the naming module."
  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9._-]{1,61}[a-z0-9]$", var.bucket_name))
    error_message = "bucket_name must be 3-63 characters of lower-case letters, digits, -, _ and ."
  }
}

variable "location" {
  type        = string
  description = "Bucket location: the region of the body nodes (a dual- or multi-region such as EU costs more per GB and per write)."
}

variable "labels" {
  type        = map(string)
  description = "Labels for the bucket."
}

variable "bodies_prefix" {
  type        = string
  description = "Prefix of complete bodies (tiered as they age)."
  default     = "bodies/"
}

variable "segment_prefix" {
  type        = string
  description = "Prefix of the body store's shared segment log (cleaned up after segment_retention_days)."
  default     = "segments/"
}

variable "nearline_age_days" {
  type        = number
  description = "Age (days) at which complete bodies move to Nearline."
  default     = 30
}

variable "coldline_age_days" {
  type        = number
  description = "Age (days) at which complete bodies move to Coldline."
  default     = 90
}

variable "archive_age_days" {
  type        = number
  description = "Age (days) at which complete bodies move to Archive; null = never."
  default     = 365
  nullable    = true
}

variable "segment_retention_days" {
  type        = number
  description = "Age (days) after which leftover segments are deleted."
  default     = 2
}

variable "versioning" {
  type        = bool
  description = "Keep noncurrent versions (a deleted or recalled body) for noncurrent_retention_days."
  default     = true
}

variable "noncurrent_retention_days" {
  type        = number
  description = "Days a noncurrent version is kept before it is deleted for good."
  default     = 7
}

variable "soft_delete_days" {
  type        = number
  description = "Soft delete retention in days (0 = off, else 7-90). Deleted segments are billed for this long too."
  default     = 7
  validation {
    condition     = var.soft_delete_days == 0 || (var.soft_delete_days >= 7 && var.soft_delete_days <= 90)
    error_message = "soft_delete_days must be 0 or 7-90."
  }
}

variable "cors_origins" {
  type        = list(string)
  description = "Origins of the web app allowed to read media directly (signed URLs, range reads)."
  validation {
    condition     = alltrue([for o in var.cors_origins : can(regex("^https://[a-z0-9.-]+(:[0-9]+)?$", o))])
    error_message = "cors_origins must be https:// origins without a path."
  }
}
