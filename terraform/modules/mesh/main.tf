# One voxmesh deployment: what envs/dev and envs/prod instantiate with their own values.

locals {
  ddl_file = "${path.module}/../../../config/spanner.ddl"
}

module "naming" {
  source       = "../naming"
  project_id   = var.project_id
  environment  = var.environment
  extra_labels = var.extra_labels
}

module "network" {
  source     = "../network"
  project_id = var.project_id
  region     = var.region
  name       = module.naming.base
  labels     = module.naming.labels
}

module "gke" {
  source                     = "../gke"
  project_id                 = var.project_id
  region                     = var.region
  name                       = module.naming.base
  labels                     = module.naming.labels
  network_id                 = module.network.network_id
  subnet_id                  = module.network.subnet_id
  pods_range_name            = module.network.pods_range_name
  services_range_name        = module.network.services_range_name
  master_authorized_networks = var.master_authorized_networks
  deletion_protection        = var.deletion_protection
}

module "spanner" {
  source              = "../spanner"
  project_id          = var.project_id
  name                = module.naming.base
  labels              = module.naming.labels
  instance_config     = var.spanner_instance_config
  processing_units    = var.spanner_processing_units
  autoscaling         = var.spanner_autoscaling
  ddl_file            = local.ddl_file
  deletion_protection = var.deletion_protection
}

module "media" {
  source                 = "../media_bucket"
  project_id             = var.project_id
  bucket_name            = module.naming.bucket_name
  location               = upper(var.region)
  labels                 = module.naming.labels
  segment_prefix         = var.segment_prefix
  segment_retention_days = var.segment_retention_days
  nearline_age_days      = var.media_tiers.nearline_age_days
  coldline_age_days      = var.media_tiers.coldline_age_days
  archive_age_days       = var.media_tiers.archive_age_days
  cors_origins           = [for d in var.domains : "https://${d}"]
}

module "redis" {
  source                      = "../redis"
  project_id                  = var.project_id
  region                      = var.region
  name                        = module.naming.base
  labels                      = module.naming.labels
  network_id                  = module.network.network_id
  private_services_connection = module.network.private_services_connection
  tier                        = var.redis_tier
  memory_size_gb              = var.redis_memory_gb
}

module "registry" {
  source         = "../registry"
  project_id     = var.project_id
  region         = var.region
  name           = module.naming.base
  labels         = module.naming.labels
  reader_members = ["serviceAccount:${module.gke.node_service_account}"]
  writer_members = var.ci_service_account == "" ? [] : ["serviceAccount:${var.ci_service_account}"]
}

module "identity" {
  source                   = "../identity"
  project_id               = var.project_id
  name                     = module.naming.base
  labels                   = module.naming.labels
  service_account_ids      = module.naming.service_account_ids
  workload_pool            = module.gke.workload_pool
  media_bucket             = module.media.bucket_name
  spanner_instance         = module.spanner.instance
  spanner_database         = module.spanner.database
  secret_replica_locations = [var.region]
}

module "edge" {
  source              = "../edge"
  count               = var.edge_enabled ? 1 : 0
  project_id          = var.project_id
  name                = module.naming.base
  labels              = module.naming.labels
  domains             = var.domains
  web_bucket_name     = module.naming.web_bucket_name
  web_bucket_location = upper(var.region)
  envoy_neg_zones     = var.zones
}

module "monitoring" {
  source                = "../monitoring"
  project_id            = var.project_id
  name                  = module.naming.base
  labels                = module.naming.labels
  gateway_host          = var.domains[0]
  notification_channels = var.notification_channels
}
