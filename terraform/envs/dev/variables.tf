variable "project_id" {
  type        = string
  description = "Google Cloud project of the dev mesh."
}

variable "region" {
  type        = string
  description = "Region of the dev mesh."
  default     = "europe-west1"
}

variable "zones" {
  type        = list(string)
  description = "Zones with Envoy pods (their NEGs back the load balancer)."
  default     = ["europe-west1-b", "europe-west1-c", "europe-west1-d"]
}

variable "domains" {
  type        = list(string)
  description = "Public host names of the dev mesh."
}

variable "edge_enabled" {
  type        = bool
  description = "Create the load balancer (second apply, once deploy/overlays/dev is applied)."
  default     = false
}

variable "ci_service_account" {
  type        = string
  description = "Service account Cloud Build pushes images as; empty = none."
  default     = ""
}
