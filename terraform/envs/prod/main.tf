# prod: sized by the capacity model in terraform/README.md (10 M users, 1 M online):
# Spanner autoscaling on a regional instance, Memorystore Standard HA, deletion protection.

provider "google" {
  project = var.project_id
  region  = var.region
  default_labels = {
    environment = "prod"
  }
}

module "voxmesh" {
  source = "../../modules/mesh"

  project_id              = var.project_id
  environment             = "prod"
  region                  = var.region
  zones                   = var.zones
  domains                 = var.domains
  edge_enabled            = var.edge_enabled
  spanner_instance_config = "regional-${var.region}"
  spanner_autoscaling = {
    min_processing_units                  = 3000
    max_processing_units                  = 10000
    high_priority_cpu_utilization_percent = 65
    storage_utilization_percent           = 90
  }
  redis_tier                 = "STANDARD_HA"
  redis_memory_gb            = 40
  deletion_protection        = true
  ci_service_account         = var.ci_service_account
  notification_channels      = var.notification_channels
  master_authorized_networks = var.master_authorized_networks
}
