output "instance" {
  description = "Spanner instance id (spanner.instance in config/)."
  value       = google_spanner_instance.headers.name
}

output "database" {
  description = "Database id (spanner.database in config/)."
  value       = google_spanner_database.headers.name
}

output "statement_count" {
  description = "Statements applied from config/spanner.ddl."
  value       = length(module.ddl.statements)
}
