# The statements of config/spanner.ddl, by the same rule as the services and the emulator
# provisioning use (voxmesh.stack.provisioning.spanner_ddl): `--` comments dropped, split on
# `;`. No provider: checked offline with `terraform test`.

terraform {
  required_version = ">= 1.6"
}

variable "ddl_file" {
  type        = string
  description = "Path of the schema file (config/spanner.ddl: the one schema of the header store)."
  validation {
    condition     = fileexists(var.ddl_file)
    error_message = "ddl_file must name an existing file (config/spanner.ddl)."
  }
}

locals {
  uncommented = join("\n", [for line in split("\n", file(var.ddl_file)) : split("--", line)[0]])
  statements  = [for statement in split(";", local.uncommented) : trimspace(statement) if trimspace(statement) != ""]
}

output "statements" {
  description = "DDL statements in file order, for google_spanner_database.ddl."
  value       = local.statements
}
