variable "project_id" {
  type        = string
  description = "Google Cloud project."
}

variable "name" {
  type        = string
  description = "Name stem (naming module's base)."
}

variable "labels" {
  type        = map(string)
  description = "User labels for the uptime check and alert policies."
}

variable "gateway_host" {
  type        = string
  description = "Public host name of the edge, probed by the uptime check."
}

variable "namespace" {
  type        = string
  description = "Kubernetes namespace of the mesh."
  default     = "voxmesh"
}

variable "notification_channels" {
  type        = list(string)
  description = "Monitoring notification channel ids alerts go to (create them in the console or with google_monitoring_notification_channel)."
  default     = []
}

variable "durable_ack_p99_s" {
  type        = number
  description = "Alert when the body store's p99 group-commit write (what a durable ack waits for) exceeds this, in seconds."
  default     = 0.25
}

variable "rpc_p99_s" {
  type        = number
  description = "Alert when the routers' p99 unary call time (browser AppendChunks relays a chunk live and stores it) exceeds this, in seconds."
  default     = 0.1
}

variable "error_ratio" {
  type        = number
  description = "Alert when this share of calls ends in a server-side error status (INTERNAL, UNKNOWN, UNAVAILABLE, DEADLINE_EXCEEDED, DATA_LOSS)."
  default     = 0.01
  validation {
    condition     = var.error_ratio > 0 && var.error_ratio < 1
    error_message = "error_ratio must be between 0 and 1."
  }
}
