# dev: the smallest mesh that has every part: 100 Spanner processing units, one-node
# Memorystore, no deletion protection (torn down and rebuilt freely).

provider "google" {
  project = var.project_id
  region  = var.region
  default_labels = {
    environment = "dev"
  }
}

module "voxmesh" {
  source = "../../modules/mesh"

  project_id               = var.project_id
  environment              = "dev"
  region                   = var.region
  zones                    = var.zones
  domains                  = var.domains
  edge_enabled             = var.edge_enabled
  spanner_instance_config  = "regional-${var.region}"
  spanner_processing_units = 100
  redis_tier               = "BASIC"
  redis_memory_gb          = 1
  deletion_protection      = false
  ci_service_account       = var.ci_service_account
}
