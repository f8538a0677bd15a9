variable "project_id" {
  type        = string
  description = "Google Cloud project of the prod mesh."
}

variable "region" {
  type        = string
  description = "Region of the prod mesh."
  default     = "europe-west1"
}

variable "zones" {
  type        = list(string)
  description = "Zones with Envoy pods (their NEGs back the load balancer)."
  default     = ["europe-west1-b", "europe-west1-c", "europe-west1-d"]
}

variable "domains" {
  type        = list(string)
  description = "Public host names of the prod mesh."
}

variable "edge_enabled" {
  type        = bool
  description = "Create the load balancer (second apply, once deploy/overlays/prod is applied)."
  default     = false
}

variable "ci_service_account" {
  type        = string
  description = "Service account Cloud Build pushes images as; empty = none."
  default     = ""
}

variable "notification_channels" {
  type        = list(string)
  description = "Monitoring notification channels (on-call) for alerts."
  default     = []
}

variable "master_authorized_networks" {
  type = list(object({
    cidr_block   = string
    display_name = string
  }))
  description = "Networks that may reach the control plane (CI runners, operators' VPN)."
  default     = []
}
