# GKE Autopilot: private nodes, a release channel, Workload Identity (each voxmesh kind runs
# as its own Google service account, see the identity module), Managed Prometheus for the
# services' /metrics, and a dedicated node service account instead of the Compute default.

resource "google_service_account" "nodes" {
  project      = var.project_id
  account_id   = substr("${var.name}-gke-nodes", 0, 30)
  display_name = "voxmesh GKE nodes"
  description  = "Node identity of the voxmesh Autopilot cluster: logs, metrics, image pulls only."
}

resource "google_project_iam_member" "nodes" {
  for_each = toset([
    "roles/logging.logWriter",
    "roles/monitoring.metricWriter",
    "roles/monitoring.viewer",
    "roles/stackdriver.resourceMetadata.writer",
    "roles/autoscaling.metricsWriter",
  ])
  project = var.project_id
  role    = each.value
  member  = "serviceAccount:${google_service_account.nodes.email}"
}

resource "google_container_cluster" "mesh" {
  # checkov:skip=CKV_GCP_12:Autopilot always runs GKE Dataplane V2, which enforces NetworkPolicy (deploy/base/network-policies.yaml); the network_policy block does not apply to it.
  # checkov:skip=CKV_GCP_61:Autopilot manages intranode visibility; VPC flow logs are on for the subnet (network module).
  # checkov:skip=CKV_GCP_69:Autopilot always uses the GKE metadata server (Workload Identity); node_config cannot be set on Autopilot.
  # checkov:skip=CKV_GCP_21:Labelled: resource_labels = var.labels (the naming module's merge()), which checkov does not always evaluate.
  # checkov:skip=CKV_GCP_65:Google Groups for RBAC needs a Workspace domain; set rbac_security_group to use it (checkov cannot evaluate the variable).

  project  = var.project_id
  name     = "${var.name}-gke"
  location = var.region

  enable_autopilot    = true
  deletion_protection = var.deletion_protection
  resource_labels     = var.labels

  network    = var.network_id
  subnetwork = var.subnet_id

  ip_allocation_policy {
    cluster_secondary_range_name  = var.pods_range_name
    services_secondary_range_name = var.services_range_name
  }

  private_cluster_config {
    enable_private_nodes    = true
    enable_private_endpoint = length(var.master_authorized_networks) == 0
    master_ipv4_cidr_block  = var.master_ipv4_cidr_block
    master_global_access_config {
      enabled = true
    }
  }

  master_authorized_networks_config {
    dynamic "cidr_blocks" {
      for_each = var.master_authorized_networks
      content {
        cidr_block   = cidr_blocks.value.cidr_block
        display_name = cidr_blocks.value.display_name
      }
    }
  }

  master_auth {
    client_certificate_config {
      issue_client_certificate = false
    }
  }

  dynamic "authenticator_groups_config" {
    for_each = var.rbac_security_group == null ? [] : [var.rbac_security_group]
    content {
      security_group = authenticator_groups_config.value
    }
  }

  release_channel {
    channel = var.release_channel
  }

  workload_identity_config {
    workload_pool = "${var.project_id}.svc.id.goog"
  }

  cluster_autoscaling {
    auto_provisioning_defaults {
      service_account = google_service_account.nodes.email
      oauth_scopes    = ["https://www.googleapis.com/auth/cloud-platform"]
    }
  }

  binary_authorization {
    evaluation_mode = "PROJECT_SINGLETON_POLICY_ENFORCE"
  }

  monitoring_config {
    enable_components = ["SYSTEM_COMPONENTS"]
    managed_prometheus {
      enabled = true
    }
  }

  logging_config {
    enable_components = ["SYSTEM_COMPONENTS", "WORKLOADS"]
  }

  maintenance_policy {
    daily_maintenance_window {
      start_time = var.maintenance_start_time
    }
  }

  # Gateway API for the edge's load balancer (the edge module fronts Envoy with it).
  gateway_api_config {
    channel = "CHANNEL_STANDARD"
  }
}
