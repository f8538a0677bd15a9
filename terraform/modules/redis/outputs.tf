output "host" {
  description = "Primary endpoint (redis.host in config/)."
  value       = google_redis_instance.notifications.host
}

output "port" {
  description = "Port (redis.port in config/)."
  value       = google_redis_instance.notifications.port
}

output "auth_string" {
  description = "AUTH string (mounted as redis.password_file)."
  value       = google_redis_instance.notifications.auth_string
  sensitive   = true
}

output "server_ca_pem" {
  description = "CA certificate of the instance's TLS endpoint (mounted as redis.tls_ca_file)."
  value       = google_redis_instance.notifications.server_ca_certs[0].cert
}
