# The edge: one global external Application Load Balancer with a Google-managed
# certificate. `/voxmesh.router.v1.RouterService/*` (gRPC and gRPC-web) goes to Envoy's NEGs
# in the cluster, all else to the web app's static files (same origin: no CORS for the app).
# Cloud Armor limits each client IP; plain HTTP redirects to HTTPS.

resource "google_compute_global_address" "edge" {
  project = var.project_id
  name    = "${var.name}-edge"
  labels  = var.labels
}

resource "google_compute_managed_ssl_certificate" "edge" {
  project = var.project_id
  name    = "${var.name}-edge"
  managed {
    domains = var.domains
  }
}

resource "google_compute_ssl_policy" "modern" {
  project         = var.project_id
  name            = "${var.name}-modern-tls"
  profile         = "MODERN"
  min_tls_version = "TLS_1_2"
}

resource "google_compute_security_policy" "edge" {
  project     = var.project_id
  name        = "${var.name}-edge"
  description = "Per-IP rate limit in front of Envoy and the web app."

  adaptive_protection_config {
    layer_7_ddos_defense_config {
      enable = true
    }
  }

  rule {
    action      = "rate_based_ban"
    priority    = 1000
    description = "Per-IP rate limit; a sustained 5x offender is banned for a while."
    match {
      versioned_expr = "SRC_IPS_V1"
      config {
        src_ip_ranges = ["*"]
      }
    }
    rate_limit_options {
      conform_action   = "allow"
      exceed_action    = "deny(429)"
      enforce_on_key   = "IP"
      ban_duration_sec = var.ban_duration_s
      rate_limit_threshold {
        count        = var.rate_limit_per_minute
        interval_sec = 60
      }
      ban_threshold {
        count        = var.rate_limit_per_minute * 5
        interval_sec = 300
      }
    }
  }

  rule {
    action      = "deny(403)"
    priority    = 900
    description = "Log4j-style and other remote-code probes (preconfigured WAF rule)."
    match {
      expr {
        expression = "evaluatePreconfiguredWaf('cve-canary')"
      }
    }
  }

  rule {
    action      = "allow"
    priority    = 2147483647
    description = "Default: allow."
    match {
      versioned_expr = "SRC_IPS_V1"
      config {
        src_ip_ranges = ["*"]
      }
    }
  }
}

resource "google_compute_health_check" "envoy" {
  project = var.project_id
  name    = "${var.name}-envoy"
  tcp_health_check {
    port_specification = "USE_SERVING_PORT"
  }
  log_config {
    enable = false
  }
}

data "google_compute_network_endpoint_group" "envoy" {
  for_each = toset(var.envoy_neg_zones)
  project  = var.project_id
  name     = var.envoy_neg_name
  zone     = each.value
}

resource "google_compute_backend_service" "envoy" {
  project               = var.project_id
  name                  = "${var.name}-envoy"
  protocol              = var.backend_protocol
  load_balancing_scheme = "EXTERNAL_MANAGED"
  timeout_sec           = var.stream_timeout_s
  health_checks         = [google_compute_health_check.envoy.id]
  security_policy       = google_compute_security_policy.edge.id

  dynamic "backend" {
    for_each = data.google_compute_network_endpoint_group.envoy
    content {
      group                 = backend.value.id
      balancing_mode        = "RATE"
      max_rate_per_endpoint = 5000
    }
  }

  log_config {
    enable      = true
    sample_rate = 0.1
  }
}

resource "google_storage_bucket" "web" {
  # checkov:skip=CKV_GCP_62:The bucket holds only the built web app (public by design); access is seen in the load balancer's logs.
  # checkov:skip=CKV_GCP_78:The web app is rebuilt from the repository; versions add nothing.
  # checkov:skip=CKV_GCP_114:Public by design (the static web app, nothing else); the media bucket enforces prevention.
  project                     = var.project_id
  name                        = var.web_bucket_name
  location                    = var.web_bucket_location
  labels                      = var.labels
  uniform_bucket_level_access = true
  # The one public bucket: the static web app, served through the load balancer's CDN.
  public_access_prevention = "inherited"
  force_destroy            = true

  website {
    main_page_suffix = "index.html"
    not_found_page   = "index.html"
  }
}

resource "google_storage_bucket_iam_member" "web_public" {
  # checkov:skip=CKV_GCP_28:The static web app (HTML, JS, CSS) is public by design; no user data is ever written to this bucket.
  bucket = google_storage_bucket.web.name
  role   = "roles/storage.objectViewer"
  member = "allUsers"
}

resource "google_compute_backend_bucket" "web" {
  project     = var.project_id
  name        = "${var.name}-web"
  bucket_name = google_storage_bucket.web.name
  enable_cdn  = true
  cdn_policy {
    cache_mode  = "CACHE_ALL_STATIC"
    default_ttl = 300
  }
}

resource "google_compute_url_map" "edge" {
  project         = var.project_id
  name            = "${var.name}-edge"
  default_service = google_compute_backend_bucket.web.id

  host_rule {
    hosts        = var.domains
    path_matcher = "mesh"
  }

  path_matcher {
    name            = "mesh"
    default_service = google_compute_backend_bucket.web.id
    path_rule {
      paths   = ["/voxmesh.router.v1.RouterService/*"]
      service = google_compute_backend_service.envoy.id
    }
  }
}

resource "google_compute_target_https_proxy" "edge" {
  project          = var.project_id
  name             = "${var.name}-edge"
  url_map          = google_compute_url_map.edge.id
  ssl_certificates = [google_compute_managed_ssl_certificate.edge.id]
  ssl_policy       = google_compute_ssl_policy.modern.id
}

resource "google_compute_global_forwarding_rule" "https" {
  project               = var.project_id
  name                  = "${var.name}-https"
  target                = google_compute_target_https_proxy.edge.id
  ip_address            = google_compute_global_address.edge.id
  port_range            = "443"
  load_balancing_scheme = "EXTERNAL_MANAGED"
  labels                = var.labels
}

resource "google_compute_url_map" "redirect" {
  project = var.project_id
  name    = "${var.name}-http-redirect"
  default_url_redirect {
    https_redirect         = true
    redirect_response_code = "MOVED_PERMANENTLY_DEFAULT"
    strip_query            = false
  }
}

resource "google_compute_target_http_proxy" "redirect" {
  project = var.project_id
  name    = "${var.name}-http-redirect"
  url_map = google_compute_url_map.redirect.id
}

resource "google_compute_global_forwarding_rule" "http" {
  project               = var.project_id
  name                  = "${var.name}-http"
  target                = google_compute_target_http_proxy.redirect.id
  ip_address            = google_compute_global_address.edge.id
  port_range            = "80"
  load_balancing_scheme = "EXTERNAL_MANAGED"
  labels                = var.labels
}
