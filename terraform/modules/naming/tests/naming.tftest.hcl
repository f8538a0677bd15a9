variables {
  project_id  = "acme-voice-prod"
  environment = "prod"
}

run "names_carry_prefix_and_environment" {
  command = plan

  assert {
    condition     = output.base == "voxmesh-prod"
    error_message = "base name must be <prefix>-<environment>"
  }
  assert {
    condition     = output.bucket_name == "acme-voice-prod-voxmesh-prod-media"
    error_message = "the media bucket name must carry the project id (bucket names are global)"
  }
  assert {
    condition     = alltrue([for id in values(output.service_account_ids) : length(id) <= 30 && length(id) >= 6])
    error_message = "service account ids must be 6-30 characters"
  }
  assert {
    condition     = output.service_account_ids["notification"] == "voxmesh-prod-notification"
    error_message = "one service account per kind, named <base>-<kind>"
  }
  assert {
    condition     = output.labels["environment"] == "prod" && output.labels["managed-by"] == "terraform" && output.labels["app"] == "voxmesh"
    error_message = "standard labels missing"
  }
}

run "extra_labels_merge_but_standard_labels_win" {
  command = plan
  variables {
    extra_labels = { team = "voice", environment = "oops" }
  }
  assert {
    condition     = output.labels["team"] == "voice" && output.labels["environment"] == "prod"
    error_message = "extra labels are added; the standard ones cannot be overridden"
  }
}

run "environment_is_validated" {
  command = plan
  variables {
    environment = "staging"
  }
  expect_failures = [var.environment]
}

run "project_id_is_validated" {
  command = plan
  variables {
    project_id = "Bad_Project"
  }
  expect_failures = [var.project_id]
}

run "long_prefix_is_refused" {
  command = plan
  variables {
    prefix = "averyveryverylongprefix"
  }
  expect_failures = [var.prefix]
}
