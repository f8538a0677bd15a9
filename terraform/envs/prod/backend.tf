# State in a GCS bucket created once by hand (terraform/README.md, step 1): versioned,
# uniform access, in the same project. `terraform init -backend-config="bucket=<bucket>"`.
terraform {
  backend "gcs" {
    prefix = "voxmesh/prod"
  }
}
