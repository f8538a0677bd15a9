run "default_tiers" {
  command = plan

  assert {
    condition     = output.tier_ages == { NEARLINE = 30, COLDLINE = 90, ARCHIVE = 365 }
    error_message = "default tiers: Nearline at 30 days, Coldline at 90, Archive at 365"
  }
  assert {
    condition     = alltrue([for r in output.rules : r.action_type != "SetStorageClass" || r.matches_prefix == ["bodies/"]])
    error_message = "only complete bodies are tiered"
  }
  assert {
    condition     = length([for r in output.rules : r if r.action_type == "Delete" && r.matches_prefix == ["segments/"] && r.age == 2]) == 1
    error_message = "segments are deleted after segment_retention_days"
  }
  assert {
    condition     = length([for r in output.rules : r if r.action_type == "Delete" && r.with_state == "ARCHIVED" && r.days_since_noncurrent_time == 7]) == 1
    error_message = "noncurrent versions are deleted after the recovery window"
  }
  assert {
    condition     = length([for r in output.rules : r if r.action_type == "Delete" && r.with_state != "ARCHIVED" && length(r.matches_prefix) == 0]) == 0
    error_message = "no rule deletes live objects outside the segment prefix"
  }
}

run "archive_can_be_turned_off" {
  command = plan
  variables {
    archive_age_days = null
  }
  assert {
    condition     = keys(output.tier_ages) == ["COLDLINE", "NEARLINE"]
    error_message = "without archive_age_days there is no Archive rule"
  }
}

run "segment_prefix_is_a_variable" {
  command = plan
  variables {
    segment_prefix = "seglog/"
  }
  assert {
    condition     = length([for r in output.rules : r if r.matches_prefix == ["seglog/"]]) == 1
    error_message = "the segment cleanup follows segment_prefix"
  }
}

run "coldline_too_soon_after_nearline" {
  command = plan
  variables {
    nearline_age_days = 30
    coldline_age_days = 45
  }
  expect_failures = [var.coldline_age_days]
}

run "archive_too_soon_after_coldline" {
  command = plan
  variables {
    archive_age_days = 120
  }
  expect_failures = [var.archive_age_days]
}

run "overlapping_prefixes_are_refused" {
  command = plan
  variables {
    segment_prefix = "bodies/"
  }
  expect_failures = [var.segment_prefix]
}

run "segments_outlive_nothing_tiered" {
  command = plan
  variables {
    segment_retention_days = 40
  }
  expect_failures = [var.segment_retention_days]
}
