variable "project_id" {
  type        = string
  description = "Google Cloud project."
}

variable "region" {
  type        = string
  description = "Region of the subnet, router and NAT (the GKE cluster's region)."
  validation {
    condition     = can(regex("^[a-z]+-[a-z]+[0-9]$", var.region))
    error_message = "region must be a Google Cloud region such as europe-west1."
  }
}

variable "name" {
  type        = string
  description = "Name stem (naming module's base)."
}

variable "labels" {
  type        = map(string)
  description = "Labels for the resources that take them."
}

variable "subnet_cidr" {
  type        = string
  description = "Primary range of the GKE subnet (nodes)."
  default     = "10.10.0.0/20"
  validation {
    condition     = can(cidrhost(var.subnet_cidr, 0))
    error_message = "subnet_cidr must be an IPv4 CIDR block."
  }
}

variable "pods_cidr" {
  type        = string
  description = "Secondary range for pods (Autopilot gives each node a /24 of it by default)."
  default     = "10.16.0.0/14"
  validation {
    condition     = can(cidrhost(var.pods_cidr, 0))
    error_message = "pods_cidr must be an IPv4 CIDR block."
  }
}

variable "services_cidr" {
  type        = string
  description = "Secondary range for Kubernetes Services."
  default     = "10.20.0.0/20"
  validation {
    condition     = can(cidrhost(var.services_cidr, 0))
    error_message = "services_cidr must be an IPv4 CIDR block."
  }
}

variable "private_services_prefix_length" {
  type        = number
  description = "Size of the range reserved for private service access (Memorystore)."
  default     = 20
  validation {
    condition     = var.private_services_prefix_length >= 16 && var.private_services_prefix_length <= 24
    error_message = "private_services_prefix_length must be 16-24."
  }
}

variable "envoy_port" {
  type        = number
  description = "Port of Envoy's listener in the pods (envoy.port of config/kubernetes.toml): the load balancer reaches it."
  default     = 8080
  validation {
    condition     = var.envoy_port > 0 && var.envoy_port < 65536
    error_message = "envoy_port must be a TCP port."
  }
}
