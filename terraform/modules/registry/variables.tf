variable "project_id" {
  type        = string
  description = "Google Cloud project."
}

variable "region" {
  type        = string
  description = "Region of the repository (the cluster's: pulls stay in the region)."
}

variable "name" {
  type        = string
  description = "Name stem (naming module's base)."
}

variable "labels" {
  type        = map(string)
  description = "Labels for the repository."
}

variable "reader_members" {
  type        = list(string)
  description = "Members that pull images (the GKE node service account)."
}

variable "writer_members" {
  type        = list(string)
  description = "Members that push images (Cloud Build's service account)."
  default     = []
}

variable "keep_recent_versions" {
  type        = number
  description = "Image versions kept by the cleanup policy (older untagged ones are deleted)."
  default     = 20
  validation {
    condition     = var.keep_recent_versions >= 5
    error_message = "keep at least 5 versions, for rollbacks."
  }
}
