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
  description = "Labels for the resources that take them."
}

variable "domains" {
  type        = list(string)
  description = "Public host names of the mesh (DNS A records point at the `ip_address` output); the managed certificate covers them."
  validation {
    condition     = length(var.domains) >= 1 && alltrue([for d in var.domains : can(regex("^([a-z0-9-]+\\.)+[a-z]{2,}$", d))])
    error_message = "domains must be one or more DNS names."
  }
}

variable "web_bucket_name" {
  type        = string
  description = "Bucket of the web app's static files (naming module)."
}

variable "web_bucket_location" {
  type        = string
  description = "Location of the web app bucket."
}

variable "envoy_neg_name" {
  type        = string
  description = "Name of the standalone NEGs GKE creates for the Envoy Service (deploy/base/envoy/service.yaml, annotation cloud.google.com/neg)."
  default     = "voxmesh-envoy"
}

variable "envoy_neg_zones" {
  type        = list(string)
  description = "Zones the Envoy NEGs exist in (the cluster region's zones with Envoy pods)."
  validation {
    condition     = length(var.envoy_neg_zones) >= 1
    error_message = "at least one zone."
  }
}

variable "backend_protocol" {
  type        = string
  description = "Load balancer to Envoy: HTTP2 (needs TLS on Envoy's listener; carries native gRPC and gRPC-web) or HTTP (HTTP/1.1: gRPC-web only)."
  default     = "HTTP2"
  validation {
    condition     = contains(["HTTP", "HTTP2"], var.backend_protocol)
    error_message = "backend_protocol must be HTTP or HTTP2."
  }
}

variable "stream_timeout_s" {
  type        = number
  description = "Longest a stream (an updates stream) stays open through the load balancer; clients then resume from their cursor."
  default     = 3600
  validation {
    condition     = var.stream_timeout_s >= 60 && var.stream_timeout_s <= 86400
    error_message = "stream_timeout_s must be 60-86400."
  }
}

variable "rate_limit_per_minute" {
  type        = number
  description = "Requests per minute one client IP may make before Cloud Armor throttles it (429)."
  default     = 1200
  validation {
    condition     = var.rate_limit_per_minute >= 60
    error_message = "rate_limit_per_minute must be at least 60."
  }
}

variable "ban_duration_s" {
  type        = number
  description = "How long an IP that exceeds 5x the rate limit is banned."
  default     = 600
}
